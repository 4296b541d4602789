"""The trainer's side of the data: this rank's micro-batches of each global batch, read from its own shards, with
DataLoader workers and exact resume.

The samples of a run are fixed by the data and `data.shards` (S), not by how many ranks and workers read them:
global sample i is sample i // S of shard i % S (`source.read_shard(s, S, state)`), and global micro-batch g holds
samples g*m ... g*m + m - 1 (m = micro_batch_size). Rank r of R runs global micro-batches r, r + R, r + 2R, ...;
with W DataLoader workers, worker w makes every W-th of those (the DataLoader hands them out round robin, in
order). When S is a multiple of m x R x W, every shard belongs to exactly one rank and worker, which is the only
process that reads it: no rank reads the whole stream, and a run on any number of ranks and workers trains on
the samples a single process trains on at the same global batch (Mosaic's StreamingDataset fixes its "canonical
nodes" for the same reason).

Resume is exact: each micro-batch carries the state of every shard right after its samples (`data_state`); the
main process keeps the states of the micro-batches it has consumed, so prefetched ones do not count. At a step
boundary, the checkpoint holds {num_shards, samples consumed, every shard's state} (gathered from all ranks), and
a resumed run reads each shard on from there. The collator follows the agreed contract: input_ids, labels (-100:
no loss, not shifted), attention_mask, images (N, 3, H, W) or None, stream, skipped.

A source without `read_shard` (a stream you bring with state_dict / load_state_dict) is read whole by every rank,
which keeps its slice of each global batch; it cannot use workers.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mm1lab.config import IGNORE, MM1Config
from mm1lab.train import distributed as D


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

    def read_shard(self, shard: int, num_shards: int, state: dict[str, int] | None = None):
        """(item, state after it) for items shard, shard + num_shards, ... (global sample i is item i)."""
        t = state["next"] if state else 0
        while True:
            t += 1
            yield self.item(shard + (t - 1) * num_shards), {"next": t}

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


class RankMicroBatches(IterableDataset):
    """Rank `rank`'s micro-batches from its `first` on (its k-th is global micro-batch k*world + rank), collated from
    the shards it owns; under a DataLoader with W workers, worker w makes the rank's micro-batches w, w + W, ...
    Each batch carries `data_state`: {shard: state after the samples it took}. Finite data ends when every shard
    this worker owns is exhausted (the last micro-batches may be short)."""

    def __init__(self, source: Any, collate: Callable[[list[Any]], dict[str, Any]], *, micro: int, num_shards: int,
                 rank: int, world: int, first: int, states: dict[int, Any]):
        self.source, self.collate, self.micro, self.num_shards = source, collate, micro, num_shards
        self.rank, self.world, self.first, self.states = rank, world, first, states

    def shards_of(self, k: int) -> list[int]:
        """The shard of each sample of this rank's k-th micro-batch."""
        g = k * self.world + self.rank
        return [(g * self.micro + j) % self.num_shards for j in range(self.micro)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = range(self.first + worker, self.first + worker + workers * self.num_shards, workers)
        owned = {s for k in mine for s in self.shards_of(k)}   # the pattern repeats after num_shards micro-batches
        readers: dict[int, Iterator[Any]] = {}
        done: set[int] = set()
        k = self.first + worker
        while len(done) < len(owned):
            items, states = [], {}
            for s in self.shards_of(k):
                if s in done:
                    continue
                if s not in readers:
                    readers[s] = iter(self.source.read_shard(s, self.num_shards, self.states.get(s)))
                item = next(readers[s], None)
                if item is None:
                    done.add(s)
                    continue
                items.append(item[0])
                states[s] = item[1]
            if items:
                batch = self.collate(items)
                batch["data_state"] = states
                yield batch
            k += workers


class GlobalBatches:
    """Per step: this rank's `accum` micro-batches of the global batch, in the order a single process would see.

    With a sharded source (`read_shard`), `num_shards` shards read through `workers` DataLoader workers (0: in this
    process). `state_dict()` is the data state at the last step boundary; it gathers every rank's shards, so under
    torchrun every rank must call it.
    """

    def __init__(self, source: Any, collate: Callable[[list[Any]], dict[str, Any]], *, micro: int, accum: int,
                 rank: int = 0, world: int = 1, num_shards: int = 1, workers: int = 0):
        self.source, self.collate = source, collate
        self.micro, self.accum, self.rank, self.world = micro, accum, rank, world
        self.num_shards, self.workers = num_shards, workers
        self.sharded = hasattr(source, "read_shard")
        readers = world * max(1, workers)
        if not self.sharded and workers:
            raise ValueError(f"data.num_workers={workers}: this source ({type(source).__name__}) has no read_shard(), "
                             "so every rank reads it whole in this process; use data.num_workers=0")
        if self.sharded and readers > 1 and num_shards % (micro * readers):
            raise ValueError(f"data.shards={num_shards} must be a multiple of micro_batch_size x ranks x workers = "
                             f"{micro} x {world} x {max(1, workers)} = {micro * readers}, so that every shard is read "
                             f"by one rank and worker; set data.shards to {micro * readers * 8} for example")
        self._iter: Iterator[Any] | None = None
        self.samples = 0                              # global samples consumed at the last step boundary
        self.loaded: dict[int, Any] = {}              # shard states from the checkpoint
        self.mine: dict[int, Any] = {}                # shard states this rank advanced since
        self._state = None if self.sharded else source.state_dict()

    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        if not self.sharded:
            return self._sliced()
        ds = RankMicroBatches(self.source, self.collate, micro=self.micro, num_shards=self.num_shards,
                              rank=self.rank, world=self.world, first=self.samples // (self.micro * self.world),
                              states={**self.loaded, **self.mine})
        if not self.workers:
            return iter(ds)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # the workers tokenize; no thread pool per fork
        return iter(DataLoader(ds, batch_size=None, num_workers=self.workers, prefetch_factor=4,
                               pin_memory=torch.cuda.is_available()))

    def _sliced(self) -> Iterator[dict[str, Any]]:
        """The legacy path: every rank reads the whole stream and collates its slice of each global batch."""
        it = iter(self.source)
        while True:
            for r in range(self.world):
                items = list(itertools.islice(it, self.micro))
                if len(items) < self.micro:
                    return
                if r == self.rank:
                    yield self.collate(items)

    def next_step(self) -> list[dict[str, Any]]:
        """Draw one global batch and return this rank's micro-batches (`accum` of them)."""
        if self._iter is None:
            self._iter = self._micro_batches()
        out, states = [], {}
        for _ in range(self.accum):
            batch = next(self._iter, None)
            if batch is None:
                raise RuntimeError(f"the data ran out after {self.samples} samples (finite streams, e.g. "
                                   "data.epochs set); train fewer steps or read more epochs")
            states.update(batch.pop("data_state", {}))
            out.append(batch)
        self.mine.update(states)
        self.samples += self.micro * self.accum * self.world
        if not self.sharded:
            self._state = self.source.state_dict()
        return out

    def state_dict(self) -> dict[str, Any]:
        """The data state at the last step boundary (collective under torchrun: shards are gathered from all ranks)."""
        if not self.sharded:
            return self._state
        shards = dict(self.loaded)
        for part in D.all_gather_object(self.mine):
            shards.update(part)
        return {"num_shards": self.num_shards, "samples": self.samples, "shards": shards}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.sharded:
            self.source.load_state_dict(state)
            self._state, self._iter = state, None   # a fresh iterator starts where the state says
            return
        if "num_shards" not in state:
            raise ValueError("this checkpoint's data state predates sharded loading (issue 16): resume it with the "
                             "mm1lab that wrote it, or start the run afresh")
        if state["num_shards"] != self.num_shards:
            raise ValueError(f"the checkpoint's data was read in {state['num_shards']} shards, this run has "
                             f"data.shards={self.num_shards}; set data.shards={state['num_shards']} to resume it")
        step_samples = self.micro * self.accum * self.world
        if state["samples"] % (self.micro * self.world):
            raise ValueError(f"the checkpoint stopped after {state['samples']} samples, which does not split into "
                             f"micro-batches of {self.micro} x {self.world} ranks (global batch {step_samples})")
        self.samples, self.loaded, self.mine, self._iter = int(state["samples"]), dict(state["shards"]), {}, None


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
