"""The training loop in process: it learns, accumulation and stages behave, faults are handled, metrics are logged."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from mm1lab.model import MM1Model
from mm1lab.train import TrainConfig, TrainingError, load_checkpoint, read_metrics, train
from mm1lab.train.data import SyntheticSource, collate_tokens


def tiny_run(out_dir, **over) -> dict:
    """A seconds-long run of the test model on synthetic data (the shared base of the training tests)."""
    cfg = dict(name="t", out_dir=str(out_dir), model=tiny_config().to_dict(), steps=8, batch_size=4,
               optim=dict(lr=3e-3, warmup_steps=2), data=dict(source="synthetic", seq_len=32),
               checkpoint=dict(every=4, keep=2), track=dict(log_every=1, progress=False, tensorboard=False))
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (conftest's `one_thread`)."""


def test_loss_goes_down_and_metrics_are_logged(tmp_path):
    result = train(tiny_run(tmp_path, steps=20, track=dict(tensorboard=True)))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 21)) and result.status == "finished"
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "images_per_s", "stream_loss", "skipped",
                "nonfinite_steps"):
        assert key in rows[-1], key
    assert set(rows[-1]["stream_loss"]) == {"caption", "text"}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert result.checkpoint.name == "step_00000020" and result.model is not None


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    whole = train(tiny_run(tmp_path / "a", steps=4, batch_size=8))
    accum = train(tiny_run(tmp_path / "b", steps=4, batch_size=8, micro_batch_size=2))
    la, lb = ([r["loss"] for r in read_metrics(p)] for p in (whole.run_dir, accum.run_dir))
    assert la == pytest.approx(lb, rel=1e-5)
    wa, wb = (load_checkpoint(r.checkpoint, weights_only=True).weights for r in (whole, accum))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_align_stage_trains_only_the_connector(tmp_path):
    result = train(tiny_run(tmp_path, stage="align", steps=3))
    torch.manual_seed(0)   # the trainer builds its model right after seeding with cfg.seed = 0
    before = MM1Model(tiny_config()).state_dict()
    after = load_checkpoint(result.checkpoint, weights_only=True).weights
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"connector"}


def test_lr_scale_zero_freezes_a_part_and_schedule_reaches_ten_percent(tmp_path):
    result = train(tiny_run(tmp_path, steps=6, optim=dict(lr_scale=dict(vision=0.0))))
    rows = read_metrics(tmp_path)
    assert "vision.decay" not in rows[-1]["lr_parts"]
    peak = 3e-3
    assert [r["lr"] for r in rows[:3]] == pytest.approx([peak / 3, 2 * peak / 3, peak])   # 2 warmup steps
    # each part's LR is the one its step used, like `lr` (it once read the schedule a step ahead)
    assert all(r["lr_parts"]["lm.decay"] == pytest.approx(r["lr"]) for r in rows)
    assert result.metrics["lr"] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4))))


def test_mm1_lr_rule_is_the_default(tmp_path):
    result = train(tiny_run(tmp_path, steps=1, optim=dict(lr=None)))
    n = sum(p.numel() for p in result.model.parameters())
    assert result.peak_lr == pytest.approx(math.exp(-0.4214 * math.log(n) - 0.5535))


def test_sft_starts_from_a_pretrained_checkpoint(tmp_path):
    pre = train(tiny_run(tmp_path / "pre", steps=2))
    sft = TrainConfig.from_dict(tiny_run(tmp_path / "sft", stage="sft", init_from=str(pre.run_dir), steps=1,
                                         model="tiny", data=dict(mixture=dict(sft=1.0))))
    from mm1lab.train import Trainer
    trainer = Trainer(sft)   # model config comes from the checkpoint ("tiny" above is ignored)
    weights = load_checkpoint(pre.run_dir, weights_only=True).weights
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())


def test_moe_metrics_and_bf16(tmp_path):
    cfg = tiny_run(tmp_path, steps=2, precision="bf16",
                   model=tiny_config(moe=dict(num_experts=4, top_k=2, every=2)).to_dict())
    row = train(cfg).metrics
    assert row["moe_balance"] > 0 and row["moe_z"] > 0 and math.isfinite(row["loss"])


class NaNFrom(SyntheticSource):
    """Synthetic samples whose images turn NaN from sample `start` on (a poisoned shard)."""

    def __init__(self, *args, start: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = start

    def item(self, i):
        item = super().item(i)
        if i >= self.start:
            item["images"] = torch.full_like(item["images"], float("nan"))
        return item


def test_non_finite_loss_is_skipped_counted_and_stops(tmp_path):
    cfg = TrainConfig.from_dict(tiny_run(tmp_path, steps=20, max_bad_steps=3))
    source = NaNFrom(cfg.model_config(), seq_len=32, start=6 * 4)   # steps 7.. see NaN images
    with pytest.raises(TrainingError, match=r"non-finite for 3 steps in a row \(steps 7..9\).*step_00000004"):
        train(cfg, source=source, collate=collate_tokens)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_00000004"]   # nothing written after the loss went bad
    weights = load_checkpoint(tmp_path, weights_only=True).weights
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = read_metrics(tmp_path)
    assert rows[-1]["nonfinite_steps"] == 2 and [math.isfinite(r["loss"]) for r in rows] == [True] * 6 + [False] * 2


def test_one_bad_step_is_skipped_and_training_goes_on(tmp_path):
    class OneBad(SyntheticSource):
        def item(self, i):
            item = super().item(i)
            if 8 <= i < 12 and len(item["images"]):   # step 3 only
                item["images"] = torch.full_like(item["images"], float("inf"))
            return item

    cfg = TrainConfig.from_dict(tiny_run(tmp_path, steps=6))
    result = train(cfg, source=OneBad(cfg.model_config(), seq_len=32), collate=collate_tokens)
    assert result.status == "finished" and result.metrics["nonfinite_steps"] == 1
