"""Training under torchrun from a notebook: `mm1lab run notebooks/02_pretrain.ipynb -p NPROC 2` starts 2 gloo ranks,
their progress and metrics stream into the executed notebook, and a failed rank fails the run with its own error."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mm1lab.runner import run_notebook
from mm1lab.train import read_metrics
from mm1lab.train.launch import RankFailed, format_record, rank_error, torchrun_command

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_pretrain.ipynb"


def _outputs(path: Path) -> str:
    """Every stream output of an executed notebook, concatenated."""
    cells = nbformat.read(path, as_version=4).cells
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", []))


def _error_file(folder: Path, rank: int, message: str, timestamp: int) -> None:
    folder = folder / "run_id" / "attempt_0" / str(rank)
    folder.mkdir(parents=True)
    (folder / "error.json").write_text(json.dumps({"message": {"message": message, "extraInfo": {
        "py_callstack": f"Traceback (most recent call last):\n  ...\n{message}", "timestamp": str(timestamp)}}}))


def test_the_failing_rank_is_the_cause_not_the_ones_that_lost_a_peer(tmp_path):
    _error_file(tmp_path, 0, "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:123", 100)
    _error_file(tmp_path, 1, "ValueError: bad sample in shard 7", 101)
    rank, error = rank_error(tmp_path, 1)
    assert rank == 1 and error.startswith("ValueError: bad sample in shard 7") and str(tmp_path) in error
    assert "rank 1 failed: ValueError" in str(RankFailed(rank, error))
    assert rank_error(tmp_path / "none", 1)[0] is None


def test_launch_runs_the_cli_command_under_torchrun(tmp_path):
    cmd = torchrun_command(tmp_path / "launch.yaml", nproc=2, log_dir=tmp_path / "logs")
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    assert cmd[-3:] == ["-m", "mm1lab.train.cli", str(tmp_path / "launch.yaml")]
    assert format_record(dict(step=3, loss=2.5, lr=1e-3, tokens_per_s=1234.5), 10) == \
        "step 3/10  loss 2.5000  lr 1.00e-03  tokens_per_s 1,234"


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_notebook_trains_under_torchrun_with_two_gloo_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_notebook(NOTEBOOK, {"NPROC": 2, "WORKERS": 1}, smoke=True, out_root=tmp_path)
    assert result.ok, f"{result.error}\n  partial notebook: {result.notebook}"
    text = _outputs(result.notebook)
    assert "launching: -m torch.distributed.run" in text and "--nproc-per-node=2" in text
    assert all(f"step {s}/3  loss" in text for s in (1, 2, 3))         # metrics streamed into the cell
    assert "finished at step 3" in text                                # rank 0's own output too
    assert [r["step"] for r in read_metrics(result.folder / "train")] == [1, 2, 3]
    assert result.metrics["steps"] == 3 and result.metrics["final_loss"] > 0


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_a_failed_rank_fails_the_notebook_run_with_that_ranks_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MM1LAB_FAULT", "raise@train:2/1")   # rank 1 raises after step 2; rank 0 loses its peer
    result = run_notebook(NOTEBOOK, {"NPROC": 2}, smoke=True, out_root=tmp_path)
    assert not result.ok
    assert "RankFailed" in result.error and "rank 1 failed" in result.error, result.error
    assert "injected fault" in result.error
    status = json.loads((result.folder / "status.json").read_text())
    assert "checkpoint.py" in status["traceback"]   # the rank's own traceback, not torchrun's
