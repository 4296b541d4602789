"""Live progress of headless runs (mm1lab.progress): what a user sees on the terminal during `make demo`,
`mm1lab sweep` and `mm1lab ablate`, and the run's log that stays in its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mm1lab.progress import LOG_NAME, RunWatch, clock, running_cell

# A notebook that "trains": it writes metrics.jsonl and config.yaml as mm1lab's trainer does, slowly, and prints
# to stdout and stderr (both belong in the run's log, not on the terminal).
TRAINS = """\
import json, pathlib, sys, time
run = pathlib.Path(RUN_DIR) / "train"
run.mkdir()
(run / "config.yaml").write_text("steps: 40\\n")
print("from the notebook's stdout")
print("from the notebook's stderr", file=sys.stderr)
with open(run / "metrics.jsonl", "a") as f:
    for step in range(5, 41, 5):
        f.write(json.dumps({"step": step, "loss": 10.0 / step}) + "\\n")
        f.flush()
        time.sleep(0.6)
"""


def test_clock():
    assert clock(5) == "0:05" and clock(65) == "1:05" and clock(3723) == "1:02:03" and clock(-1) == "0:00"


def test_training_line_has_step_loss_elapsed_and_eta(tmp_path):
    run = tmp_path / "train"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"steps": 100}))
    watch = RunWatch(tmp_path, label="02_pretrain", echo=False)
    assert watch.line() is None                      # nothing written yet
    with open(run / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 20, "loss": 3.0}) + "\n")
    first = watch.line()
    assert first.startswith("02_pretrain  step 20/100  loss 3.000  elapsed") and "eta" not in first
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 60, "loss": 2.5}) + "\n")
        f.write('{"step": 6')                        # a line the trainer is still writing is skipped, not fatal
    assert "step 20/100" in watch.line()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('5, "loss": 2.25}\n')
    line = watch.line()
    assert "step 65/100  loss 2.250" in line and "eta" in line


def test_running_cell_skips_injected_parameters(tmp_path):
    cells = [new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
             new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]}),
             new_markdown_cell("# Train"),
             new_code_cell("train(config)\nmore()", metadata={"papermill": {"status": "running"}}),
             new_code_cell("plot()")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    assert running_cell(path) == (2, 4, "train(config)")
    path.write_text('{"cells": [')                    # papermill is writing it right now
    assert running_cell(path) is None


def test_cli_run_shows_progress_and_keeps_the_log(tmp_path):
    """A real `mm1lab run`: progress lines on stderr while it trains; the kernel's and the notebook's own output
    (including ipykernel's TCP warning, which IPC transport avoids) do not reach the terminal; run.log keeps them."""
    first = new_code_cell('SMOKE = False\nRUN_DIR = "."', metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[first, new_code_cell(TRAINS)])
    nb.metadata["kernelspec"] = {"name": "mm1lab", "display_name": "mm1lab (.venv)", "language": "python"}
    nbformat.write(nb, tmp_path / "trains.ipynb")
    proc = subprocess.run([sys.executable, "-m", "mm1lab", "run", "trains.ipynb", "--out", "out", "--name", "demo"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "MM1LAB_PROGRESS_EVERY": "0.5"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mm1lab: demo  step")]
    assert len(lines) >= 2, proc.stderr              # progress arrives while it runs, not only at the end
    assert lines[-1].startswith("mm1lab: demo  step 40/40  loss 0.250  elapsed")
    assert any(" eta " in line for line in lines[:-1]), lines
    assert "mm1lab: demo  ok in" in proc.stderr
    for quiet in ("without encryption", "from the notebook's stdout", "from the notebook's stderr"):
        assert quiet not in proc.stderr + proc.stdout
    (folder,) = (tmp_path / "out").glob("*-demo")
    log = (folder / LOG_NAME).read_text()
    assert "from the notebook's stdout" in log and "from the notebook's stderr" in log
    assert "demo  step 40/40" in log and "demo  ok in" in log


def test_two_runs_started_at_once_in_one_folder_keep_their_own_kernels(tmp_path):
    """Two `mm1lab run`s from the same working directory at the same time (as parallel test workers and sweeps do):
    each kernel has its own IPC sockets, so neither reads the other's messages, and the socket folders are removed."""
    first = new_code_cell('SMOKE = False\nRUN_DIR = "."\nx = 0', metadata={"tags": ["parameters"]})
    body = new_code_cell('import json, pathlib, time\ntime.sleep(2)\n'
                         '(pathlib.Path(RUN_DIR) / "metrics.json").write_text(json.dumps({"x": x}))')
    nb = new_notebook(cells=[first, body])
    nb.metadata["kernelspec"] = {"name": "mm1lab", "display_name": "mm1lab (.venv)", "language": "python"}
    nbformat.write(nb, tmp_path / "twin.ipynb")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    procs = [subprocess.Popen([sys.executable, "-m", "mm1lab", "run", "twin.ipynb", "-p", "x", str(i), "--out", "out",
                               "--name", f"twin{i}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for i in (1, 2):
        (folder,) = (tmp_path / "out").glob(f"*-twin{i}")
        assert json.loads((folder / "metrics.json").read_text()) == {"x": i}
    assert not list((tmp_path / "tmp").glob("mm1lab-kernel-*"))
    assert not list(tmp_path.glob("kernel-ipc*"))
