"""Records read from files, per shard: which files a shard reads, in which order, through which shuffle buffer.

A `RecordStream` is a list of files (paths, URLs, `pipe:` commands; see `sources.py`), a `read(file)` that yields
a file's cheap raw records, and a `decode(raw)` that turns one into a `Sample` (or raises `SkipSample`).
`MixtureDataset` reads it in shards, and each shard reads only its own files:

- **Files per shard.** Each epoch the file list is permuted from the seed (a new order every epoch), and shard s of
  S takes files s, s + S, s + 2S, ... of that order. With fewer files than shards, shards share a file and each
  keeps every k-th record of it (k = the number of shards sharing it), so the shards still read each record once.
- **Shuffle buffer.** A shard's records pass through a buffer of `shuffle_buffer` records (WebDataset's
  `shuffle(n)`): once it is full, each new record replaces a seeded random one, which is yielded.
- **Position.** After every yielded record the shard's position is (epoch, file, record) of the next record to
  read, plus the positions of the records in the buffer, in buffer order, and the number of draws. Resuming
  re-reads the raw records from the oldest one in the buffer (no decoding), so a resumed shard yields exactly what
  the uninterrupted one would. Positions are plain tuples and ints: they go into checkpoints as they are.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mm1lab.data.sample import DataError, Sample, SkipSample

Position = tuple[int, int, int]   # (epoch, index of the file in this shard's list for that epoch, record in file)


def uniform(*keys: Any) -> float:
    """A deterministic number in [0, 1) from `keys` (the same on every machine and Python process)."""
    digest = hashlib.blake2b(":".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def located(fn: Callable[[Any], Sample], arg: Any, where: str) -> Sample:
    """Call a decoder; an unexpected error becomes a DataError that says where (never a bare crash mid-epoch)."""
    try:
        return fn(arg)
    except (SkipSample, DataError):
        raise
    except Exception as exc:
        raise DataError(f"{where}: {type(exc).__name__}: {exc} (unexpected; please report it with this record)") \
            from exc


def where(raw: Any, index: Any) -> str:
    """The location a reader put in a raw record (a 'file:line' string), else the record's position."""
    parts = raw if isinstance(raw, tuple) else (raw,)
    for part in parts:
        if isinstance(part, tuple):
            part = part[0] if part else None
        if isinstance(part, str) and ":" in part:
            return part
    return f"record {index}"


def _raise(skip: SkipSample) -> Sample:
    raise skip


class RecordStream:
    """A sequential stream over records read from files, read shard by shard (see the module docstring).

    read: `read(file)` yields the raw records of one of `files`; with `files=None`, `read()` takes no argument and
        yields every record (one unnamed source, which shards share record by record).
    decode: `decode(raw)` -> `Sample`, or raises `SkipSample`. Only the records a shard keeps are decoded. A raw
        record that is a `SkipSample` (an unreadable file, a truncated tar) is raised as it is, never decoded.
    """

    def __init__(self, read: Callable[..., Iterable[Any]], decode: Callable[[Any], Sample], *,
                 files: Iterable[str] | None = None):
        self.decode = decode
        self.files: list[Any] = list(files) if files is not None else [None]
        self._read = read if files is not None else (lambda _file: read())

    def assignment(self, shard: int, num_shards: int, epoch: int, seed: str | None) -> list[tuple[Any, int, int]]:
        """(file, stride, offset) that `shard` reads in `epoch`: it keeps records j of the file with
        j % stride == offset. `seed=None` keeps the files' order (reading one stream as written)."""
        order = list(self.files)
        if seed is not None:
            random.Random(f"files:{seed}:{epoch}").shuffle(order)
        if len(order) >= num_shards:
            return [(f, 1, 0) for f in order[shard::num_shards]]
        f = shard % len(order)
        return [(order[f], len(range(f, num_shards, len(order))), shard // len(order))]

    def records(self, shard: int, num_shards: int, start: Position, *, seed: str | None,
                epochs: int | None) -> Iterator[tuple[Position, Any]]:
        """(position, raw record) of `shard` from `start` on, epoch after epoch (`epochs=None`: endlessly)."""
        for epoch in itertools.count(start[0]) if epochs is None else range(start[0], epochs):
            seen = readable = 0
            for f, (file, stride, offset) in enumerate(self.assignment(shard, num_shards, epoch, seed)):
                if (epoch, f) < start[:2]:
                    continue
                for j, raw in enumerate(self._read(file)):
                    if j % stride == offset and (epoch, f, j) >= start:
                        seen, readable = seen + 1, readable + (not isinstance(raw, SkipSample))
                        yield (epoch, f, j), raw
            if not readable and (epoch, 0, 0) >= start:   # a whole epoch without a good record
                if seen and epochs is None:   # only unreadable ones: reading them again would loop forever
                    files = [a[0] for a in self.assignment(shard, num_shards, epoch, seed)]
                    raise DataError(f"shard {shard} of {num_shards} read no good record in epoch {epoch} from its "
                                    f"{len(files)} file(s) {files[:3]}{' ...' if len(files) > 3 else ''}; they are "
                                    "unreadable (see the skips counted as unreadable_source or truncated_tar)")
                return   # no record at all (fewer records than shards sharing a file): the stream ends here

    def iterate(self, shard: int, num_shards: int, position: dict[str, Any] | None = None, *,
                seed: str | None = None, shuffle_buffer: int = 0,
                epochs: int | None = 1) -> Iterator[tuple[Callable[[], Sample], dict[str, Any]]]:
        """(thunk, position after it) for the records of `shard`, through the shuffle buffer; decoding happens
        when a thunk is called. `position` is one this method yielded (resume), or None (start)."""
        position = position or {"read": (0, 0, 0), "buffer": (), "pops": 0}
        read_at: Position = tuple(position["read"])
        wanted = [tuple(p) for p in position["buffer"]]      # the buffer to restore, in buffer order
        wanted_set = set(wanted)
        pops, size = int(position["pops"]), max(1, shuffle_buffer)
        found: dict[Position, Any] = {}
        buffer: list[tuple[Position, Any]] | None = None if wanted else []

        def restore() -> list[tuple[Position, Any]]:
            missing = [p for p in wanted if p not in found]
            if missing:
                raise DataError(f"cannot resume shard {shard}: records {missing[:3]} of its shuffle buffer are gone; "
                                "did the files change since the checkpoint?")
            return [(p, found[p]) for p in wanted]

        def pop() -> tuple[Callable[[], Sample], dict[str, Any]]:
            nonlocal pops
            k = int(uniform(seed, shard, "pop", pops) * len(buffer))
            pops += 1
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            pos, raw = buffer.pop()
            state = {"read": read_at, "buffer": tuple(p for p, _ in buffer), "pops": pops}
            return (lambda: _raise(raw) if isinstance(raw, SkipSample) else
                    located(self.decode, raw, where(raw, pos))), state

        for pos, raw in self.records(shard, num_shards, min([read_at, *wanted]), seed=seed, epochs=epochs):
            if pos < read_at:   # re-read while resuming: only the buffered records are kept
                if pos in wanted_set:
                    found[pos] = raw
                continue
            if buffer is None:
                buffer = restore()
            buffer.append((pos, raw))
            read_at = (pos[0], pos[1], pos[2] + 1)
            if len(buffer) >= size:
                yield pop()
        if buffer is None:
            buffer = restore()
        while buffer:
            yield pop()
