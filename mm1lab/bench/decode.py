"""Generation speed of mm1lab and of the peer: prefill time and decode tokens/s, greedy, at a given batch size.

Both generate exactly `new_tokens` tokens (ours: no stop token; the peer: `min_new_tokens`). Prefill time is the
time of a 1-token generation; decode time per step is (t(new_tokens) - t(1)) / (new_tokens - 1), so prompt
encoding and set-up cancel out. Runs of ours and of the peer alternate so machine load hits both alike.

`ours_bf16` (full run) is our model cast to bf16 weights and cache, a separate row, never the headline ratio.

Bandwidth floor per decode step: every LM matmul weight (blocks + head) is read once, plus the KV cache up to the
current position:  bytes = P_lm * bytes_per_param + 2 * L * g * d_head * ctx * b * bytes_per_value,
floor_s = bytes / copy bandwidth measured in the same run (the issue's definition); `floor_ratio` = measured step
time / floor_s. `read_floor_ratio` divides by the streaming-read bandwidth instead: decoding only reads weights, and
a read moves half the bytes of a copy per byte counted, so this floor is the stricter one.

Ours generates through `PackedDecoder` (`mm1lab/decode_step.py`), the default of `generate`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mm1lab.bench.common import build, generate_greedy, make_batch
from mm1lab.config import MM1Config
from mm1lab.flops import matmul_weights


def weight_bytes_per_step(cfg: MM1Config, *, batch: int, context: int, bytes_per_value: int = 4) -> int:
    """Bytes one decode step must read: LM matmul weights plus the KV cache of `context` positions."""
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        lm = MM1Model(cfg).lm
    kv = 2 * cfg.lm.depth * cfg.lm.n_kv_heads * cfg.lm.head_dim * context * batch
    return (matmul_weights(lm) + kv) * bytes_per_value


def decode_bench(cfg: MM1Config, *, batch: int, text_tokens: int = 16, new_tokens: int = 32,
                 impls=("ours", "peer"), rounds: int = 2, bandwidth_gbs: float | None = None,
                 read_bandwidth_gbs: float | None = None, measure_bandwidth: bool = False) -> dict[str, Any]:
    """Prefill seconds and decode tokens/s of each impl (best of `rounds`), plus the bandwidth floor.

    measure_bandwidth: measure copy and read bandwidth in every round, between the generations (the best over
    rounds and the figures passed in),
    and use those for the floor instead of the figures passed in: memory bandwidth on a shared machine drifts
    over minutes, so the floor is taken side by side with the decoding it bounds.
    """
    from mm1lab.bench.machine import copy_bandwidth, read_bandwidth

    data = make_batch(cfg, batch=batch, text_tokens=text_tokens)
    models = {impl: build(impl.removesuffix("_bf16"), cfg).eval() for impl in impls}
    for impl in impls:   # "ours_bf16": our model with bf16 weights and KV cache (half the bytes per token)
        if impl.endswith("_bf16"):
            models[impl].to(torch.bfloat16)
    best: dict[str, dict[str, float]] = {impl: {"t1": float("inf"), "tn": float("inf")} for impl in impls}
    with torch.inference_mode():
        for impl, model in models.items():   # warm-up (first-call allocations, HF generation config set-up)
            generate_greedy(impl, model, data, 2)
        for _ in range(rounds):
            if measure_bandwidth:
                bandwidth_gbs = max(bandwidth_gbs or 0.0, copy_bandwidth(repeats=3))
                read_bandwidth_gbs = max(read_bandwidth_gbs or 0.0, read_bandwidth(repeats=3))
            for impl, model in models.items():
                for key, n in (("t1", 1), ("tn", new_tokens)):
                    start = time.perf_counter()
                    out = generate_greedy(impl, model, data, n)
                    best[impl][key] = min(best[impl][key], time.perf_counter() - start)
                    assert out.shape == (batch, n), f"{impl} generated {tuple(out.shape)}, expected {(batch, n)}"
    prompt = data["input_ids"].shape[1]
    result: dict[str, Any] = {"batch": batch, "prompt_tokens": prompt, "new_tokens": new_tokens,
                              "copy_bandwidth_gbs": bandwidth_gbs, "read_bandwidth_gbs": read_bandwidth_gbs}
    for impl in impls:
        tn, t1 = best[impl]["tn"], best[impl]["t1"]
        noisy = tn - t1 < 0.05 * tn   # load spikes swamped the difference: fall back to an upper bound
        step = tn / new_tokens if noisy else (tn - t1) / (new_tokens - 1)
        result[impl] = {"prefill_s": t1, "decode_step_s": step, "decode_tokens_per_s": batch / step,
                        "step_includes_prefill": noisy}
    if bandwidth_gbs:
        nbytes = weight_bytes_per_step(cfg, batch=batch, context=prompt + new_tokens // 2)
        floor = nbytes / (bandwidth_gbs * 1e9)
        result["floor"] = {"bytes_per_step": nbytes, "floor_step_s": floor, "floor_tokens_per_s": batch / floor}
        for impl in impls:
            scale = 2 if impl.endswith("_bf16") else 1   # half the bytes: half the floor time
            result[impl]["floor_ratio"] = result[impl]["decode_step_s"] * scale / floor
            if read_bandwidth_gbs:
                read_floor = nbytes / (read_bandwidth_gbs * 1e9)
                result[impl]["read_floor_ratio"] = result[impl]["decode_step_s"] * scale / read_floor
    if {"ours", "peer"} <= set(impls):
        result["ratio"] = result["ours"]["decode_tokens_per_s"] / result["peer"]["decode_tokens_per_s"]
        result["prefill_ratio"] = result["peer"]["prefill_s"] / result["ours"]["prefill_s"]
    return result
