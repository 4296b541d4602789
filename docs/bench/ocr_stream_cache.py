"""How much rendering and cache the `ocr` stream costs from a cold cache (docs/benchmarks.md, "The ocr stream").

    MM1LAB_CACHE=$(mktemp -d) OMP_NUM_THREADS=1 python docs/bench/ocr_stream_cache.py [SOURCE_TREE]

SOURCE_TREE (optional): an mm1lab checkout to import instead of the installed one, e.g. a `git worktree` of an older
commit, to compare the two side by side. Use a fresh, empty $MM1LAB_CACHE for each run.
"""
import os
import sys
import time
from pathlib import Path

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
from mm1lab.data.streams import ShapeWorldStreams  # noqa: E402

streams = ShapeWorldStreams("medium", 64)
start = time.perf_counter()
for i in range(512):
    streams.ocr(i)
seconds = time.perf_counter() - start
size = sum(f.stat().st_size for f in Path(os.environ["MM1LAB_CACHE"]).rglob("*.npy"))
print(f"512 ocr items from a cold cache: {seconds:.2f} s, cache {size / 2**20:.0f} MiB")
