"""nbval on the reference notebooks in tests/nbval/: their SMOKE outputs, printed numbers included, must not drift.

The references are written by `python -m mm1lab.notebook_refs` (docs/nbval.md); nbval runs in a subprocess, on one
thread, with the sanitizer the references were stored with.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mm1lab.notebook_refs import CHEAP, INJECTED_ID, NOTEBOOKS, REFERENCES, SANITIZE, sanitize, sanitize_patterns
from mm1lab.runner import DEFAULT_KERNEL, resolve_kernel

pytest.importorskip("nbval", reason="nbval is a dev dependency (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[1]
REFS = [REFERENCES / f"{name}.ipynb" for name in CHEAP]
REGENERATE = "regenerate with `python -m mm1lab.notebook_refs` and commit the references with the notebook"


def nbval(paths: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    """`pytest --nbval` on `paths` in a fresh process: one thread, the venv's kernel, RUN_DIRs under tmp_path."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "pytest", "--nbval", *map(str, paths), "--nbval-sanitize-with", str(SANITIZE),
           "--nbval-kernel-name", resolve_kernel(DEFAULT_KERNEL), "--nbval-cell-timeout", "300",
           # no xdist, no cache, and not tests/conftest.py: the kernel imports what the notebooks need
           "-p", "no:xdist", "-p", "no:cacheprovider", "--noconftest", "-q", "-rf"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def code_cells(nb) -> list[tuple[str, list[str]]]:
    """(source, tags without nbval's) of every code cell but the injected parameters."""
    return [(c.source, [t for t in c.metadata.get("tags", []) if not t.startswith("nbval-")])
            for c in nb.cells if c.cell_type == "code" and c.get("id") != INJECTED_ID]


@pytest.mark.parametrize("name", list(CHEAP))
def test_reference_runs_the_notebooks_current_code(name):
    reference = REFERENCES / f"{name}.ipynb"
    assert reference.exists(), f"{reference.relative_to(ROOT)} is missing; {REGENERATE}"
    ref, source = (nbformat.read(p, as_version=4) for p in (reference, NOTEBOOKS / f"{name}.ipynb"))
    assert code_cells(ref) == code_cells(source), f"{reference.name} is stale: nbval would run old code; {REGENERATE}"


def test_every_reference_is_generated():
    stray = sorted(p.name for p in REFERENCES.glob("*.ipynb") if p.stem not in CHEAP)
    assert not stray, f"{stray} in tests/nbval/ are not written by mm1lab.notebook_refs (CHEAP); remove them"


def test_sanitizer_rewrites_what_varies_and_keeps_the_numbers():
    patterns = sanitize_patterns()
    volatile = {"PosixPath('/tmp/pytest-3/tmp/07_moe-x1/metrics.json')": "PosixPath('<path>')",
                "dense:  67%|██████▋   | 2/3 [00:01<00:00,  1.9it/s, loss=7.2]": "dense:  <progress>",
                "<Figure at 0x7f3a2b1c4d50>": "<Figure at 0x<address>>",
                "step 3 in 12.5 s, 1,234 tok/s": "step 3 in <time>, <rate>",
                "saved /home/me/mm1lab/runs/t": "saved <path>",
                "started 2026-12-02T04:53:24.397+00:00": "started <datetime>"}
    for text, expected in volatile.items():
        assert sanitize(text, patterns) == expected
    for text in ("dense: loss 7.231 after 3 steps", " dense: 1.38M total, 1.38M active per token",
                 "caption        0.418   0.445      89     2343", "3/4 of 12 images", "x: 0.5031571909850335"):
        assert sanitize(text, patterns) == text


@pytest.mark.parametrize("name", list(CHEAP))
def test_no_printed_line_of_a_reference_was_sanitized(name):
    # References are stored sanitized, so a placeholder in what a notebook printed would mean a pattern ate it.
    placeholders = {re.sub(r"\\.", "", replacement) for _, replacement in sanitize_patterns()}
    nb = nbformat.read(REFERENCES / f"{name}.ipynb", as_version=4)
    printed = [out.text for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "stream"]
    assert printed, f"{name}: the reference printed nothing; nbval would only check that it runs"
    hits = [(p, text) for text in printed for p in placeholders if p in text]
    assert not hits, f"{name}: sanitize.cfg rewrote printed output, so its numbers are not compared: {hits[:3]}"


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_references_reproduce_their_outputs(tmp_path):
    run = nbval(REFS, tmp_path)
    assert run.returncode == 0, f"nbval: outputs drifted or a cell failed; if intended, {REGENERATE}\n" \
                                f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    compared = sum(1 for p in REFS for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    assert re.search(rf"\b{compared} passed\b", run.stdout), run.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_a_drifted_number_fails(tmp_path):
    # 07_moe up to the cell that prints parameter counts, with one digit of the stored output changed
    nb = nbformat.read(REFERENCES / "07_moe.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "active per token" in "".join(
        o.get("text", "") for o in c.get("outputs", [])))
    nb.cells = nb.cells[:index + 1]
    (out,) = [o for o in nb.cells[index].outputs if o.output_type == "stream"]
    assert "1.38M total" in out.text
    out.text = out.text.replace("1.38M total", "1.39M total", 1)
    drifted = tmp_path / "drifted.ipynb"
    nbformat.write(nb, drifted)
    run = nbval([drifted], tmp_path)
    assert run.returncode == 1, run.stdout[-4000:]
    assert "Cell outputs differ" in run.stdout and "1.39M total" in run.stdout, run.stdout[-4000:]
    code = sum(1 for c in nb.cells if c.cell_type == "code")
    assert re.search(rf"\b1 failed, {code - 1} passed\b", run.stdout), run.stdout[-2000:]
