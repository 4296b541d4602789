"""Training FLOPs and model FLOP utilisation (MFU), with the matmul peak measured on the same machine.

MFU = achieved FLOP/s / peak FLOP/s. Achieved FLOP/s counts the useful work of a training step (forward +
backward = 3x forward, the usual 6 x params per token) from the tokens/s and images/s the trainer logs.
The peak is not a datasheet number: `matmul_peak` times large matrix multiplies in the same process and dtype,
so a CPU shared with other jobs gets a peak measured under the same conditions.

    python -m mm1lab.train.flops --preset tiny --steps 6      # the benchmark in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from mm1lab.config import MM1Config


def _matmul_params(module: nn.Module) -> int:
    """Parameters of the matrix-multiply layers (Linear, Conv); norms, biases and embeddings cost ~no FLOPs."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def flops_per_token(cfg: MM1Config, seq_len: int) -> float:
    """Training FLOPs of the LM per token: 6 x matmul params (active experts only) + 12 x depth x seq x width
    for attention scores and values (the PaLM appendix formula; it ignores causal masking, an upper bound)."""
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        lm = MM1Model(cfg).lm
    params = _matmul_params(lm)
    moe = cfg.lm.moe
    if moe is not None:   # only top_k of num_experts run per token
        for layer in lm.layers:
            experts = getattr(layer.ffn, "experts", None)
            if experts is not None:
                params -= (moe.num_experts - moe.top_k) * _matmul_params(experts[0])
    attn = 12 * cfg.lm.depth * seq_len * cfg.lm.heads * cfg.lm.head_dim
    return 6.0 * params + attn


def flops_per_image(cfg: MM1Config) -> float:
    """Training FLOPs per image for encoder + connector: 6 x matmul params x patches (+ attention), and the
    connector's layers counted once per patch position (exact for 1x1 convs and MLPs, close for the rest)."""
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        model = MM1Model(cfg)
    v = cfg.vision
    tokens = v.num_patches + int(v.cls_token)
    vision = 6.0 * _matmul_params(model.vision) * tokens + 12 * v.depth * tokens * tokens * v.width
    return vision + 6.0 * _matmul_params(model.connector) * v.num_patches


def step_flops(cfg: MM1Config, tokens: float, images: float, seq_len: int) -> float:
    """FLOPs of training on `tokens` LM tokens and `images` images."""
    return flops_per_token(cfg, seq_len) * tokens + flops_per_image(cfg) * images


def matmul_peak(dtype: torch.dtype = torch.float32, *, size: int = 1024, seconds: float = 2.0,
                device: str = "cpu") -> float:
    """Measured FLOP/s of square matmuls of `size` in `dtype` (best of repeated timings)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    torch.matmul(a, b)   # warm-up: thread pool, kernels
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - t))
    return best


def benchmark(precision: str, *, preset: str = "tiny", steps: int = 6, batch_size: int = 64, seq_len: int = 256,
              out_dir: str = "runs/bench") -> dict[str, float]:
    """Train `steps` steps of `preset` on ShapeWorld in `precision`; tokens/s, images/s and MFU without step 1."""
    from mm1lab.train.trainer import train

    result = train(dict(name=f"bench-{precision}", out_dir=f"{out_dir}-{precision}", model=preset, steps=steps,
                        batch_size=batch_size, precision=precision, data=dict(seq_len=seq_len),
                        checkpoint=dict(every=10**9, resume=False, keep=1),
                        track=dict(log_every=1, progress=False, tensorboard=False)))
    from mm1lab.train.tracking import read_metrics

    rows = read_metrics(result.run_dir)[-(steps - 1):]   # step 1 includes warm-up and cache filling
    seconds = sum(r["step_time"] for r in rows)
    tokens = sum(r["tokens_per_s"] * r["step_time"] for r in rows) / seconds
    images = sum(r["images_per_s"] * r["step_time"] for r in rows) / seconds
    cfg = MM1Config.preset(preset)
    achieved = step_flops(cfg, tokens, images, seq_len)
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    return dict(precision=precision, step_s=seconds / len(rows), tokens_per_s=tokens, images_per_s=images,
                achieved_gflops=achieved / 1e9, peak_gflops=peak / 1e9, mfu=achieved / peak)


def main(argv: list[str] | None = None) -> None:
    """Print the fp32 vs bf16 benchmark as JSON lines."""
    parser = argparse.ArgumentParser(description="tokens/s, images/s and MFU of training, fp32 vs bf16 autocast")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    for precision in args.precisions:
        print(json.dumps(benchmark(precision, preset=args.preset, steps=args.steps, batch_size=args.batch_size)),
              flush=True)


if __name__ == "__main__":
    main()
