"""The notebook runner and sweeps, on throwaway notebooks executed for real (papermill + the mm1lab kernel).

A kernel start costs a few seconds, so the notebook executions are counted: 1 API run, 2 CLI runs, a 2 x 2 sweep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from mm1lab.cli import main as cli_main
from mm1lab.runner import append_index, load_parameters, parse_value, read_index, resolve_kernel, run_notebook
from mm1lab.sweep import aggregate_runs, combinations, load_grid, sweep, validate_grid

PARAMETERS = 'SMOKE = False\nx = 1\ny = "a"\nRUN_DIR = "."'
WRITES_OUTPUTS = """\
import json, pathlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out = pathlib.Path(RUN_DIR)
metrics = dict(x_type=type(x).__name__, smoke=SMOKE, loss=1.0 / (1 + x) + (y == "b"), nested={"acc": 0.5})
(out / "metrics.json").write_text(json.dumps(metrics))
plt.plot([0, 1], [0, x])
plt.savefig(out / "curve.png")
"""


def make_notebook(path, cells: list[str], tagged: bool = True):
    """A notebook whose first cell holds PARAMETERS (tagged `parameters` unless told not to)."""
    first = new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]} if tagged else {})
    nb = new_notebook(cells=[first, *map(new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "mm1lab", "display_name": "mm1lab (.venv)", "language": "python"}
    nbformat.write(nb, path)
    return path


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mm1lab", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory):
    """One real run through the API, shared by the layout and index tests."""
    tmp = tmp_path_factory.mktemp("ok")
    nb = make_notebook(tmp / "probe.ipynb", [WRITES_OUTPUTS])
    result = run_notebook(nb, {"x": 2}, out_root=tmp / "runs", smoke=True)
    return tmp, result


def test_run_folder_layout(ok_run):
    tmp, result = ok_run
    assert result.ok, result.error
    assert result.folder.parent == (tmp / "runs").resolve()
    assert result.folder.name.endswith("-probe")
    names = {p.name for p in result.folder.iterdir()}
    assert {"probe.ipynb", "parameters.yaml", "status.json", "metrics.json", "curve.png"} <= names
    assert yaml.safe_load((result.folder / "parameters.yaml").read_text()) == {"x": 2, "SMOKE": True}
    status = json.loads((result.folder / "status.json").read_text())
    assert status["status"] == "ok" and status["error"] is None and status["duration_s"] > 0
    assert result.metrics == {"x_type": "int", "smoke": True, "loss": 1 / 3, "nested": {"acc": 0.5}}
    executed = nbformat.read(result.folder / "probe.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_index_line(ok_run):
    tmp, result = ok_run
    (line,) = read_index(tmp / "runs" / "index.jsonl")
    assert line["name"] == "probe" and line["status"] == "ok" and line["error"] is None
    assert line["parameters"] == {"x": 2, "SMOKE": True}   # RUN_DIR is the folder itself
    assert (tmp / "runs" / line["folder"]).resolve() == result.folder
    assert line["metrics"]["x_type"] == "int" and line["duration_s"] > 0 and line["started"]


def test_cli_parameters_are_yaml_scalars(tmp_path):
    nb = make_notebook(tmp_path / "probe.ipynb", [WRITES_OUTPUTS])
    (tmp_path / "params.yaml").write_text("x: 2\ny: b\n")
    proc = cli("run", nb, "-f", "params.yaml", "-p", "x", "3", "-p", "SMOKE", "true", "--out", "out",
               "--name", "cli", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = read_index(tmp_path / "out" / "index.jsonl")
    assert line["parameters"] == {"x": 3, "y": "b", "SMOKE": True}   # -p wins over -f
    assert line["metrics"]["x_type"] == "int" and line["metrics"]["smoke"] is True
    assert line["name"] == "cli" and line["folder"].endswith("-cli")
    assert "ok:" in proc.stdout


def test_failed_run_keeps_partial_notebook(tmp_path):
    cells = ['print("first")', 'print("second")', 'raise ValueError("boom at cell 3")', 'print("never")']
    nb = make_notebook(tmp_path / "fails.ipynb", cells)
    proc = cli("run", nb, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "ValueError: boom at cell 3" in proc.stderr
    assert "partial notebook:" in proc.stderr and "fails.ipynb" in proc.stderr

    (line,) = read_index(tmp_path / "out" / "index.jsonl")
    assert line["status"] == "failed" and "ValueError" in line["error"]
    folder = tmp_path / "out" / line["folder"]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "boom at cell 3" in status["error"]
    assert "ValueError" in status["traceback"]

    executed = nbformat.read(folder / "fails.ipynb", as_version=4)
    source = [c.source for c in executed.cells]
    outputs = {c.source: c.get("outputs", []) for c in executed.cells if c.cell_type == "code"}
    assert outputs['print("first")'][0]["text"] == "first\n"
    assert outputs['print("second")'][0]["text"] == "second\n"
    assert outputs['raise ValueError("boom at cell 3")'][0]["ename"] == "ValueError"
    assert outputs['print("never")'] == []
    assert status["failed_cell"] == 3 and "cell index 3 of fails.ipynb" in status["error"]
    assert source.index('raise ValueError("boom at cell 3")') > 3   # papermill's cells come before it


def test_sweep_2x2(tmp_path):
    nb = make_notebook(tmp_path / "probe.ipynb", [WRITES_OUTPUTS])
    result = sweep(nb, {"x": [1, 3], "y": ["a", "b"]}, base_parameters={"SMOKE": True}, out_root=tmp_path / "pr")
    assert [run.status for run in result.runs] == ["ok"] * 4
    assert result.folder.name.endswith("-sweep-probe")
    assert sorted(p.name for p in (result.folder / "runs").iterdir()) == ["0-x=1,y=a", "1-x=1,y=b", "2-x=3,y=a",
                                                                        "3-x=3,y=b"]
    rows = (result.folder / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("run,SMOKE,x,y,x_type,smoke,loss,nested.acc,status")
    assert (result.folder / "sweep.png").stat().st_size > 0
    assert "| x | y |" in (result.folder / "sweep.md").read_text()
    assert [r["loss"] for r in result.rows] == [0.5, 1.5, 0.25, 1.25]
    index = read_index(tmp_path / "pr" / "index.jsonl")
    assert len(index) == 4 and {line["sweep"] for line in index} == {result.folder.name}
    assert aggregate_runs([result.folder]) == result.rows   # a sweep folder stands for its runs


# ---------------------------------------------------------------------------------------------- no kernel needed
@pytest.mark.parametrize("text, value", [("100", 100), ("true", True), ("1e-3", 0.001), ("0.5", 0.5),
                                         ("abc", "abc"), ("null", None), ("[1, 2]", [1, 2]), ("'7'", "7")])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_load_parameters_order(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\ny: 2\n")
    assert load_parameters([tmp_path / "a.yaml"], [["y", "3"]], smoke=True) == {"x": 1, "y": 3, "SMOKE": True}
    (tmp_path / "bad.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_parameters([tmp_path / "bad.yaml"], None)


@pytest.mark.parametrize("grid, message", [
    ({}, "at least one key"), ({"x": 3}, "non-empty list"), ({"x": []}, "non-empty list"),
    ({"not a name": [1]}, "not Python identifiers"), ({"class": [1]}, "not Python identifiers"),
    ({"X = 1; import os; Y": [1]}, "not Python identifiers")])
def test_grid_validation(grid, message):
    with pytest.raises(ValueError, match=message):
        validate_grid(grid)


def test_grid_file_and_cli_error(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text("x: [1, 2]\ny: [a]\nbase: {SMOKE: true}\n")
    grid, base = load_grid(tmp_path / "grid.yaml")
    assert combinations(grid) == [{"x": 1, "y": "a"}, {"x": 2, "y": "a"}] and base == {"SMOKE": True}
    nb = make_notebook(tmp_path / "probe.ipynb", [])
    with pytest.raises(ValueError, match="both swept"):
        sweep(nb, grid, base_parameters={"x": 5}, out_root=tmp_path / "pr")
    (tmp_path / "bad.yaml").write_text("x: 3\n")
    assert cli_main(["sweep", str(nb), "--grid", str(tmp_path / "bad.yaml")]) == 2   # in-process: no kernel
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "non-empty list" in err


def test_notebook_checks(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_notebook(tmp_path / "missing.ipynb", {}, out_root=tmp_path / "pr")
    nb = make_notebook(tmp_path / "untagged.ipynb", [], tagged=False)
    with pytest.raises(ValueError, match="tagged `parameters`"):
        run_notebook(nb, {}, out_root=tmp_path / "pr")
    assert not (tmp_path / "pr").exists()   # nothing is recorded for a run that never started
    assert resolve_kernel("no-such-kernel-xyz") == "python3"
    assert "not registered" in capsys.readouterr().err


def test_index_appends_do_not_interleave(tmp_path):
    index = tmp_path / "index.jsonl"
    record = {"name": "r", "parameters": {"blob": "x" * 5000}}
    threads = [threading.Thread(target=lambda: [append_index(index, record) for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_index(index) == [record] * 100


# A parameter name is written into the notebook as code (`NAME = value`): only declared identifiers get in.
INJECTION = 'x = 1; import pathlib; pathlib.Path("pwned").touch(); y'


def test_parameter_names_cannot_inject_code(tmp_path, capsys):
    nb = make_notebook(tmp_path / "probe.ipynb", [WRITES_OUTPUTS])
    # in-process CLI calls: each is refused before a kernel starts or a folder is made
    assert cli_main(["run", str(nb), "-p", INJECTION, "1", "--out", str(tmp_path / "pr")]) == 2
    assert "not Python identifiers" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text(f"'{INJECTION}': 1\n")
    assert cli_main(["run", str(nb), "-f", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "pr")]) == 2
    assert "params.yaml: parameter name(s)" in capsys.readouterr().err
    (tmp_path / "grid.yaml").write_text(f"'{INJECTION}': [1, 2]\n")
    assert cli_main(["sweep", str(nb), "--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "pr")]) == 2
    (tmp_path / "grid.yaml").write_text(f"x: [1, 2]\nbase: {{'{INJECTION}': 1}}\n")
    assert cli_main(["sweep", str(nb), "--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "pr")]) == 2
    assert "base: parameter name(s)" in capsys.readouterr().err
    # a well-formed name the notebook does not declare (usually a typo) is refused too, naming what is declared
    assert cli_main(["run", str(nb), "-p", "X", "1", "--out", str(tmp_path / "pr")]) == 2
    assert "does not declare X in its parameters cell (declared: RUN_DIR, SMOKE, x, y)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not declare z"):
        sweep(nb, {"z": [1, 2]}, out_root=tmp_path / "pr")
    # values that papermill would write back as something else (a YAML date: `2024-01-02` is 2021 in Python)
    assert cli_main(["run", str(nb), "-p", "x", "2024-01-02", "--out", str(tmp_path / "pr")]) == 2
    assert "plain values" in capsys.readouterr().err
    assert not (tmp_path / "pr").exists() and not list(tmp_path.rglob("pwned"))
