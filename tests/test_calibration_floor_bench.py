"""docs/bench/calibration_floor.py runs on the shipped encoders and prints one table row per folder (small sizes)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_calibration_floor_bench_scores_a_clip_and_a_vision_tower():
    out = subprocess.run([sys.executable, str(ROOT / "docs/bench/calibration_floor.py"), "stage0/clip-tiny",
                          "stage0/aim-tiny", "--train", "64", "--test", "32", "--seeds", "1", "--retrieval", "16",
                          "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`stage0/clip-tiny`", "`stage0/aim-tiny`"]
    clip, aim = ([c.strip() for c in r.split("|")[2:-1]] for r in rows)
    assert 0.0 <= float(clip[0]) <= 1.0 and aim[0] == "-"      # retrieval needs the text tower
    assert all(0.0 <= float(c.split()[0]) <= 1.0 for c in clip[1:] + aim[1:])
