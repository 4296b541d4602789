"""The one FLOP model (`mm1lab.flops`): equal to torch's own count of a forward pass, MoE counted by its active
experts only, and the same figure in `mm1lab bench` as in the trainer-side MFU (`python -m mm1lab.train.flops`)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mm1lab.bench.common import make_batch
from mm1lab.bench.peer import matched_config
from mm1lab.config import CONNECTORS, MM1Config
from mm1lab.flops import batch_flops, flops_per_token, step_flops
from mm1lab.model import MM1Model


def tiny(**parts) -> MM1Config:
    """The tiny preset with some fields of its parts replaced, e.g. `tiny(vision=dict(feature_layer=-2))`."""
    data = MM1Config.preset("tiny").to_dict()
    for part, fields in parts.items():
        data[part].update(fields)
    return MM1Config.from_dict(data)


def moe(num_experts: int, top_k: int) -> MM1Config:
    return tiny(lm=dict(moe=dict(num_experts=num_experts, top_k=top_k, every=2)))


CONFIGS = {
    "tiny": tiny,
    "tiny-moe": lambda: moe(4, 2),
    "tiny-penultimate": lambda: tiny(vision=dict(feature_layer=-2)),
    "tiny-llava": lambda: matched_config(MM1Config.preset("tiny")),   # the bench's layout: mlp, CLS, penultimate
    "tiny-gqa-untied": lambda: tiny(lm=dict(kv_heads=2, head_dim_override=16, tie_embeddings=False)),
    **{f"connector-{kind}": (lambda kind=kind: tiny(connector=dict(kind=kind))) for kind in CONNECTORS},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flop_model_equals_torch_flop_counter(name):
    """3 x the matmul FLOPs torch counts in one forward pass (logits on every position, math attention so the
    score and value matmuls are visible) = the model's training FLOPs for that batch, exactly."""
    cfg = CONFIGS[name]()
    torch.manual_seed(0)
    model = MM1Model(cfg).eval()
    batch = make_batch(cfg, batch=2, text_tokens=8)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch["input_ids"], images=batch["images"])
    assert batch_flops(cfg, batch) == 3 * counter.get_total_flops()


def test_moe_counts_only_the_active_experts():
    cfg = tiny()
    width, moe_layers = cfg.lm.width, sum(moe(4, 2).lm.is_moe_layer(i) for i in range(cfg.lm.depth))
    expert = 3 * width * cfg.lm.ffn_dim   # SwiGLU: gate, up, down

    def per_token(config: MM1Config) -> float:
        return flops_per_token(config, seq_len=64)

    assert moe_layers > 0
    # One more active expert per token: one more expert's matmuls in every MoE layer.
    assert per_token(moe(4, 2)) - per_token(moe(4, 1)) == 6 * moe_layers * expert
    # More experts at the same top_k: only the router grows (one column per expert), never the expert work.
    assert per_token(moe(8, 2)) - per_token(moe(4, 2)) == 6 * moe_layers * width * 4
    # One expert, top-1: the dense model plus a one-column router.
    assert per_token(moe(1, 1)) - per_token(cfg) == 6 * moe_layers * width


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "tiny-penultimate"])
def test_bench_and_trainer_count_the_same_flops(name):
    """The FLOPs `mm1lab bench` reports for a batch = those the trainer-side MFU (`mm1lab.train.flops`, from the
    logged tokens/s and images/s) computes for the same tokens and images."""
    from mm1lab.bench.train_step import train_bench

    cfg, images, text_tokens = CONFIGS[name](), 2, 8
    bench = train_bench(cfg, batch=images, text_tokens=text_tokens, precisions=("fp32",), impls=("ours",),
                        rounds=1, per_round=1)
    seq_len = bench["tokens_per_sample"]
    assert bench["model_gflops_per_step"] * 1e9 == step_flops(cfg, images * seq_len, images, seq_len)
