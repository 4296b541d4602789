"""A weighted mixture of data streams as a streaming, sharded, resumable `IterableDataset`.

Sharding: with R ranks and W DataLoader workers there are R*W shards; shard s = rank*W + worker takes items
s, s + R*W, s + 2*R*W, ... of every stream, so the shards together read each stream once: no duplicates, no gaps.
Which stream the t-th sample of a shard comes from is a pure function of (seed, shard, t), so a run is
deterministic per seed, and a shard's whole state is {draws, positions per stream, counts per stream}.

Resuming: every yielded `Sample` carries its shard's state (`sample.state`), the collator returns the latest per
shard in `batch["state"]`, and `LoaderTracker` keeps them (plus skip and stream counts) for the checkpoint:
    tracker.update(batch); ...; ckpt["data"] = tracker.state_dict()
    dataset.load_state_dict(ckpt["data"])   # before building the DataLoader iterator
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mm1lab.data.sample import DataError, Sample, Skips, SkipSample


def uniform(*keys: Any) -> float:
    """A deterministic number in [0, 1) from `keys` (the same on every machine and Python process)."""
    digest = hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class IndexedStream:
    """A random-access stream: item i is `make(i)` (ShapeWorld generators, in-memory lists). `length=None`: endless."""

    def __init__(self, make: Callable[[int], Sample], length: int | None = None):
        self.make, self.length = make, length

    def iterate(self, start: int, step: int) -> Iterator[Callable[[], Sample]]:
        """Thunks for items start, start+step, ... (decoding happens when a thunk is called)."""
        stop = self.length if self.length is not None else float("inf")
        i = start
        while i < stop:
            yield lambda i=i: _located(self.make, i, f"item {i}")
            i += step


class RecordStream:
    """A sequential stream over records read from files. `records()` yields cheap raw records; `decode(raw)` turns one
    into a `Sample` or raises `SkipSample`. Only the records a shard keeps are decoded."""

    def __init__(self, records: Callable[[], Iterable[Any]], decode: Callable[[Any], Sample]):
        self.records, self.decode = records, decode

    def iterate(self, start: int, step: int) -> Iterator[Callable[[], Sample]]:
        """Thunks for records start, start+step, ..."""
        for n, raw in enumerate(itertools.islice(self.records(), start, None, step)):
            yield lambda raw=raw, n=n: _located(self.decode, raw, _where(raw, start + n * step))


def _where(raw: Any, index: int) -> str:
    """The location a reader put in a raw record (a 'file:line' string), else the record index."""
    parts = raw if isinstance(raw, tuple) else (raw,)
    for part in parts:
        if isinstance(part, tuple):
            part = part[0] if part else None
        if isinstance(part, str) and ":" in part:
            return part
    return f"record {index}"


def _located(fn: Callable[[Any], Sample], arg: Any, where: str) -> Sample:
    """Call a decoder; an unexpected error becomes a DataError that says where (never a bare crash mid-epoch)."""
    try:
        return fn(arg)
    except (SkipSample, DataError):
        raise
    except Exception as exc:
        raise DataError(f"{where}: {type(exc).__name__}: {exc} (unexpected; please report it with this record)") \
            from exc


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
    """

    def __init__(self, streams: dict[str, IndexedStream | RecordStream], weights: dict[str, float] | None = None, *,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, strict: bool = False):
        weights = weights or {name: 1.0 for name in streams}
        unknown = sorted(set(weights) - set(streams))
        if unknown:
            raise ValueError(f"weights name streams {unknown} that are not in streams {sorted(streams)}")
        self.streams = streams
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("every mixture weight is zero")
        self.seed, self.rank, self.world_size, self.strict = seed, rank, world_size, strict
        self._states: dict[int, dict[str, Any]] = {}

    def fresh_state(self, shard: int) -> dict[str, Any]:
        """The state of a shard that has not started."""
        return {"shard": shard, "draws": 0, "positions": {n: 0 for n in self.weights},
                "counts": {n: 0 for n in self.weights}}

    def __iter__(self) -> Iterator[Sample]:
        shard, num_shards = shard_info(self.rank, self.world_size)
        state = copy.deepcopy(self._states.get(shard) or self.fresh_state(shard))
        skips = Skips(strict=self.strict)
        iters = {n: self.streams[n].iterate(shard + state["positions"][n] * num_shards, num_shards)
                 for n in self.weights}
        active = dict(self.weights)
        while active:
            u = uniform(self.seed, shard, state["draws"]) * sum(active.values())
            state["draws"] += 1
            name = next(n for n, acc in zip(active, itertools.accumulate(active.values())) if u < acc)
            thunk = next(iters[name], None)
            if thunk is None:
                del active[name]
                continue
            state["positions"][name] += 1
            sample = skips.run(thunk)
            if sample is None:
                continue
            state["counts"][name] += 1
            sample.skipped = dict(Counter(skips.pop_pending()) + Counter(sample.skipped))
            sample.state = copy.deepcopy(state)
            self._states[shard] = sample.state   # accurate when iterating in this process (num_workers=0)
            yield sample
        pending = skips.pop_pending()
        if pending:   # skips after the last good sample: a content-free tally carries them to the batch
            self._states[shard] = copy.deepcopy(state)
            yield Sample.tally(pending, copy.deepcopy(state))

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
