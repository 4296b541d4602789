"""Pre-training at scale, on this machine: does the loader keep up, and how does a step grow with its shape?

`mm1lab bench --only loader,scaling` (not part of the default suite) measures:
- loader: samples/s of the trainer's own data path (`GlobalBatches` over `build_data`, the DataLoader workers of
  `data.num_workers`) per worker count, with a cold render cache (every ShapeWorld image rendered, what a first
  epoch pays: rendering-bound) and a warm one (blocks read back memory-mapped, what `mm1lab data prerender` buys),
  at the demo config (tiny, 64 px) and at ablation-base shapes (336 px, 144 image tokens, 2048-token rows). Against
  it, the model's consumption: measured for the demo (a training step of the tiny model on a loader batch), and
  for ablation-base the samples/s one H100 consumes at the issue's 40% MFU target, from `mm1lab.flops` (a CPU step
  of a 1.6B model says nothing about a GPU's appetite). Only ratios measured side by side mean much on a busy box.
- scaling: step time (forward + backward + AdamW, tiny model, one row) against sequence length and against images
  per row, and the CPU cost of document-masked packing (a boolean SDPA mask) against letting packed documents
  attend to each other (`segment_ids=None`, what packing did before issue 16). The attention crossover, where
  attention FLOPs equal the rest of a token's, is also computed for every preset from `mm1lab.flops`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from mm1lab.config import MM1Config

H100_BF16_DENSE_FLOPS = 989e12   # H100/H200 SXM dense bf16 peak (the same tensor cores)
TARGET_MFU = 0.40                # issue 16's target

# name: (TrainConfig dict, worker counts); the demo is configs/pretrain-tiny.yaml, ablation-base its GPU recipe's
# shapes (configs/pretrain-ablation-base-gpu.yaml) with data.shards small enough to warm up quickly.
LOADER_CONFIGS: dict[str, dict[str, Any]] = {
    "demo": dict(model="tiny", batch_size=16, data=dict(source="shapeworld", difficulty="easy", seq_len=256,
                                                        pack=True, shards=32)),
    "ablation-base": dict(model="ablation-base", batch_size=8, data=dict(source="shapeworld", difficulty="hard",
                                                                         seq_len=2048, pack=True, shards=16)),
}


def _loader(cfg, model_cfg: MM1Config, workers: int):
    from mm1lab.train.data import GlobalBatches, build_data

    micro = cfg.batch_size
    return GlobalBatches(*build_data(cfg, model_cfg), micro=micro, accum=1, num_shards=cfg.data.shards,
                         workers=workers)


def loader_rate(cfg, model_cfg: MM1Config, *, workers: int, steps: int) -> tuple[float, dict[str, Any]]:
    """(samples/s over `steps` micro-batches after the first, that first batch) of the trainer's data path."""
    batches = _loader(cfg, model_cfg, workers)
    first = batches.next_step()[0]          # worker start-up and the first renders: not throughput
    start = time.perf_counter()
    for _ in range(steps):
        batches.next_step()
    return steps * cfg.batch_size / (time.perf_counter() - start), first


