"""Trainer-side benchmark: tokens/s, images/s and model FLOP utilisation (MFU) of `train`, fp32 vs bf16 autocast.

MFU = achieved FLOP/s / peak FLOP/s. Achieved FLOP/s is the useful work of the logged tokens/s and images/s under
`mm1lab.flops`, the FLOP model `mm1lab bench` uses too, so both MFU figures count the same work. The peak is not a
datasheet number: `mm1lab.bench.machine.matmul_peak` times large matrix multiplies in the same process and dtype,
so a CPU shared with other jobs gets a peak measured under the same conditions.

    python -m mm1lab.train.flops --preset tiny --steps 6      # the benchmark in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json

import torch

from mm1lab.bench.machine import matmul_peak
from mm1lab.config import MM1Config
from mm1lab.flops import step_flops


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
    achieved_gflops = step_flops(cfg, tokens, images, seq_len) / 1e9
    peak_gflops = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)["gflops"]
    return dict(precision=precision, step_s=seconds / len(rows), tokens_per_s=tokens, images_per_s=images,
                achieved_gflops=achieved_gflops, peak_gflops=peak_gflops, mfu=achieved_gflops / peak_gflops)


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
