"""Checkpoints and faults with real subprocesses: SIGKILL mid-training resumes exactly, a kill while a checkpoint
is being written leaves the previous one intact, Ctrl-C checkpoints and exits, failures while saving are clean."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train_loop import tiny_config, tiny_run

from mm1lab.folders import find_checkpoint
from mm1lab.safetensors_io import load_state_dict, save_state_dict
from mm1lab.train import load_checkpoint, read_metrics
from mm1lab.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_cli(cfg: dict, tmp_path: Path, fault: str | None = None, nproc: int = 1) -> subprocess.CompletedProcess:
    """`python -m mm1lab.train.cli` on `cfg` in a fresh process (one thread: identical arithmetic every run), or
    under torchrun with `nproc` gloo ranks."""
    path = tmp_path / f"{Path(cfg['out_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MM1LAB_FAULT": fault or ""}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "mm1lab.train.cli", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120 * nproc)


SAMPLES = ROOT / "data_samples"


def corpus_run(out_dir, **over) -> dict:
    """The tiny preset on the shipped real-format samples (caption tars, OBELICS-style JSONL, text JSONL), read in
    8 shards through a shuffle buffer, endlessly."""
    files = dict(caption=[str(SAMPLES / "captions")], interleaved=[str(SAMPLES / "interleaved" / "docs.jsonl")],
                 text=[str(SAMPLES / "text" / "train.jsonl")])
    data = dict(source="files", files=files, seq_len=128, pack=True, shards=8, shuffle_buffer=6,
                **over.pop("data", {}))
    return tiny_run(out_dir, model="tiny", data=data, **over)


def muon_run(out_dir, **over) -> dict:
    """The synthetic run with Muon on the LM's and connector's matrices and, with `muon_conv`, on the C-Abstractor's
    conv kernels (momentum state on those, AdamW's on the rest)."""
    return tiny_run(out_dir, model=tiny_config("c-abstractor").to_dict(), optim=dict(name="muon", muon_conv=True),
                    **over)


RUNS = {"synthetic": tiny_run, "files": corpus_run, "muon": muon_run}


RESUME_CASES = [("synthetic", 0, 1), ("synthetic", 1, 1), ("synthetic", 2, 1), ("files", 2, 1), ("muon", 0, 1),
                pytest.param("synthetic", 2, 2, marks=pytest.mark.slow, id="synthetic-2ranks-2workers")]


@pytest.mark.parametrize("source, workers, nproc", RESUME_CASES)
def test_sigkill_mid_training_then_resume_matches_uninterrupted_run(tmp_path, source, workers, nproc):
    # nproc 2: torchrun, 2 gloo ranks x `workers` DataLoader workers each, every rank SIGKILLed after step 7
    make = lambda out: RUNS[source](out, steps=10, checkpoint=dict(every=3, keep=2),   # noqa: E731
                                    data=dict(num_workers=workers), **({"parallel": "ddp"} if nproc > 1 else {}))
    whole = run_cli(make(tmp_path / "whole"), tmp_path, nproc=nproc)
    assert whole.returncode == 0, whole.stderr[-4000:]
    killed_cfg = make(tmp_path / "killed")
    killed = run_cli(killed_cfg, tmp_path, fault="kill@train:7", nproc=nproc)   # dies after step 7, last ckpt: 6
    assert killed.returncode == (-signal.SIGKILL if nproc == 1 else 1)       # torchrun reports the dead ranks
    assert find_checkpoint(tmp_path / "killed").name == "step_00000006"
    resumed = run_cli(killed_cfg, tmp_path, nproc=nproc)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = (load_checkpoint(tmp_path / name) for name in ("whole", "killed"))
    assert a.step == b.step == 10
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)                  # bit-exact
    for name in ("lm.embed.weight", "lm.layers.0.attn.q_proj.weight"):      # AdamW's state; Muon's, with "muon"
        assert all(torch.equal(x, y) for x, y in zip(a.optimizer["state"][name].values(),
                                                     b.optimizer["state"][name].values()))
    if source == "muon":
        assert set(a.optimizer["state"]["lm.layers.0.attn.q_proj.weight"]) == {"momentum_buffer"}
        kernel = "connector.stage1.0.conv2.0.weight"                       # (32, 1, 3, 3), stepped as (32, 9)
        assert a.optimizer["state"][kernel]["momentum_buffer"].shape == (32, 9)
        assert torch.equal(a.optimizer["state"][kernel]["momentum_buffer"],
                           b.optimizer["state"][kernel]["momentum_buffer"])
        assert a.weights[kernel].shape == (32, 1, 3, 3)
    la, lb = ([r["loss"] for r in read_metrics(tmp_path / name)] for name in ("whole", "killed"))
    assert la == lb and len(la) == 10   # metrics.jsonl reads as one run (step 7's first record was dropped)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    cfg = tiny_run(tmp_path / "run", steps=8, checkpoint=dict(every=2, keep=5))
    dead = run_cli(cfg, tmp_path, fault="kill@checkpoint:4")   # files of step 4 written, not yet renamed
    assert dead.returncode == -signal.SIGKILL
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000002"
    assert [p.name for p in ckpts.iterdir() if p.name.startswith("step_")] == ["step_00000002"]
    assert load_checkpoint(tmp_path / "run").step == 2   # complete and loadable
    again = run_cli(cfg, tmp_path)   # resumes from 2; the stale temporary directory is ignored
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(tmp_path / "run").step == 8


