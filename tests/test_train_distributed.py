"""torchrun on CPU (gloo, 2 ranks) reproduces the single-process loss curve at the same global batch and the same
micro-batch size; with unpacked rows any split gives the same losses, with packed rows it does not (yet).

Tolerance: per-step losses within 1e-5 relative (observed: identical to ~1e-7; only the order of the gradient
all-reduce differs). Both DDP and FSDP2 (fully_shard per transformer block) run on CPU with gloo in torch 2.13.
docs/distributed.md states the guarantee as these tests check it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train_loop import tiny_run

from mm1lab.train import load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5


def launch(cfg: dict, tmp_path: Path, nproc: int) -> None:
    path = tmp_path / f"{Path(cfg['out_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mm1lab.train.cli", str(path)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *cmd[1:]]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    launch(tiny_run(tmp / "single", steps=6, batch_size=8, micro_batch_size=2), tmp, nproc=1)
    return tmp / "single"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_ranks_matches_single_process(single, tmp_path, parallel):
    # 2 ranks x micro 2 x accumulation 2 = the single process's 1 x micro 2 x accumulation 4 = 8 sequences
    cfg = tiny_run(tmp_path / parallel, steps=6, batch_size=8, micro_batch_size=2, parallel=parallel)
    launch(cfg, tmp_path, nproc=2)
    ref, got = read_metrics(single), read_metrics(tmp_path / parallel)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=RTOL)
    # the gathered checkpoint is an ordinary one: full weights, loadable without torch.distributed
    a, b = load_checkpoint(single, weights_only=True), load_checkpoint(tmp_path / parallel, weights_only=True)
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.allclose(a.weights[k], b.weights[k], rtol=1e-4, atol=1e-6) for k in a.weights)


def split_losses(tmp_path, *, pack: bool, micro: int) -> list[float]:
    """Per-step losses of a single process on ShapeWorld, batch 8 split into micro-batches of `micro`."""
    from mm1lab.train import train

    cfg = tiny_run(tmp_path / f"pack{pack}-micro{micro}", steps=3, batch_size=8, micro_batch_size=micro, model="tiny",
                   data=dict(source="shapeworld", seq_len=128, pack=pack), optim=dict(lr=3e-3, warmup_steps=1))
    train(cfg)
    return [r["loss"] for r in read_metrics(cfg["out_dir"])]


def test_micro_batch_split_does_not_change_unpacked_loss(tmp_path):
    assert split_losses(tmp_path, pack=False, micro=2) == pytest.approx(split_losses(tmp_path, pack=False, micro=8),
                                                                        rel=RTOL)


def test_micro_batch_split_changes_packed_loss(tmp_path):
    # Packed documents attend to each other, so the rows (and the loss) depend on which samples share a micro-batch.
    # When document-masked packing lands this fails: then widen the guarantee in README.md and docs/distributed.md.
    two, eight = split_losses(tmp_path, pack=True, micro=2), split_losses(tmp_path, pack=True, micro=8)
    assert max(abs(a - b) / b for a, b in zip(two, eight)) > 1e-4
