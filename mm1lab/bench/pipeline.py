"""Samples/s of the pre-training data pipeline: render ShapeWorld + tokenize + collate, through a DataLoader.

Uses `mm1lab.data` as a trainer does: the MM1 45:45:10 mixture (`shapeworld_mixture`), the `Collator` for the
model config, DataLoader with 0 and 2 workers. Images are rendered every time (no cache), the cost a first epoch
pays; `mm1lab data bench` also measures the warm cache.
"""

from __future__ import annotations

import time
from typing import Any

from mm1lab.config import MM1Config


def pipeline_rate(cfg: MM1Config, *, workers: int, batch_size: int = 16, batches: int = 20) -> float:
    """Samples/s through a DataLoader with `workers` workers (the first batch, worker start-up, is not timed)."""
    from torch.utils.data import DataLoader

    from mm1lab.data.collate import Collator
    from mm1lab.data.streams import shapeworld_mixture
    from mm1lab.data.tokenizer import load_tokenizer

    dataset = shapeworld_mixture("easy", cfg.vision.image_size, cache=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=Collator(load_tokenizer(), cfg, max_len=cfg.lm.max_seq_len))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def pipeline_bench(cfg: MM1Config, *, workers=(0, 2), batch_size: int = 16, batches: int = 20) -> dict[str, Any]:
    """Samples/s per worker count; an `error` entry instead when the data package cannot run here."""
    result: dict[str, Any] = {"batch_size": batch_size, "batches": batches, "resolution": cfg.vision.image_size}
    try:
        for w in workers:
            result[f"samples_per_s_workers{w}"] = pipeline_rate(cfg, workers=w, batch_size=batch_size,
                                                               batches=batches)
    except (ImportError, FileNotFoundError, TypeError, AttributeError) as exc:   # data package still in flux
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result
