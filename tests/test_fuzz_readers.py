"""Fuzzing every reader with damaged copies of the shipped samples (data_samples/): random truncations and byte flips
of each format's file and of the images it refers to. Seeded, about a second per reader.

What must hold for every damaged copy, lenient and strict:
- no hang (each read runs under a timer);
- no exception but a `DataError` that names a file of the corpus (whole-file JSON that does not parse, or strict
  mode's first skip), and never the "unexpected" error a reader bug would give;
- no text with replacement characters, and every image fully decoded;
- a file cut short yields only samples identical to original ones (text and pixels), and a lost sample is counted
  (skip or error). One exception, documented in docs/robustness.md: a JSONL file cut exactly at a line end reads as
  a shorter file, so then the samples must be exactly the first lines';
- a flipped byte alters at most the records it sits in (a byte inside a caption or a JPEG's entropy-coded data
  has no checksum to betray it), and a sample that vanishes is counted.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mm1lab.data.eval_formats import read_coco_captions, read_vqav2
from mm1lab.data.formats import caption_stream, interleaved_stream, iter_samples, llava_stream, text_stream
from mm1lab.data.sample import DataError, Skips
from mm1lab.data.tokenizer import default_samples_dir

SAMPLES = default_samples_dir()
CASES = 48          # damaged copies of the reader's own file per reader (half truncations, half flips)
IMAGE_CASES = 8     # damaged copies of one of its image files
TIMEOUT_S = 20      # per read; a healthy read of these samples takes well under a second


def digest(image) -> str:
    pixels = np.asarray(image.convert("RGB"))
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=12).hexdigest()


def sample_key(sample) -> tuple:
    return sample.stream, sample.text, tuple(digest(im) for im in sample.images)


def stream_read(make: Callable[[Path], object]) -> Callable[[Path, Skips], list[tuple]]:
    return lambda root, skips: [sample_key(s) for s in iter_samples(make(root), skips=skips)]


def coco(root: Path, skips: Skips) -> list[tuple]:
    items = read_coco_captions(root / "eval/coco/captions_val2014.json", root / "eval/coco/val2014", skips=skips)
    return [("coco", i["file_name"], tuple(i["answers"]), (digest(i["image"]),)) for i in items]


def vqav2(root: Path, skips: Skips) -> list[tuple]:
    d = root / "eval/vqav2"
    items = read_vqav2(d / "v2_OpenEnded_mscoco_val2014_questions.json", d / "v2_mscoco_val2014_annotations.json",
                       d / "val2014", skips=skips)
    return [("vqa", i["id"], i["question"], tuple(i["answers"]), i["answer"], (digest(i["image"]),)) for i in items]


@dataclass
class Reader:
    """One reader under test: how to read a corpus folder, its own file, its images, how much one flip may alter."""

    read: Callable[[Path, Skips], list[tuple]]
    main: str                    # the reader's own file, relative to the corpus root
    images: str | None = None    # glob of the image files it refers to
    jsonl: bool = False          # one record per line (a cut at a line end is invisible)
    altered: int = 1             # records one flipped byte may change (a COCO caption moving between two images: 2)


READERS = {
    "captions": Reader(stream_read(lambda r: caption_stream(r / "captions")), "captions/00000.tar"),
    "interleaved": Reader(stream_read(lambda r: interleaved_stream(r / "interleaved/docs.jsonl")),
                          "interleaved/docs.jsonl", "interleaved/images/*.jpg", jsonl=True),
    "llava": Reader(stream_read(lambda r: llava_stream(r / "sft/llava_instruct.json")), "sft/llava_instruct.json",
                    "sft/images/*.jpg"),
    "text": Reader(stream_read(lambda r: text_stream(r / "text/train.jsonl")), "text/train.jsonl", jsonl=True),
    "coco": Reader(coco, "eval/coco/captions_val2014.json", "eval/coco/val2014/*.jpg", altered=2),
    "vqav2": Reader(vqav2, "eval/vqav2/v2_mscoco_val2014_annotations.json", "eval/vqav2/val2014/*.jpg"),
    "vqav2-questions": Reader(vqav2, "eval/vqav2/v2_OpenEnded_mscoco_val2014_questions.json"),
}


class Hang(BaseException):
    """Raised by the timer; a BaseException so that no reader's `except Exception` can swallow it."""


