"""How fast stage 0 trains on one device: images/s and MFU of CLIP pre-training, the model alone and end to end.

    python -m mm1lab.stage0.throughput --model clip-l14-336 --out runs/throughput    # a GPU (docs/benchmarks.md)
    python -m mm1lab.stage0.throughput --smoke                                       # clip-tiny, seconds, anywhere

Two figures, so that the data pipeline's share shows:
- model: AdamW steps (bf16 autocast) on a pool of real ShapeWorld caption batches already on the device, eager
  (and compiled, last: compilation takes longest). This is what the model and its kernels can do.
- trainer: `mm1lab train` of the same model for `--seconds`, its DataLoader workers rendering the scenes beside it
  (eager). This is what a run gets.

MFU = model FLOP/s / the matmul peak of the same dtype measured in the same process (`matmul_peak`). The FLOPs of a
step are counted by torch's FlopCounterMode on one forward pass of a real batch, x3 for training (PaLM's convention:
the backward pass costs twice the forward), so the count covers both towers, their attention and the b x b logits.
The pool's captions are padded to the text tower's full length and the trainer's to each batch's longest, so the
trainer's MFU, counted with the pool's FLOPs per pair, can be slightly high (clip-l14-336's text tower is about 5%
of a pair's FLOPs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mm1lab.bench.machine import matmul_peak

# The stage-0 CLIP config's mixture (configs/stage0-clip-tiny.yaml): dense and plain captions, some with signs.
MIXTURE = {"dense": 0.4, "caption": 0.2, "medium:dense": 0.15, "medium:caption": 0.05, "medium:sign": 0.2}


def train_config(model: str, *, batch_size: int, workers: int, out_dir: str, device: str, steps: int = 10**6,
                 precision: str = "bf16") -> Any:
    """The TrainConfig of a CLIP throughput run: ShapeWorld captions, no checkpoint until the end."""
    from mm1lab.train.config import TrainConfig

    return TrainConfig.from_dict(dict(
        stage="clip", name=f"throughput-{model}", out_dir=out_dir, model=model, steps=steps, batch_size=batch_size,
        precision=precision, device=device, optim=dict(lr=2e-4, warmup_steps=50),
        data=dict(source="shapeworld", difficulty="easy", mixture=MIXTURE, num_workers=workers,
                  shards=batch_size * max(workers, 1)),
        checkpoint=dict(every=10**9, keep=1, resume=False), track=dict(log_every=10, progress=False,
                                                                        tensorboard=False)))


def step_flops(model: nn.Module, images: torch.Tensor, ids: torch.Tensor) -> float:
    """Training FLOPs of one step of `model` on (images, ids): counted forward FLOPs x 3."""
    # The math SDPA backend is plain matmuls, which the counter sees whatever kernel a real run picks.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images, ids)
    return 3.0 * counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: nn.Module, pool: list[tuple[torch.Tensor, torch.Tensor]], *, steps: int, warmup: int,
               precision: str = "bf16") -> dict[str, float]:
    """Seconds per AdamW step over `pool`'s batches (cycled) after `warmup` steps; the warm-up's seconds too (it
    holds torch.compile's compilation)."""
    device = pool[0][0].device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    def step(i: int) -> None:
        images, ids = pool[i % len(pool)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(images, ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return dict(step_s=seconds, images_per_s=len(pool[0][0]) / seconds, warmup_s=warm)


def make_pool(cfg: Any, batches: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` real caption batches of the run's data, rendered here and moved to `device`, captions padded to the
    text tower's full length so every batch has one shape (one compilation)."""
    from mm1lab.train.objectives import OBJECTIVES

    objective = OBJECTIVES["clip"](cfg.model_config())
    text = objective.model_cfg.text
    source, collate = objective.data(cfg)
    samples = iter(source.read_shard(0, 1))
    pool = []
    for _ in range(batches):
        batch = collate([next(samples)[0] for _ in range(cfg.batch_size)])
        ids = torch.full((len(batch["ids"]), text.max_len), text.pad_token_id, dtype=torch.long)
        ids[:, : batch["ids"].shape[1]] = batch["ids"]
        pool.append((batch["images"].to(device), ids.to(device)))
    return pool


def model_throughput(cfg: Any, device: torch.device, *, steps: int, mode: str = "eager") -> dict[str, Any]:
    """Images/s, FLOPs and peak memory of CLIP steps on pre-rendered batches, `mode` "eager" or "compiled"."""
    from mm1lab.train.objectives import OBJECTIVES

    torch.manual_seed(0)
    model = OBJECTIVES["clip"](cfg.model_config()).build().to(device)
    pool = make_pool(cfg, 4, device)
    flops = step_flops(model, *pool[0])
    if mode == "compiled":
        model.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = time_steps(model, pool, steps=steps, warmup=3, precision=cfg.precision)
    result.update(batch_size=cfg.batch_size, text_len=pool[0][1].shape[1], step_flops=flops,
                  params=sum(p.numel() for p in model.parameters()), achieved_tflops=flops / result["step_s"] / 1e12)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def trainer_throughput(cfg: Any, seconds: float) -> dict[str, Any]:
    """Train `cfg` through the real trainer for about `seconds` (then stop and checkpoint, as Ctrl-C would);
    images/s over the records after the first (which holds start-up and the workers' first renders)."""
    from mm1lab.train.trainer import Trainer

    start = time.perf_counter()

    def stop_when_due(record: dict[str, Any]) -> None:
        if time.perf_counter() - start > seconds:
            trainer.stop_requested = True

    trainer = Trainer(cfg, on_log=stop_when_due)
    result = trainer.run()
    from mm1lab.train.tracking import read_metrics

    rows = read_metrics(result.run_dir)
    spans = [(r, r["step"] - prev["step"]) for prev, r in zip(rows, rows[1:])]   # a record averages its steps
    elapsed = sum(r["step_time"] * n for r, n in spans)
    images = sum(r["images_per_s"] * r["step_time"] * n for r, n in spans)
    return dict(steps=result.step, wall_s=time.perf_counter() - start,
                images_per_s=images / max(elapsed, 1e-9), first_loss=rows[0]["loss"], last_loss=rows[-1]["loss"],
                last_batch_accuracy=rows[-1].get("batch_accuracy"), workers=cfg.data.num_workers)


def run(model: str = "clip-l14-336", *, batch_size: int = 64, steps: int = 20, seconds: float = 150.0,
        workers: int = 12, out: str = "runs/throughput", compile: bool = True, device: str = "auto") -> dict[str, Any]:
    """The matmul peak, the eager model, the trainer run and the compiled model, in that order (compilation takes
    longest and is likeliest to fail, so it goes last), as one JSON-able dict. `out`/throughput.json is rewritten
    after each part, so a run stopped by a time limit keeps what it measured."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    peak = matmul_peak(torch.bfloat16, (4096, 8192) if dev.type == "cuda" else (512, 1024), device=dev)["gflops"]
    report: dict[str, Any] = dict(model=model, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                                  "cpu", torch=torch.__version__, bf16_matmul_peak_tflops=peak / 1e3)
    cfg = train_config(model, batch_size=batch_size, workers=workers, out_dir=out, device=str(dev))
    Path(out).mkdir(parents=True, exist_ok=True)

    def save(part: str, result: dict[str, Any], flops_per_image: float) -> None:
        result["mfu"] = result["images_per_s"] * flops_per_image / (peak * 1e9)
        report[part] = result
        (Path(out) / "throughput.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({part: result}), flush=True)

    eager = model_throughput(cfg, dev, steps=steps)
    per_image = eager["step_flops"] / batch_size
    save("eager", eager, per_image)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if seconds > 0:
        save("trainer", trainer_throughput(cfg, seconds), per_image)
    if compile:
        try:
            save("compiled", model_throughput(cfg, dev, steps=steps, mode="compiled"), per_image)
        except Exception as exc:   # a compiler failure is a finding to record, not a reason to lose the rest
            report["compiled_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            (Path(out) / "throughput.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short table of the figures."""
    e = report["eager"]
    lines = [f"{report['model']} on {report['device']} (torch {report['torch']}), bf16 matmul peak "
             f"{report['bf16_matmul_peak_tflops']:.1f} TFLOP/s; batch {e['batch_size']}, "
             f"{e['step_flops'] / e['batch_size'] / 1e9:,.1f} GFLOP per pair (training)",
             "| run | images/s | MFU | notes |", "| --- | --- | --- | --- |"]
    for mode in ("eager", "compiled"):
        if mode in report:
            r = report[mode]
            memory = f", peak memory {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""
            lines.append(f"| model, {mode} | {r['images_per_s']:.1f} | {r['mfu']:.3f} | {r['step_s']:.3f} s/step, "
                         f"warm-up {r['warmup_s']:.0f} s{memory} |")
    if "trainer" in report:
        t = report["trainer"]
        lines.append(f"| trainer, eager, {t['workers']} workers | {t['images_per_s']:.1f} | {t['mfu']:.3f} | "
                     f"{t['steps']} steps in {t['wall_s']:.0f} s, loss {t['first_loss']:.2f} -> "
                     f"{t['last_loss']:.2f} |")
    if "compiled_error" in report:
        lines.append(f"compilation failed: {report['compiled_error'][:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clip-l14-336", help="a CLIP stage-0 preset (default: the ablation base's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model-only mode")
    p.add_argument("--seconds", type=float, default=150, help="trainer run length (0: skip it)")
    p.add_argument("--workers", type=int, default=12, help="the trainer's DataLoader workers")
    p.add_argument("--out", default="runs/throughput")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="clip-tiny, 2 steps, no compile, a few seconds of trainer")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch_size, args.steps, args.seconds, args.workers, args.compile = \
            "clip-tiny", 8, 2, 1.0, 0, False
    report = run(args.model, batch_size=args.batch_size, steps=args.steps, seconds=args.seconds,
                 workers=args.workers, out=args.out, compile=args.compile, device=args.device)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
