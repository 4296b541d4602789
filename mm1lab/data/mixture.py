"""A weighted mixture of data streams as a streaming, sharded, resumable `IterableDataset`.

Shards: the data is read in S shards, and shard s takes items s, s + S, s + 2S, ... of every random-access stream
(`IndexedStream`; in chunks of `chunk` consecutive items when it has one) and its own files of every file stream
(`RecordStream`, see `records.py`), so the shards together read each stream once: no duplicates, no gaps. Which
stream the t-th sample of a shard comes from is a pure function of (seed, shard, t), so a run is deterministic per
seed, and a shard's whole state is {draws, position per stream, counts per stream}: `read_shard(s, S, state)`.

Iterating the dataset itself reads one shard per process and DataLoader worker (R ranks x W workers = S shards,
shard rank * W + worker). The trainer instead fixes S and hands each rank and worker its shards
(`mm1lab.train.data`), so that the samples do not depend on how many ranks and workers read them.

Resuming: every yielded `Sample` carries its shard's state (`sample.state`), the collator returns the latest per
shard in `batch["state"]`, and `LoaderTracker` keeps them (plus skip and stream counts) for the checkpoint:
    tracker.update(batch); ...; ckpt["data"] = tracker.state_dict()
    dataset.load_state_dict(ckpt["data"])   # before building the DataLoader iterator
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mm1lab.data.records import RecordStream, located, uniform
from mm1lab.data.sample import Sample, Skips

__all__ = ["IndexedStream", "LoaderTracker", "MixtureDataset", "RecordStream", "shard_info", "uniform"]


class IndexedStream:
    """A random-access stream: item i is `make(i)` (ShapeWorld generators, in-memory lists). `length=None`: endless.

    chunk: a shard takes `chunk` consecutive items at a time (shard s of S: items s*chunk ... s*chunk + chunk - 1,
    then the same S*chunk further on), so neighbouring items, such as ShapeWorld scenes rendered and cached in
    blocks, are read by one shard.
    """

    def __init__(self, make: Callable[[int], Sample], length: int | None = None, *, chunk: int = 1):
        self.make, self.length, self.chunk = make, length, chunk

    def index(self, shard: int, num_shards: int, t: int) -> int:
        """The item that is the t-th of `shard`."""
        block, offset = divmod(t, self.chunk)
        return (block * num_shards + shard) * self.chunk + offset

    def iterate(self, shard: int, num_shards: int, position: int | None = None,
                **_: Any) -> Iterator[tuple[Callable[[], Sample], int]]:
        """(thunk, position after it) for the items of `shard` from `position` (items taken so far) on."""
        t = position or 0
        while True:
            i = self.index(shard, num_shards, t)
            if self.length is not None and i >= self.length:   # every later item of the shard lies further on
                return
            t += 1
            yield (lambda i=i: located(self.make, i, f"item {i}")), t


def shard_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(shard id, number of shards) for this process and DataLoader worker."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


class MixtureDataset(IterableDataset):
    """Draws each sample from stream `name` with probability proportional to `weights[name]`.

    Finite streams drop out when exhausted; iteration ends when every stream has. Bad records are skipped and
    counted (`sample.skipped` on the next good sample; skips after the last one on a final `Sample.tally`, which
    the collator counts and encodes nothing for), or raise `DataError` when `strict`.

    File streams (`RecordStream`) are read `epochs` times (None: endlessly), with the file order shuffled per
    epoch from `seed` and the records through a `shuffle_buffer` (0: in file order).
    """

    def __init__(self, streams: dict[str, IndexedStream | RecordStream], weights: dict[str, float] | None = None, *,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, strict: bool = False,
                 shuffle_buffer: int = 0, epochs: int | None = 1):
        weights = weights or {name: 1.0 for name in streams}
        unknown = sorted(set(weights) - set(streams))
        if unknown:
            raise ValueError(f"weights name streams {unknown} that are not in streams {sorted(streams)}")
        self.streams = streams
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("every mixture weight is zero")
        self.seed, self.rank, self.world_size, self.strict = seed, rank, world_size, strict
        self.shuffle_buffer, self.epochs = shuffle_buffer, epochs
        self._states: dict[int, dict[str, Any]] = {}

    def fresh_state(self, shard: int) -> dict[str, Any]:
        """The state of a shard that has not started."""
        return {"shard": shard, "draws": 0, "positions": {n: None for n in self.weights},
                "counts": {n: 0 for n in self.weights}}

    def read_shard(self, shard: int, num_shards: int,
                   state: dict[str, Any] | None = None) -> Iterator[tuple[Sample, dict[str, Any]]]:
        """(sample, shard state after it) of shard `shard` of `num_shards`, from `state` (None: the start) on."""
        state = copy.deepcopy(state) if state is not None else self.fresh_state(shard)
        positions, counts, draws = dict(state["positions"]), dict(state["counts"]), state["draws"]
        skips = Skips(strict=self.strict)
        iters = {n: self.streams[n].iterate(shard, num_shards, positions.get(n), seed=f"{self.seed}:{n}",
                                            shuffle_buffer=self.shuffle_buffer, epochs=self.epochs)
                 for n in self.weights}
        active = dict(self.weights)

        def snapshot() -> dict[str, Any]:   # positions are immutable values: shallow copies suffice
            return {"shard": shard, "draws": draws, "positions": dict(positions), "counts": dict(counts)}

        while active:
            u = uniform(self.seed, shard, draws) * sum(active.values())
            draws += 1
            name = next(n for n, acc in zip(active, itertools.accumulate(active.values())) if u < acc)
            item = next(iters[name], None)
            if item is None:
                del active[name]
                continue
            thunk, positions[name] = item
            sample = skips.run(thunk)
            if sample is None:
                continue
            counts[name] += 1
            sample.skipped = dict(Counter(skips.pop_pending()) + Counter(sample.skipped))
            sample.state = snapshot()
            yield sample, sample.state
        pending = skips.pop_pending()
        if pending:   # skips after the last good sample: a content-free tally carries them to the batch
            tally = Sample.tally(pending, snapshot())
            yield tally, tally.state

    def __iter__(self) -> Iterator[Sample]:
        shard, num_shards = shard_info(self.rank, self.world_size)
        for sample, state in self.read_shard(shard, num_shards, self._states.get(shard)):
            self._states[shard] = state   # accurate when iterating in this process (num_workers=0)
            yield sample

    def state_dict(self) -> dict[str, Any]:
        """Shard states seen in this process (use `LoaderTracker` with DataLoader workers)."""
        return {"shards": copy.deepcopy(self._states), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume every shard from `state` (from `state_dict()` or `LoaderTracker.state_dict()`)."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self._states = {int(k): copy.deepcopy(v) for k, v in state["shards"].items()}


class LoaderTracker:
    """Keeps what the trainer needs from batches: latest shard states, total skips by reason, samples per stream."""

    def __init__(self):
        self.shards: dict[int, dict[str, Any]] = {}
        self.skipped: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()

    def update(self, batch: dict[str, Any]) -> None:
        """Fold one collated batch in."""
        self.shards.update({int(k): v for k, v in batch.get("state", {}).items()})
        self.skipped.update(batch.get("skipped", {}))
        self.streams.update(batch.get("stream_counts", {}))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves; `MixtureDataset.load_state_dict` accepts it."""
        return {"shards": copy.deepcopy(self.shards), "skipped": dict(self.skipped), "streams": dict(self.streams)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`."""
        self.shards = {int(k): v for k, v in state["shards"].items()}
        self.skipped, self.streams = Counter(state.get("skipped", {})), Counter(state.get("streams", {}))
