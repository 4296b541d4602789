"""The trainer's side of the data: a global sample stream cut into per-rank micro-batches, with exact resume.

Every rank reads the *same* deterministic sample stream and keeps only its slice of each global batch, so a run
on W ranks sees exactly the samples a single process sees at the same global batch: micro-batch j of rank r in a
step is global micro-batch (j * W + r). Decoding the other ranks' samples costs a little (ShapeWorld reads cached
renders), but images are only preprocessed for this rank's slice (the collator runs on the slice).

A source is any iterable of samples with `state_dict()` / `load_state_dict()`; its state is snapshot at step
boundaries, so a checkpoint resumes at the first sample of the next step. The collator follows the agreed
contract: input_ids, labels (-100: no loss, not shifted), attention_mask, images (N, 3, H, W) or None, stream, skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from mm1lab.config import IGNORE, MM1Config


class SyntheticSource:
    """A deterministic stream of learnable, pre-tokenized samples (tests and benchmarks; no tokenizer needed).

    Sample i (seeded by (seed, i)) holds 0 or 1 images (k placeholder ids each) followed by an arithmetic token
    sequence a, a+s, a+2s, ... (mod the vocabulary above the specials), which a small LM learns in a few steps.
    """

    def __init__(self, cfg: MM1Config, *, seq_len: int, seed: int = 0, image_every: int = 2):
        self.cfg, self.seq_len, self.seed, self.image_every = cfg, seq_len, seed, image_every
        self.index = 0
        self.k = cfg.image_tokens
        if seq_len <= self.k + 4:
            raise ValueError(f"synthetic data: seq_len={seq_len} leaves no text after {self.k} image tokens")

    def item(self, i: int) -> dict[str, Any]:
        """Sample i: {ids (n,), labels (n,), images (m, 3, H, W), stream}."""
        cfg, g = self.cfg, torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        low, high = 8, cfg.lm.vocab_size   # ids below 8 are specials
        n_text = int(torch.randint(self.seq_len // 2, self.seq_len - self.k, (1,), generator=g))
        start, stride = torch.randint(low, high, (1,), generator=g), torch.randint(1, 4, (1,), generator=g)
        text = low + (start - low + stride * torch.arange(n_text)) % (high - low)
        with_image = i % self.image_every == 0
        ids = [cfg.bos_token_id] + ([cfg.image_token_id] * self.k if with_image else []) + text.tolist()
        ids = torch.tensor(ids)
        size = cfg.vision.image_size
        images = torch.randn(int(with_image), 3, size, size, generator=g)
        return dict(ids=ids, labels=ids.clone(), images=images, stream="caption" if with_image else "text")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            item = self.item(self.index)
            self.index += 1
            yield item

    def state_dict(self) -> dict[str, int]:
        return dict(index=self.index)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def collate_tokens(items: list[dict[str, Any]], *, pad_id: int = 0) -> dict[str, Any]:
    """Collate pre-tokenized items ({ids, labels, images, stream}) into a contract batch, right-padded."""
    n = max(len(it["ids"]) for it in items)
    input_ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    for b, it in enumerate(items):
        input_ids[b, :len(it["ids"])] = it["ids"]
        labels[b, :len(it["labels"])] = it["labels"]
    lengths = torch.tensor([len(it["ids"]) for it in items])
    images = [it["images"] for it in items if len(it["images"])]
    return dict(input_ids=input_ids, labels=labels, attention_mask=torch.arange(n)[None] < lengths[:, None],
                images=torch.cat(images) if images else None, stream=[it["stream"] for it in items], skipped={})


class GlobalBatches:
    """Per step: this rank's `accum` micro-batches of the global batch, in the order a single process would see.

    `state_dict()` is the source's state at the last step boundary (what a checkpoint must hold).
    """

    def __init__(self, source: Any, collate: Callable[[list[Any]], dict[str, Any]], *, micro: int, accum: int,
                 rank: int = 0, world: int = 1):
        self.source, self.collate = source, collate
        self.micro, self.accum, self.rank, self.world = micro, accum, rank, world
        self._iter: Iterator[Any] | None = None
        self._state = source.state_dict()

    def next_step(self) -> list[dict[str, Any]]:
        """Draw one global batch and return this rank's micro-batches (`accum` of them)."""
        if self._iter is None:
            self._iter = iter(self.source)
        out = []
        for _ in range(self.accum):
            for r in range(self.world):
                items = [next(self._iter) for _ in range(self.micro)]
                if r == self.rank:
                    out.append(self.collate(items))
        self._state = self.source.state_dict()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        self._state, self._iter = state, None   # a fresh iterator starts where the state says


def build_data(cfg, model_cfg: MM1Config) -> tuple[Any, Callable[[list[Any]], dict[str, Any]]]:
    """(source, collate) for `cfg.data` (a TrainConfig's data section)."""
    d = cfg.data
    if d.source == "synthetic":
        return SyntheticSource(model_cfg, seq_len=d.seq_len, seed=d.seed), \
            lambda items: collate_tokens(items, pad_id=model_cfg.pad_token_id)
    from mm1lab.train.shapeworld_data import build_shapeworld  # needs the mm1lab.data mixture
    return build_shapeworld(cfg, model_cfg)


def loss_tokens(batch: dict[str, Any], image_token_id: int) -> torch.Tensor:
    """(b,) number of targets that take loss, counted the way MM1Model counts them (shifted, masked)."""
    labels = batch["labels"].masked_fill(batch["input_ids"] == image_token_id, IGNORE)
    if batch.get("loss_mask") is not None:
        labels = labels.masked_fill(~batch["loss_mask"].bool(), IGNORE)
    if batch.get("attention_mask") is not None:
        labels = labels.masked_fill(~batch["attention_mask"].bool(), IGNORE)
    return (labels[:, 1:] != IGNORE).sum(1)
