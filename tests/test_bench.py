"""The benchmark suite: runs end to end, builds a peer equal to our model, and compares like with like.

No timing assertions: speed depends on the machine and its load; only that every figure is a positive finite number.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mm1lab.bench.common import build, make_batch
from mm1lab.bench.machine import matmul_peak
from mm1lab.bench.peer import build_peer, matched_config, parameter_counts
from mm1lab.bench.train_step import ours_step, peer_step
from mm1lab.config import MM1Config
from mm1lab.flops import batch_flops
from mm1lab.model import MM1Model

pytest.importorskip("transformers")

SUMMARY_KEYS = (
    "matmul_peak_fp32_gflops", "matmul_peak_bf16_gflops", "copy_bandwidth_gbs",
    "train_tokens_per_s_ours_fp32", "train_tokens_per_s_peer_fp32", "train_tokens_per_s_ours_bf16",
    "train_tokens_per_s_peer_bf16", "train_ratio_fp32", "train_ratio_bf16", "mfu_ours_fp32", "mfu_ours_bf16",
    "decode_tokens_per_s_ours_b1", "decode_tokens_per_s_peer_b1", "decode_tokens_per_s_ours_b8",
    "decode_tokens_per_s_peer_b8", "decode_ratio_b1", "decode_ratio_b8", "decode_floor_ratio_ours_b1",
    "decode_read_floor_ratio_ours_b1", "decode_peak_mem_growth_mib_ours", "decode_peak_mem_growth_mib_peer",
    "prefill_s_ours_b1", "peak_mem_growth_mib_ours_fp32", "peak_mem_growth_mib_peer_fp32",
    "data_samples_per_s_workers0", "data_samples_per_s_workers2",
)


def _tiny_llava() -> MM1Config:
    return matched_config(MM1Config.preset("tiny"))


def test_quick_suite_json_end_to_end():
    out = subprocess.run([sys.executable, "-m", "mm1lab.bench.cli", "--quick", "--json"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    summary = results["summary"]
    for key in SUMMARY_KEYS:
        assert key in summary, f"summary lacks {key}"
        assert math.isfinite(summary[key]) and summary[key] > 0, f"{key} = {summary[key]}"
    assert results["params"]["tiny"]["equal"]


@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_peer_parameter_counts_match_exactly(preset):
    """CLIP vision (conv without bias, CLS, ln_pre, post-LN) vs ours; LLaVA projector vs mlp; Llama vs our LM."""
    from mm1lab.bench.suite import mid_config

    cfg = _tiny_llava() if preset == "tiny" else mid_config()
    with torch.device("meta"):
        ours, peer = parameter_counts(MM1Model(cfg), peer=False), parameter_counts(build_peer(cfg), peer=True)
    assert ours == peer   # tolerance: zero, the architectures coincide parameter for parameter


def test_matched_config_is_llava_shaped():
    cfg = _tiny_llava()
    assert cfg.connector.kind == "mlp" and cfg.vision.feature_layer == -2
    assert cfg.image_tokens == cfg.vision.num_patches   # LLaVA: one LM token per patch, CLS dropped


def test_losses_at_init_have_the_same_magnitude():
    cfg = _tiny_llava()
    batch = make_batch(cfg, batch=2, text_tokens=12)
    with torch.no_grad():
        ours = ours_step(build("ours", cfg).eval(), batch).item()
        peer = peer_step(build("peer", cfg).eval(), batch).item()
    uniform = math.log(cfg.lm.vocab_size)
    assert abs(ours - uniform) < 0.5 and abs(peer - uniform) < 0.5, (ours, peer, uniform)


def test_same_batch_feeds_both_models():
    """The image placeholders our model expects are exactly those LLaVA expands <image> into."""
    cfg = _tiny_llava()
    batch = make_batch(cfg, batch=2, text_tokens=4)
    peer = build_peer(cfg)
    assert int((batch["input_ids"] == peer.config.image_token_id).sum()) == 2 * peer.config.image_seq_length


def test_model_flops_counts_the_vit_per_patch():
    cfg = _tiny_llava()
    batch = make_batch(cfg, batch=2, text_tokens=8)
    no_images = dict(batch, images=batch["images"][:0])
    assert batch_flops(cfg, batch) > batch_flops(cfg, no_images) > 0


def test_matmul_peak_is_gflops_per_second():
    """The one matmul peak: a {"gflops", "size"} dict, the unit every MFU in mm1lab divides by."""
    peak = matmul_peak(torch.float32, sizes=(64, 128), repeats=1)
    assert set(peak) == {"gflops", "size"} and peak["size"] in (64, 128)
    assert math.isfinite(peak["gflops"]) and peak["gflops"] > 0


@pytest.mark.slow
def test_quick_pretrain_sections_end_to_end():
    """`--only loader,scaling`: the trainer's data path per worker count, step time vs shape, the document mask."""
    out = subprocess.run([sys.executable, "-m", "mm1lab.bench.cli", "--quick", "--json", "--only", "loader,scaling"],
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    demo = results["loader"]["demo"]
    rates = [demo[f"{cache}_workers{w}"] for cache in ("cold", "warm") for w in (0, 1, 2)]
    assert all(math.isfinite(r) and r > 0 for r in rates + [demo["train_samples_per_s"]])
    scaling = results["scaling"]
    assert all(r["step_s"] > 0 for r in [*scaling["seq_len"].values(), *scaling["images"].values()])
    assert all(r["cost"] > 0 for r in scaling["document_mask"].values())
    assert 1000 < scaling["attention_crossover_tokens"]["tiny"] < scaling["attention_crossover_tokens"]["mm1-3b"]
