"""The one record every stream yields (`Sample`) and the bookkeeping for bad input (`SkipSample`, `Skips`).

Bad input is either skipped and counted by reason, or, in strict mode, raised as `DataError` naming the file and
line/sample. Skip counts travel with the data: a reader attaches the skips it saw to the next good sample
(`Sample.skipped`), the collator adds its own and returns the total in `batch["skipped"]`, so counts made inside
DataLoader worker processes reach the trainer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mm1lab.data.prompts import Segment, chat_segments, pretrain_segments

STREAMS = ("caption", "dense", "interleaved", "text", "sft")
SKIP_REASONS = ("bad_image", "missing_image", "truncated_tar", "bad_json", "bad_record", "image_count_mismatch",
                "empty_text", "too_long", "too_many_images")


class DataError(ValueError):
    """Bad input in strict mode; the message says which file and line/sample, and what was wrong."""


class SkipSample(Exception):
    """Raised while decoding one record: the record is skipped and counted under `reason`."""

    def __init__(self, reason: str, where: str, detail: str = ""):
        super().__init__(f"{where}: {reason}{': ' + detail if detail else ''}")
        self.reason, self.where, self.detail = reason, where, detail


@dataclass
class Sample:
    """One training example: text segments (with `<image>` markers) and the images they refer to, in order."""

    stream: str
    segments: list[Segment]
    images: list[Any] = field(default_factory=list)   # PIL images or uint8 arrays (h, w, 3)
    id: str = ""
    skipped: dict[str, int] = field(default_factory=dict)   # skips seen upstream since the previous sample
    state: dict[str, Any] | None = None                    # mixture state right after this sample

    @classmethod
    def pretrain(cls, stream: str, text: str, images: list[Any] | None = None, id: str = "") -> Sample:
        """A pre-training sample: `<bos>text<eos>`, every text token in the loss."""
        return cls(stream=stream, segments=pretrain_segments(text), images=list(images or []), id=id)

    @classmethod
    def chat(cls, turns: list[dict[str, str]], images: list[Any] | None = None, id: str = "",
             stream: str = "sft") -> Sample:
        """An SFT conversation: only assistant answers are in the loss."""
        return cls(stream=stream, segments=chat_segments(turns), images=list(images or []), id=id)

    @property
    def text(self) -> str:
        """All segments joined (the text the collator tokenizes)."""
        return "".join(t for t, _ in self.segments)


class Skips:
    """Counts skipped records by reason and keeps the first few locations, for logs and error messages.

    `strict=True` turns every skip into a `DataError` at once.
    """

    def __init__(self, *, strict: bool = False, keep: int = 20):
        self.strict, self.keep = strict, keep
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self._pending: Counter[str] = Counter()

    def add(self, skip: SkipSample) -> None:
        """Record one skip (or raise in strict mode)."""
        if self.strict:
            raise DataError(f"{skip} (strict mode; pass strict=False to skip and count such records)")
        self.counts[skip.reason] += 1
        self._pending[skip.reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append(str(skip))

    def run(self, thunk) -> Sample | None:
        """Decode one record (a stream's thunk); a bad one is counted here and gives None."""
        try:
            return thunk()
        except SkipSample as skip:
            self.add(skip)
            return None

    def update(self, counts: dict[str, int]) -> None:
        """Add counts reported elsewhere (e.g. by a batch from a worker)."""
        self.counts.update(counts)

    def pop_pending(self) -> dict[str, int]:
        """Skips since the last call; attach them to the next good sample."""
        pending, self._pending = dict(self._pending), Counter()
        return pending

    def __repr__(self) -> str:
        return f"Skips({dict(self.counts)})"
