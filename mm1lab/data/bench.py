"""Throughput of the pre-training pipeline (render + tokenize + collate), beside the tiny model's training speed.

`mm1lab data bench --workers 2` prints samples/s through a DataLoader with workers, cold (every image rendered)
and warm (rendered blocks read from the cache), and the samples/s of a tiny-preset training step on the same
batches, so one can see whether the pipeline keeps up with training.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mm1lab.config import MM1Config
from mm1lab.data.collate import Collator
from mm1lab.data.mixture import MixtureDataset
from mm1lab.data.streams import ShapeWorldStreams, mm1_weights, shapeworld_mixture
from mm1lab.data.tokenizer import MM1Tokenizer, load_tokenizer


def loader_rate(dataset: Dataset, cfg: MM1Config, *, workers: int, batch_size: int, batches: int,
                tokenizer: MM1Tokenizer | None = None) -> float:
    """Samples/s of `dataset` through a DataLoader with `workers` workers and the `Collator` for `cfg`.

    The one loader timing of mm1lab (`mm1lab data bench` and the `data` section of `mm1lab bench`): `batches`
    batches after the first, whose time is worker start-up, not throughput.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=Collator(tokenizer or load_tokenizer(), cfg, max_len=cfg.lm.max_seq_len))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def train_rate(cfg: MM1Config, batch: dict[str, Any], steps: int = 10) -> float:
    """Samples/s of forward + backward + AdamW step of the model for `cfg` on one fixed batch."""
    from mm1lab.model import MM1Model

    torch.manual_seed(0)
    model = MM1Model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        out = model(batch["input_ids"], images=batch["images"], labels=batch["labels"],
                    attention_mask=batch["attention_mask"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()   # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch["input_ids"].shape[0] / (time.perf_counter() - start)


def bench_pipeline(*, workers: int = 2, batch_size: int = 16, batches: int = 100, resolution: int = 64,
                   difficulty: str = "easy", cache: bool = True, preset: str = "tiny",
                   train_steps: int = 10, train_threads: int | None = None) -> dict[str, float]:
    """Measure pipeline samples/s (cold cache and warm cache) and tiny-model training samples/s."""
    cfg = MM1Config.preset(preset)
    tok = load_tokenizer()
    result = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for label, use_cache in (("pipeline_no_cache", False), ("pipeline_warm_cache", True)):
            if label == "pipeline_warm_cache" and not cache:
                continue
            sw = ShapeWorldStreams(difficulty, resolution, cache_dir=cache_dir, cache=use_cache)
            if use_cache:   # render once, ahead of training (what `mm1lab data prerender` does)
                sw.prerender((batches + 2) * batch_size)
            weights = mm1_weights()
            ds = MixtureDataset({n: sw.stream(n) for n in weights}, weights)
            rate = loader_rate(ds, cfg, workers=workers, batch_size=batch_size, batches=batches, tokenizer=tok)
            result[label] = round(rate, 1)
        batch = next(iter(DataLoader(shapeworld_mixture(difficulty, resolution, cache=False), batch_size=batch_size,
                                     collate_fn=Collator(tok, cfg))))
    if train_steps:
        if train_threads:   # on a busy machine, one thread can beat two fighting for the cores
            torch.set_num_threads(train_threads)
        result["train_" + preset] = round(train_rate(cfg, batch, train_steps), 1)
    result.update(workers=workers, batch_size=batch_size, train_threads=torch.get_num_threads(),
                  tokens_per_row=batch["input_ids"].shape[1], images_per_batch=batch["images"].shape[0])
    return result
