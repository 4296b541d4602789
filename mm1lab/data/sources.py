"""Where shard files come from: local paths, folders, globs, brace ranges, fsspec URLs and `pipe:` commands.

The notations WebDataset and img2dataset users write, expanded in this order:
    /data/cc12m/{00000..01242}.tar        brace ranges ({00..99}, zero-padded like the bounds) and lists ({a,b})
    /data/obelics/*.jsonl                 a glob (sorted); a folder stands for the reader's pattern inside it
    s3://bucket/dfn/{00000..09999}.tar    any fsspec URL: s3://, gs://, hf://, https:// ... (s3fs, gcsfs need their
                                          own packages); globs in URLs are listed through fsspec
    pipe:aws s3 cp s3://b/{0..9}.tar -    a shell command whose standard output is the file

Opening a source that fails (a missing shard, a download error, a command that exits non-zero) gives one
`SkipSample("unreadable_source")` record, counted like any bad record, so one lost shard out of thousands does
not stop a run; `RecordStream` refuses a stream whose whole epoch was unreadable.
"""

from __future__ import annotations

import glob
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from mm1lab.data.sample import SkipSample

PIPE = "pipe:"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def braces(text: str) -> list[str]:
    """Brace expansion as WebDataset's `braceexpand`: "a{1..3}" -> a1 a2 a3, "x{00..02}" -> x00 x01 x02,
    "{a,b}.tar" -> a.tar b.tar; several braces multiply; text without a range or a comma stays literal."""
    match = _BRACE.search(text)
    if match is None:
        return [text]
    head, body, tail = text[:match.start()], match.group(1), text[match.end():]
    rng = _RANGE.match(body)
    if rng:
        lo, hi = rng.groups()
        width = max(len(lo), len(hi)) if (lo.startswith("0") and len(lo) > 1) else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + rest for rest in braces(tail)]
    return [head + option + rest for option in options for rest in braces(tail)]


def is_remote(name: str) -> bool:
    """A `pipe:` command or a URL with a scheme (not a local path)."""
    return name.startswith(PIPE) or "://" in name


def expand(source: str | Path | Iterable[str | Path], pattern: str) -> list[str]:
    """The files `source` names (see the module docstring), in order. A glob that matches nothing is an error that
    names it; a missing plain path is kept (reading it counts `unreadable_source`)."""
    specs = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[str] = []
    for spec in specs:
        for name in braces(str(spec)):
            if name.startswith(PIPE):
                files.append(name)
            elif "://" in name:
                files += _expand_url(name)
            elif glob.has_magic(name):
                found = sorted(glob.glob(name))
                if not found:
                    raise FileNotFoundError(f"{name}: the glob matches no file")
                files += found
            elif Path(name).is_dir():
                found = sorted(str(p) for p in Path(name).glob(pattern))
                if not found:
                    raise FileNotFoundError(f"{name}: a folder without {pattern} files")
                files += found
            else:
                files.append(name)
    return files


def _expand_url(url: str) -> list[str]:
    if not glob.has_magic(url):
        return [url]
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    found = sorted(fs.glob(path))
    if not found:
        raise FileNotFoundError(f"{url}: the glob matches no file")
    return [fs.unstrip_protocol(p) for p in found]


class SourceError(OSError):
    """A source could not be read to its end (a `pipe:` command that exited with an error)."""


@contextmanager
def open_source(name: str) -> Iterator[BinaryIO]:
    """A binary file object for a local path, an fsspec URL or a `pipe:` command (read sequentially)."""
    if name.startswith(PIPE):
        with tempfile.TemporaryFile() as err:   # a file, not a pipe: a chatty command cannot block on stderr
            proc = subprocess.Popen(name[len(PIPE):], shell=True, stdout=subprocess.PIPE, stderr=err)
            complete = False
            try:
                yield proc.stdout
                complete = True
            finally:
                if not complete and proc.poll() is None:
                    proc.kill()   # the reader stopped early (end of training, a closed generator)
                proc.stdout.close()
                status = proc.wait()
            if status != 0:
                err.seek(0)
                message = err.read()[-500:].decode("utf-8", "replace").strip()
                raise SourceError(f"the command exited with status {status}" + (f": {message}" if message else ""))
    elif "://" in name:
        import fsspec

        with fsspec.open(name, "rb") as f:
            yield f
    else:
        with open(name, "rb") as f:
            yield f


def read_source(name: str, parse: Callable[[BinaryIO, str], Iterable[Any]]) -> Iterator[Any]:
    """`parse(file, name)`'s raw records; a source that cannot be opened or read to its end adds one
    `SkipSample("unreadable_source")` record (after the records read before the failure)."""
    try:
        with open_source(name) as f:
            yield from parse(f, name)
    except OSError as exc:
        yield SkipSample("unreadable_source", name, f"{type(exc).__name__}: {exc}")
