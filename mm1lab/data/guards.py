"""The checks every reader runs on untrusted input before a record becomes a sample.

A corpus file is input we did not write: its image paths may point anywhere on the disk, its bytes may not be
text, its images may be truncated or built to exhaust memory. Each check here passes or raises `SkipSample` with
a reason from `SKIP_REASONS`, so a bad record is counted (or, in strict mode, named) and never loads silently
wrong. docs/robustness.md lists the guarantees and the tests that check them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from mm1lab.data.sample import DataError, SkipSample

# Decoders we let Pillow use. Image.open would otherwise try every plugin on untrusted bytes, EPS among them
# (which runs Ghostscript when it is installed); web corpora hold JPEG, PNG and WebP, rarely the rest.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")   # JPEG includes MPO (phone photos)
BOM = b"\xef\xbb\xbf"


def image_path(root: str | Path, ref: Any, where: str, *, allow_absolute: bool = False) -> Path:
    """The file an image reference of a record names, inside `root`; anything that could leave it is skipped.

    Refused as `path_outside_root`: a `..` component (checked on the path as written, so it cannot climb out
    through a symlinked folder either) and an absolute path unless `allow_absolute`. Symlinks that you placed
    inside the root are followed: the check guards against the record, not against your own folder layout.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise SkipSample("bad_record", where, f"an image reference must be a non-empty path string, got {ref!r}")
    if "\x00" in ref:
        raise SkipSample("bad_record", where, "image path contains a NUL byte")
    path = PurePath(ref)
    if ".." in path.parts:
        raise SkipSample("path_outside_root", where, f"{ref!r} contains '..'; image paths must stay inside {root} "
                         "(point image_folder= at the folder the paths are relative to)")
    if path.is_absolute() or os.path.isabs(ref):
        if not allow_absolute:
            raise SkipSample("path_outside_root", where, f"{ref!r} is absolute; image paths are read relative to "
                             f"{root}. Pass allow_absolute_paths=True if you trust this file's absolute paths")
        return Path(ref)
    return Path(root) / path


def decode_text(data: bytes, where: str) -> str:
    """`data` as UTF-8 text; other bytes are skipped as `bad_text` (never turned into replacement characters)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkipSample("bad_text", where, f"byte {exc.start} ({data[exc.start:exc.start + 1]!r}) is not UTF-8; "
                         "re-encode the file as UTF-8") from None


def check_text(value: Any, where: str) -> Any:
    """`value` unchanged if every string in it is real text; a lone surrogate (a JSON `\\ud800` escape, which no
    UTF-8 file can hold and no tokenizer can encode) is skipped as `bad_text`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SkipSample("bad_text", where, f"the JSON escapes a lone surrogate {value[exc.start]!r} at "
                             f"character {exc.start} of {value[:40]!r}") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, where)
            check_text(v, where)
    elif isinstance(value, list):
        for v in value:
            check_text(v, where)
    return value


def parse_json(data: bytes, where: str, *, reason: str = "bad_json") -> Any:
    """One JSON value from raw bytes: UTF-8 (`bad_text`), valid JSON (`reason`), real text in every string."""
    text = decode_text(data.removeprefix(BOM), where)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SkipSample(reason, where, f"{exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:   # an integer of more than 4300 digits; nesting too deep
        raise SkipSample(reason, where, f"{type(exc).__name__}: {exc}") from None
    return check_text(value, where)


def read_json_file(path: str | Path, hint: str = "") -> Any:
    """A whole JSON file (BOM allowed); missing, not UTF-8 or malformed raise `DataError` naming file and place.

    A whole-file JSON cannot be read past its first error, so these are errors, not skips; `hint` says what to do.
    """
    path = Path(path)
    try:
        data = path.read_bytes().removeprefix(BOM)
        return json.loads(data.decode("utf-8"))   # strings are checked per entry (`check_text`)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start} is not UTF-8; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg}){hint}") from None
    except (ValueError, RecursionError) as exc:   # an integer of more than 4300 digits; nesting too deep
        raise DataError(f"{path}: unreadable JSON ({type(exc).__name__}: {exc})") from None


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON `true` is not an id)."""
    return isinstance(value, int) and not isinstance(value, bool)


@contextlib.contextmanager
def strict_decoding():
    """Decode with Pillow's LOAD_TRUNCATED_IMAGES off, whatever the process set: lmms-eval turns it on when it is
    imported, and then a truncated file would be padded with grey instead of counted as a bad image."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def open_image(source: bytes | str | Path, where: str) -> Image.Image:
    """Decode an image fully (so truncation shows here, not later in the collator) as RGB, or raise `SkipSample`."""
    if not isinstance(source, bytes):
        try:
            found = Path(source).is_file()
        except OSError as exc:   # a name too long for the file system, a loop of symlinks, ...
            raise SkipSample("missing_image", where, f"cannot look up {str(source)[:200]!r}: {exc.strerror}") from None
        if not found:
            raise SkipSample("missing_image", where, f"no file {source}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS) as image:
            if image.width == 0 or image.height == 0:
                raise SkipSample("bad_image", where, f"{image.width}x{image.height} image")
            with strict_decoding():
                image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise SkipSample("image_too_large", where, f"{exc} If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS "
                         "before reading") from None
    except SkipSample:
        raise
    except Exception as exc:   # Pillow's decoders raise many types on damaged bytes (OSError, SyntaxError,
        # struct.error, IndexError, ...): every one of them means that this image is unreadable
        raise SkipSample("bad_image", where, f"{type(exc).__name__}: {exc}") from None


def decoded_image(image: Any, where: str) -> Image.Image:
    """A sample's image (PIL, perhaps opened lazily and not yet decoded, or a uint8 array (h, w, 3)) fully decoded
    as RGB with a non-zero size; anything else raises `SkipSample` naming the sample."""
    try:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if image.width == 0 or image.height == 0:
            raise SkipSample("bad_image", where, f"{image.width}x{image.height} image")
        with strict_decoding():
            image.load()   # a lazily opened, truncated file fails here rather than deep inside the preprocessing
        return image if image.mode == "RGB" else image.convert("RGB")
    except SkipSample:
        raise
    except Exception as exc:   # as in `open_image`: any decoder error means this image is unreadable
        raise SkipSample("bad_image", where, f"{type(exc).__name__}: {exc}") from None
