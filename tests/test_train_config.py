"""TrainConfig: YAML with --set overrides, stage presets, validation messages, MM1's LR rule and schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mm1lab.config import ConfigError
from mm1lab.train import STAGES, TrainConfig, WarmupCosine, mm1_peak_lr, mm1_weight_decay
from mm1lab.train.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = TrainConfig.load(path)
    assert cfg.stage in STAGES and cfg.steps > 0


def test_set_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodel: tiny\noptim: {lr: 1.0e-3}\n")
    cfg = TrainConfig.load(path, ["steps=7", "optim.lr=2e-4", "freeze.vision=true", "data.mixture={text: 1}"])
    assert (cfg.steps, cfg.optim.lr, cfg.freeze["vision"], cfg.data.mixture) == (7, 2e-4, True, {"text": 1})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg   # round trip


@pytest.mark.parametrize("stage,frozen,mixture", [
    ("pretrain", set(), {"caption": 0.45, "interleaved": 0.45, "text": 0.10}),
    ("sft", set(), {"sft": 1.0}),
    ("align", {"vision", "lm"}, {"caption": 1.0}),
])
def test_stage_presets(stage, frozen, mixture):
    cfg = TrainConfig.from_dict(dict(stage=stage))
    assert {p for p, f in cfg.freeze.items() if f} == frozen and cfg.data.mixture == mixture


@pytest.mark.parametrize("bad,message", [
    (dict(stage="finetune"), "stage must be one of"),
    (dict(precision="fp16"), "precision must be one of"),
    (dict(freeze=dict(vision=True, connector=True, lm=True)), "nothing would train"),
    (dict(freeze=dict(encoder=True)), "unknown part"),
    (dict(optim=dict(lr=-1)), "optim.lr must be > 0"),
    (dict(data=dict(source="laion")), "data.source must be one of"),
    (dict(stpes=3), "unknown field"),
])
def test_validation_names_the_field(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(bad)


def test_global_batch_must_split_evenly():
    cfg = TrainConfig.from_dict(dict(batch_size=12, micro_batch_size=5))
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        cfg.accumulation(world=1)
    assert TrainConfig.from_dict(dict(batch_size=64, micro_batch_size=8)).accumulation(world=2) == (8, 4)


def test_mm1_lr_rule():
    assert mm1_peak_lr(1_383_456) == pytest.approx(1.49e-3, rel=0.01)   # the tiny preset
    assert mm1_peak_lr(3e9) == pytest.approx(6e-5, rel=0.05)            # MM1-3B, as the paper's rule gives
    assert mm1_peak_lr(30e9) == pytest.approx(2.2e-5, rel=0.05)
    assert mm1_weight_decay(1e-3) == pytest.approx(1e-4)


def test_warmup_then_cosine_to_ten_percent():
    opt = torch.optim.AdamW([dict(params=[torch.zeros(1, requires_grad=True)], peak_lr=1.0)])
    sched = WarmupCosine(opt, warmup=4, total=20, min_ratio=0.1)
    lrs = []
    for _ in range(21):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[20] == pytest.approx(0.1)
    assert lrs[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("precision: fp8\n")
    assert main([str(path)]) == 2
    assert "precision must be one of" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2


CORPORA = sorted((ROOT / "configs").glob("pretrain-*-corpora-gpu.yaml"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("pretrain-*-gpu.yaml")), ids=lambda p: p.name)
def test_gpu_pretraining_recipes_are_fsdp_bf16_compiled_and_split_over_8_nodes(path):
    cfg = TrainConfig.load(path)
    assert (cfg.parallel, cfg.precision, cfg.compile, cfg.data.pack) == ("fsdp", "bf16", True, True)
    assert cfg.data.pad_to_seq_len   # one row width: compiled code is not compiled again per width
    micro, _ = cfg.accumulation(64)   # 8 nodes x 8 GPUs
    assert cfg.data.num_workers > 0 and cfg.data.shards % (micro * 64 * cfg.data.num_workers) == 0 or \
        cfg.data.source == "shapeworld" and cfg.data.shards % (micro * 8 * cfg.data.num_workers) == 0


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.name)
def test_corpora_recipes_read_caption_tars_obelics_and_text_jsonl(path):
    """The recipe's data section, pointed at the shipped real-format samples, gives batches of all three streams."""
    from mm1lab.train.data import GlobalBatches, build_data

    samples = ROOT / "data_samples"
    files = {"dfn:caption": [str(samples / "captions")], "interleaved": [str(samples / "interleaved" / "docs.jsonl")],
             "text": [str(samples / "text" / "train.jsonl")]}
    cfg = TrainConfig.load(path, ["model=tiny", "data.seq_len=256", "data.shards=4", "data.shuffle_buffer=4"])
    cfg.data.files = files
    batches = GlobalBatches(*build_data(cfg, cfg.model_config()), micro=4, accum=4, num_shards=4)
    step = batches.next_step()
    streams = {s for b in step for row in b["stream"] for s in row.split("+")}   # packed rows: "caption+text"
    assert {"caption", "interleaved"} <= streams <= {"caption", "interleaved", "text"}
    assert all(b["images"] is not None and b["images"].shape[-1] == 64 for b in step)


@pytest.mark.parametrize("pad", [False, True])
def test_pad_to_seq_len_gives_every_packed_batch_one_width(pad):
    """Packed rows are padded to the batch's longest by default (less work on a CPU) and to data.seq_len with
    pad_to_seq_len (one shape on a GPU: the FlexAttention kernel was compiled again for each new width, hit
    torch's recompile limit and fell back to its unfused form, docs/benchmarks.md)."""
    from mm1lab.train.data import build_data

    cfg = TrainConfig.load(ROOT / "configs" / "pretrain-tiny.yaml", ["data.pack=true", f"data.pad_to_seq_len={pad}"])
    source, collate = build_data(cfg, cfg.model_config())
    samples = iter(source.read_shard(0, 1))
    widths = {collate([next(samples)[0] for _ in range(8)])["input_ids"].shape[1] for _ in range(4)}
    assert widths == {cfg.data.seq_len} if pad else max(widths) <= cfg.data.seq_len and len(widths) > 1