def test_ctrl_c_checkpoints_then_exits(tmp_path):
    cfg = tiny_run(tmp_path / "run", steps=50, checkpoint=dict(every=100))
    out = run_cli(cfg, tmp_path, fault="sigint@train:3")
    assert out.returncode == 130, out.stderr
    assert "interrupted" in out.stdout + out.stderr
    assert load_checkpoint(tmp_path / "run").step == 3


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    state = {"w": torch.ones(3)}
    kw = dict(model_config_json="{}", train_config_yaml="", optimizer={}, state={"x": 1})
    save_checkpoint(tmp_path, 1, weights=state, **kw)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, weights={"w": torch.zeros(3)}, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]   # no temporary left
    assert torch.equal(load_checkpoint(tmp_path, weights_only=True).weights["w"], torch.ones(3))


def test_keep_last_n_and_tied_weights_stored_once(tmp_path):
    emb = torch.randn(5, 4)
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, weights={"embed": emb, "head": emb}, model_config_json="{}",
                        train_config_yaml="", optimizer={}, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_00000003", "step_00000004"]
    save_state_dict({"embed": emb, "head": emb}, tmp_path / "w.safetensors")
    loaded = load_state_dict(tmp_path / "w.safetensors")
    assert torch.equal(loaded["head"], emb) and loaded["head"] is loaded["embed"]


def test_checkpoint_files_load_without_pickle(tmp_path):
    from test_train_loop import train
    result = train(tiny_run(tmp_path, steps=2))
    for name in ("optimizer.pt", "state.pt"):   # weights_only=True refuses arbitrary objects
        torch.load(result.checkpoint / name, weights_only=True)
    assert (result.checkpoint / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"   # not a pickle


@pytest.mark.parametrize("workers", [0, 2])
def test_shapeworld_data_state_resumes_at_the_next_sample(workers):
    from mm1lab.train import TrainConfig
    from mm1lab.train.data import GlobalBatches, build_data

    cfg = TrainConfig.from_dict(dict(model="tiny", data=dict(seq_len=128)))
    make = lambda: GlobalBatches(*build_data(cfg, cfg.model_config()), micro=2, accum=2, rank=1, world=2,  # noqa: E731
                                 num_shards=cfg.data.shards, workers=workers)
    first = make()
    first.next_step()
    state = first.state_dict()
    expected = first.next_step()
    second = make()
    second.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    got = second.next_step()
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(expected, got))


def _roundtrip(obj) -> io.BytesIO:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