@contextmanager
def deadline(seconds: float):
    """Fail a read that takes longer than `seconds` (a timer signal; only possible on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"a read took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def attempt(reader: Reader, root: Path, strict: bool) -> tuple[list[tuple] | None, Counter, str | None]:
    """(samples, skips, error): what a read of the damaged corpus gave; the error only if it is a located one."""
    skips = Skips(strict=strict)
    try:
        with deadline(TIMEOUT_S):
            return reader.read(root, skips), Counter(skips.counts), None
    except DataError as exc:
        message = str(exc)
        assert "(unexpected;" not in message, message   # a reader bug, wrapped by the mixture's safety net
        assert str(root) in message, f"the error names no file of the corpus: {message}"
        return None, Counter(skips.counts), message


def damages(data: bytes, rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    """n damaged copies of `data`: half cut at a random length, half with one byte flipped."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            cut = int(rng.integers(0, len(data)))
            out.append((f"cut at byte {cut} of {len(data)}", data[:cut]))
        else:
            at, mask = int(rng.integers(0, len(data))), int(rng.integers(1, 256))
            out.append((f"byte {at} xor {mask:#04x}", data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]))
    return out


def check(reader: Reader, root: Path, originals: list[tuple], case: str, *, cut: bool, altered: int,
          jsonl_prefix: int | None) -> None:
    """The properties in the module docstring, for one damaged corpus."""
    loaded, skips, error = attempt(reader, root, strict=False)
    if loaded is not None:
        for key in loaded:
            texts = [part for part in key if isinstance(part, str)]
            assert not any("\ufffd" in t for t in texts), f"{case}: replacement character in {key}"
        known = Counter(originals)
        foreign = [key for key in loaded if not known[key]]   # loaded with content no original had
        assert len(foreign) <= (0 if cut else altered), f"{case}: samples with content they did not have: {foreign}"
        if jsonl_prefix is not None:   # cut exactly at a line end: nothing tells, so nothing may be counted
            assert loaded == originals[:jsonl_prefix] and not skips, case
        elif len(loaded) - len(foreign) < len(originals) - (0 if cut else altered):
            assert sum(skips.values()) > 0, f"{case}: samples lost without a count ({len(loaded)} loaded)"
    strict, _, strict_error = attempt(reader, root, strict=True)
    if strict is not None:
        assert strict == loaded and not skips, f"{case}: strict mode loaded what lenient mode skipped"
    else:
        assert error is not None or skips, f"{case}: strict mode raised for a corpus that reads cleanly"


@pytest.mark.parametrize("name", READERS)
def test_damaged_files_never_load_wrong_or_crash_unlocated(name, tmp_path):
    reader = READERS[name]
    root = tmp_path / "corpus"
    shutil.copytree(SAMPLES, root)
    originals = reader.read(root, Skips(strict=True))
    assert originals, name
    rng = np.random.default_rng(sorted(READERS).index(name))
    t0 = time.perf_counter()

    main = root / reader.main
    data = main.read_bytes()
    for case, damaged in damages(data, rng, CASES):
        main.write_bytes(damaged)
        cut = case.startswith("cut")
        prefix = None
        if cut and reader.jsonl and (not damaged or damaged.endswith(b"\n")):
            prefix = damaged.count(b"\n")   # the lines left are whole
        check(reader, root, originals, f"{name}: {reader.main} {case}", cut=cut, altered=reader.altered,
              jsonl_prefix=prefix)
    main.write_bytes(data)

    files = sorted(root.glob(reader.images)) if reader.images else []
    for i in range(IMAGE_CASES if files else 0):
        image = files[int(rng.integers(0, len(files)))]
        pixels = image.read_bytes()
        from PIL import Image

        with Image.open(image) as im:
            users = sum(digest(im) in key[-1] for key in originals)   # samples that show this image
        ((case, damaged),) = damages(pixels, rng, 2)[i % 2:i % 2 + 1]
        image.write_bytes(damaged)
        check(reader, root, originals, f"{name}: {image.name} {case}", cut=False, altered=users, jsonl_prefix=None)
        image.write_bytes(pixels)
    assert time.perf_counter() - t0 < 60, f"{name}: fuzzing took {time.perf_counter() - t0:.0f} s"
