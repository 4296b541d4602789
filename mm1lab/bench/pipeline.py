"""Samples/s of the pre-training data pipeline: render ShapeWorld + tokenize + collate, through a DataLoader.

Uses `mm1lab.data` as a trainer does: the MM1 45:45:10 mixture (`shapeworld_mixture`), the `Collator` for the
model config, DataLoader with 0 and 2 workers, timed by `mm1lab.data.bench.loader_rate` (the timing `mm1lab data
bench` uses). Images are rendered every time (no cache), the cost a first epoch pays; `mm1lab data bench` also
measures the warm cache.
"""

from __future__ import annotations

from typing import Any

from mm1lab.config import MM1Config


def pipeline_bench(cfg: MM1Config, *, workers=(0, 2), batch_size: int = 16, batches: int = 20) -> dict[str, Any]:
    """Samples/s per worker count at the config's image size, a fresh uncached mixture for each."""
    from mm1lab.data.bench import loader_rate
    from mm1lab.data.streams import shapeworld_mixture
    from mm1lab.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    result: dict[str, Any] = {"batch_size": batch_size, "batches": batches, "resolution": cfg.vision.image_size}
    for w in workers:
        dataset = shapeworld_mixture("easy", cfg.vision.image_size, cache=False)
        result[f"samples_per_s_workers{w}"] = loader_rate(dataset, cfg, workers=w, batch_size=batch_size,
                                                          batches=batches, tokenizer=tokenizer)
    return result