def _train_step(model, opt, batch: dict[str, Any], *, segments: bool = True) -> Callable[[], None]:
    def step() -> None:
        out = model(batch["input_ids"], images=batch["images"], labels=batch["labels"],
                    attention_mask=batch["attention_mask"],
                    segment_ids=batch.get("segment_ids") if segments else None, return_logits=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _best(step: Callable[[], None], repeats: int) -> float:
    """The fastest of `repeats` calls after a warm-up call."""
    step()   # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def loader_bench(*, quick: bool = False, workers=(0, 1, 2), log=None) -> dict[str, Any]:
    """Per config in LOADER_CONFIGS: loader samples/s per worker count (cold and warm cache) and the consumption."""
    from mm1lab import flops
    from mm1lab.model import MM1Model
    from mm1lab.train import TrainConfig

    say = log or (lambda msg: None)
    names = ("demo",) if quick else tuple(LOADER_CONFIGS)
    out: dict[str, Any] = {"workers": list(workers), "threads": torch.get_num_threads()}
    previous = os.environ.get("MM1LAB_CACHE")
    try:
        for name in names:
            cfg = TrainConfig.from_dict(LOADER_CONFIGS[name])
            model_cfg = cfg.model_config()
            steps = 2 if quick else (30 if name == "demo" else 6)
            row: dict[str, Any] = {"micro_batch": cfg.batch_size, "seq_len": cfg.data.seq_len,
                                   "resolution": model_cfg.vision.image_size, "image_tokens": model_cfg.image_tokens}
            for w in workers:
                with tempfile.TemporaryDirectory() as cache:
                    os.environ["MM1LAB_CACHE"] = cache   # a fresh cache: cold, then the same one warm
                    say(f"loader: {name}, {w} workers, cold cache")
                    row[f"cold_workers{w}"], batch = loader_rate(cfg, model_cfg, workers=w, steps=steps)
                    say(f"loader: {name}, {w} workers, warm cache")
                    row[f"warm_workers{w}"], _ = loader_rate(cfg, model_cfg, workers=w, steps=steps)
            images = 0 if batch["images"] is None else batch["images"].shape[0]
            row["images_per_sample"] = images / cfg.batch_size
            no_images = {"images": torch.empty(0)} if not images else {}
            per_sample = flops.batch_flops(model_cfg, {**batch, **no_images}) / cfg.batch_size
            row["train_flops_per_sample"] = per_sample
            row["h100_samples_per_s_at_target_mfu"] = TARGET_MFU * H100_BF16_DENSE_FLOPS / per_sample
            if name == "demo":
                say("loader: demo model's training step")
                torch.manual_seed(0)
                model = MM1Model(model_cfg)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                seconds = _best(_train_step(model, opt, batch), repeats=2 if quick else 5)
                row["train_samples_per_s"] = cfg.batch_size / seconds
            out[name] = row
    finally:
        if previous is None:
            os.environ.pop("MM1LAB_CACHE", None)
        else:
            os.environ["MM1LAB_CACHE"] = previous
    return out


def scaling_model(max_seq_len: int) -> MM1Config:
    """The tiny preset with room for `max_seq_len` tokens."""
    d = MM1Config.preset("tiny").to_dict()
    d["lm"]["max_seq_len"] = max_seq_len
    return MM1Config.from_dict(d)


def row_batch(cfg: MM1Config, *, seq_len: int, images: int, documents: int = 1, rows: int = 1,
              seed: int = 0) -> dict[str, Any]:
    """`rows` rows of `seq_len` tokens: `images` images' placeholders at the front of each row, random text after,
    split into `documents` equal packed documents (`segment_ids`)."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.image_tokens
    ids = torch.randint(8, cfg.lm.vocab_size, (rows, seq_len), generator=g)
    ids[:, :images * k] = cfg.image_token_id
    segment_ids = 1 + torch.arange(seq_len) * documents // seq_len
    v = cfg.vision
    return dict(input_ids=ids, labels=ids.clone(), attention_mask=torch.ones(rows, seq_len, dtype=torch.bool),
                segment_ids=segment_ids.expand(rows, seq_len).contiguous(),
                images=torch.randn(rows * images, v.channels, v.image_size, v.image_size, generator=g)
                if images else None)


def scaling_bench(*, quick: bool = False, log=None) -> dict[str, Any]:
    """Step time vs sequence length and images per row (tiny model), the document mask's cost, attention crossovers.

    Every shape is timed once per round, rounds interleaved, and the median taken, so a load that comes and goes
    on a shared machine falls on every shape alike.
    """
    from mm1lab import flops
    from mm1lab.model import MM1Model

    say = log or (lambda msg: None)
    lengths = (128, 256, 512) if quick else (256, 512, 1024, 2048, 4096)
    counts = (0, 2) if quick else (0, 1, 2, 4, 8, 16)
    fixed, mask_lengths = (256, (256,)) if quick else (1024, (256, 1024))
    cfg = scaling_model(max(lengths))
    torch.manual_seed(0)
    model = MM1Model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps: dict[tuple, Callable[[], None]] = {}
    for n in lengths:
        steps["seq_len", n] = _train_step(model, opt, row_batch(cfg, seq_len=n, images=0), segments=False)
    for m in counts:
        steps["images", m] = _train_step(model, opt, row_batch(cfg, seq_len=fixed, images=m), segments=False)
    for n in mask_lengths:   # 4 rows of 8 packed documents each: masked vs attending across documents
        batch = row_batch(cfg, seq_len=n, images=1, documents=8, rows=4)
        steps["masked", n] = _train_step(model, opt, batch)
        steps["unmasked", n] = _train_step(model, opt, batch, segments=False)
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    rounds = 1 if quick else 5
    for r in range(rounds + 1):   # round 0 warms up
        say(f"scaling: round {r} of {rounds}")
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if r:
                times[key].append(time.perf_counter() - start)
    med = {key: statistics.median(t) for key, t in times.items()}
    out: dict[str, Any] = {"model": "tiny", "threads": torch.get_num_threads(), "rounds": rounds,
                           "images_seq_len": fixed}
    out["seq_len"] = {n: dict(step_s=med["seq_len", n], us_per_token=1e6 * med["seq_len", n] / n,
                              flops_per_token=flops.flops_per_token(cfg, n)) for n in lengths}
    out["images"] = {m: dict(step_s=med["images", m]) for m in counts}
    out["document_mask"] = {n: dict(masked_s=med["masked", n], unmasked_s=med["unmasked", n],
                                    cost=med["masked", n] / med["unmasked", n]) for n in mask_lengths}
    out["attention_crossover_tokens"] = {name: crossover(MM1Config.preset(name))
                                         for name in ("tiny", "ablation-base", "mm1-3b")}
    out["image_cost_in_tokens"] = {name: flops.flops_per_image(c) / flops.flops_per_token(c, 2048)
                                   for name in ("tiny", "ablation-base", "mm1-3b")
                                   for c in (MM1Config.preset(name),)}
    return out


def crossover(cfg: MM1Config) -> float:
    """The row length at which a token's attention FLOPs equal the rest of its FLOPs (`mm1lab.flops`, causal)."""
    from mm1lab import flops

    base = flops.flops_per_token(cfg, 0)
    return base / (flops.flops_per_token(cfg, 1) - base)


def _f(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def format_pretrain(results: dict[str, Any]) -> list[str]:
    """Markdown lines for the `loader` and `scaling` sections of `results` (empty when neither ran)."""
    lines: list[str] = []
    if "loader" in results:
        d = results["loader"]
        ws = d["workers"]
        lines += ["## Loader vs consumption (the trainer's data path, samples/s)", "",
                  "| config | cache | " + " | ".join(f"{w} worker{'s' * (w != 1)}" for w in ws)
                  + " | 1 -> 2 workers | consumption |",
                  "| --- | --- | " + " | ".join("---" for _ in ws) + " | --- | --- |"]
        for name in (n for n in LOADER_CONFIGS if n in d):
            r = d[name]
            need = (f"{_f(r['train_samples_per_s'])} (tiny model, CPU, measured)" if "train_samples_per_s" in r
                    else f"{_f(r['h100_samples_per_s_at_target_mfu'])} per H100 at {TARGET_MFU:.0%} MFU (from FLOPs)")
            for cache in ("cold", "warm"):
                rates = [r[f"{cache}_workers{w}"] for w in ws]
                gain = (f"{r[f'{cache}_workers2'] / r[f'{cache}_workers1']:.2f}x"
                        if 1 in ws and 2 in ws else "-")
                lines.append(f"| {name} ({r['resolution']} px, {r['seq_len']} tok, micro {r['micro_batch']}, "
                             f"{r['images_per_sample']:.2g} img/sample) | {cache} | "
                             + " | ".join(_f(x) for x in rates) + f" | {gain} | {need} |")
        lines.append("")
    if "scaling" in results:
        s = results["scaling"]
        lines += [f"## Step time vs shape ({s['model']} model, one row, forward + backward + AdamW, median of "
                  f"{s.get('rounds', 1)} interleaved rounds)", "",
                  "| tokens | step s | us/token | FLOPs/token |", "| --- | --- | --- | --- |"]
        lines += [f"| {n} | {_f(r['step_s'])} | {_f(r['us_per_token'])} | {_f(r['flops_per_token'])} |"
                  for n, r in s["seq_len"].items()]
        lines += ["", f"| images in a {s['images_seq_len']}-token row | step s |", "| --- | --- |"]
        lines += [f"| {m} | {_f(r['step_s'])} |" for m, r in s["images"].items()]
        lines += ["", "| packed row | masked s | unmasked s | mask cost |", "| --- | --- | --- | --- |"]
        lines += [f"| 4 x {n} tokens, 8 documents each | {_f(r['masked_s'])} | {_f(r['unmasked_s'])} "
                  f"| {r['cost']:.2f}x |" for n, r in s["document_mask"].items()]
        lines += ["", "Attention crossover (row length where attention FLOPs equal the rest of a token's): "
                  + ", ".join(f"{k} {_f(v)}" for k, v in s["attention_crossover_tokens"].items())
                  + "; one image costs as many FLOPs as this many 2048-row tokens: "
                  + ", ".join(f"{k} {_f(v)}" for k, v in s["image_cost_in_tokens"].items()) + ".", ""]
    return lines
