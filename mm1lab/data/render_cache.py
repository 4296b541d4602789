"""The disk cache of rendered ShapeWorld scenes: where it lives, how big it is, and the cap on its size.

`ShapeWorld` (shapeworld.py) stores each block of consecutive seeds as one .npy file under
`<root>/<difficulty key>/<resolution>px/`. A scene costs about 12 KB at 64 px and 340 KB at 336 px, and a long run
on fresh scenes caches every one it draws, so an uncapped cache grows without end (one buggy stream once wrote
73 GB). The cap is $MM1LAB_CACHE_GB gigabytes (default 8; 0 means no cap). When a write takes the cache past
the cap, the blocks used longest ago are deleted until it is back under 90% of the cap. Reading a block marks it
as used (its mtime), so the blocks a run keeps reading stay. A deleted block is rendered again when it is next
needed: the cache holds nothing that cannot be rebuilt. `mm1lab data cache` shows its size, and clears it.

Our own rather than a library's (diskcache and the like keep an index database beside the files): the blocks are
plain .npy files that other processes memory-map, and deleting one never disturbs a process that has it open.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CAP_GB = 8.0
TRIM_TO = 0.9          # a trim goes down to this share of the cap, so that the next writes do not trim again at once
CHECK_EVERY = 16       # block writes between two size checks (a check lists every file of the cache)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where rendered blocks live: `cache_dir`, else $MM1LAB_CACHE/shapeworld, else ~/.cache/mm1lab/shapeworld."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MM1LAB_CACHE")
    return Path(env) / "shapeworld" if env else Path.home() / ".cache" / "mm1lab" / "shapeworld"


def cap_bytes() -> int | None:
    """The cap from $MM1LAB_CACHE_GB (default 8 GB), in bytes; None when it is 0 (no cap)."""
    raw = os.environ.get("MM1LAB_CACHE_GB", "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_CAP_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:    # also refuses nan
        raise ValueError(f"$MM1LAB_CACHE_GB must be a number of gigabytes, or 0 for no cap; got {raw!r}")
    return None if gb == 0 else int(gb * 1e9)


@dataclass(frozen=True)
class Block:
    path: Path
    size: int
    used: float        # mtime: when the block was last written or read


def blocks(root: str | Path) -> list[Block]:
    """Every cached block under `root` (`<difficulty key>/<resolution>px/*.npy`). Files that vanish while we look
    (another process trimming) are left out."""
    found = []
    for path in Path(root).glob("*/*px/*.npy"):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            found.append(Block(path, st.st_size, st.st_mtime))
    return found


def mark_used(path: Path) -> None:
    """Mark a block as just used, so that a trim deletes it last. Best effort: a read-only cache is still read."""
    with contextlib.suppress(OSError):
        os.utime(path)


def trim(root: str | Path, max_bytes: int, *, keep: Path | None = None) -> tuple[int, int]:
    """Delete the blocks used longest ago until the cache is under TRIM_TO x `max_bytes`, if it is over `max_bytes`.
    `keep` (the block just written) is never deleted. Returns (files deleted, bytes freed)."""
    found = blocks(root)
    total = sum(b.size for b in found)
    if total <= max_bytes:
        return 0, 0
    removed = freed = 0
    for block in sorted(found, key=lambda b: b.used):
        if total <= TRIM_TO * max_bytes:
            break
        if keep is not None and block.path == keep:
            continue
        try:
            block.path.unlink()
        except FileNotFoundError:      # another process trimmed it first
            pass
        except OSError:                # cannot be deleted here (permissions): it stays, and so does its size
            continue
        else:
            removed, freed = removed + 1, freed + block.size
        total -= block.size
    return removed, freed


def usage(root: str | Path) -> dict[str, tuple[int, int]]:
    """(files, bytes) for each `<difficulty key>/<resolution>px` folder of the cache."""
    out: dict[str, tuple[int, int]] = {}
    for block in blocks(root):
        folder = str(block.path.parent.relative_to(root))
        files, size = out.get(folder, (0, 0))
        out[folder] = (files + 1, size + block.size)
    return dict(sorted(out.items()))


def clear(root: str | Path) -> int:
    """Delete every cached block under `root`; returns the bytes freed. Only the cache's own folders go."""
    freed = sum(b.size for b in blocks(root))
    for folder in Path(root).glob("*/*px"):
        shutil.rmtree(folder, ignore_errors=True)
    for folder in Path(root).glob("*"):
        with contextlib.suppress(OSError):     # a difficulty folder that still holds something else stays
            folder.rmdir()
    return freed
