"""The one record every stream yields (`Sample`) and the bookkeeping for bad input (`SkipSample`, `Skips`).

Bad input is either skipped and counted by reason (`SKIP_REASONS`), or, in strict mode, raised as `DataError`
naming the file and line/sample. Skip counts travel with the data: a reader attaches the skips it saw to the next
good sample (`Sample.skipped`); skips after a stream's last good sample travel on a content-free `Sample.tally`;
the collator adds its own and returns the total in `batch["skipped"]`, so counts made inside DataLoader worker
processes reach the trainer, and every skip is counted by the end of the epoch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mm1lab.data.prompts import Segment, chat_segments, pretrain_segments

STREAMS = ("caption", "dense", "interleaved", "text", "sft")
TALLY = "tally"   # the stream name of the end-of-stream record that carries the last skips (`Sample.tally`)
# Every reason a record is skipped for, and what it means (docs/robustness.md lists the same table).
SKIP_REASONS = {
    "bad_json": "a record, or a caption shard's .json sidecar, is not valid JSON (or not a JSON object)",
    "bad_text": "bytes that are not UTF-8, or a JSON string holding a lone surrogate (\\ud800)",
    "bad_record": "valid JSON with a missing or wrongly typed field",
    "bad_image": "an image that does not decode fully (truncated, damaged, 0x0, or a format that is not read)",
    "image_too_large": "an image Pillow flags as a decompression bomb (more than 2 x Image.MAX_IMAGE_PIXELS)",
    "missing_image": "an image path that names no file, or a caption sample without an image member",
    "path_outside_root": "an image path with '..', or an absolute one (unless allowed), that could leave the root",
    "truncated_tar": "a tar shard that ends without its end-of-archive marker; counted once for the rest of the shard",
    "unreadable_source": "a shard that cannot be opened or read to its end (missing, a failed download, a pipe: "
                         "command that exits non-zero)",
    "image_count_mismatch": "the number of <image> markers differs from the number of images",
    "empty_text": "no text to learn from (or no assistant answer)",
    "too_long": "more tokens than a row holds, in a stream that is not truncated",
    "too_many_images": "more images than max_images, in a stream that is not truncated",
}


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

    @classmethod
    def tally(cls, skipped: dict[str, int], state: dict[str, Any] | None = None) -> Sample:
        """A content-free sample a stream yields last, carrying the skips seen after its last good sample."""
        return cls(stream=TALLY, segments=[], skipped=dict(skipped), state=state, id="end of stream")

    @property
    def is_tally(self) -> bool:
        """True for the end-of-stream record made by `Sample.tally` (the collator counts it and encodes nothing)."""
        return self.stream == TALLY

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
