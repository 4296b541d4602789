"""Stage-0 throughput (`python -m mm1lab.stage0.throughput`): the FLOP count behind its MFU, and a smoke run."""

from __future__ import annotations

import json
import math

import torch

from mm1lab.stage0.clip import CLIP
from mm1lab.stage0.presets import stage0_config
from mm1lab.stage0.throughput import main, step_flops


def hand_count_forward(cfg, b: int, n: int) -> int:
    """Forward matmul FLOPs of CLIP on b images and b captions of n tokens, written out from the architecture:
    2 FLOPs per multiply-add; a block's linears hold 12 d^2 weights (qkv 3, out 1, MLP 4 + 4 at ratio 4); its
    attention does QK^T and AV, 2 n^2 d each; one projection per tower; the b x b similarity matrix."""
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    patches = (v.image_size // v.patch_size) ** 2
    tokens = patches + 1                                            # + CLS
    vision = 2 * 3 * v.patch_size ** 2 * v.width * patches + v.depth * (2 * 12 * v.width ** 2 * tokens
                                                                      + 4 * tokens ** 2 * v.width)
    text = t.depth * (2 * 12 * t.width ** 2 * n + 4 * n ** 2 * t.width)
    return b * (vision + text + 2 * v.width * e + 2 * t.width * e) + 2 * b * b * e


def test_step_flops_are_three_forward_passes_of_both_towers():
    cfg = stage0_config("clip", "clip-tiny")
    model = CLIP(cfg)
    b, n = 3, 11
    images = torch.randn(b, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = torch.randint(8, cfg.text.vocab_size, (b, n))
    ids[:, -1] = cfg.text.eot_token_id
    assert step_flops(model, images, ids) == 3 * hand_count_forward(cfg, b, n)


def test_smoke_run_reports_model_and_trainer_figures(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["model"] == "clip-tiny" and "compiled" not in report   # the smoke run does not compile
    for part in ("eager", "trainer"):
        assert report[part]["images_per_s"] > 0 and 0 < report[part]["mfu"] < 1
    # the trainer stops at the first record past its time (records every 10 steps), one step later
    assert report["trainer"]["steps"] >= 11 and math.isfinite(report["trainer"]["last_loss"])
    assert "| trainer, eager, 0 workers |" in capsys.readouterr().out
