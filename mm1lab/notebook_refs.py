"""Reference notebooks for nbval: SMOKE runs of the cheap notebooks, outputs included, in `tests/nbval/`.

    python -m mm1lab.notebook_refs             # regenerate every reference
    python -m mm1lab.notebook_refs 07_moe      # just one

`tests/test_nbval.py` re-runs each reference with nbval and compares every output with the stored one, after the
regex replacements in `tests/nbval/sanitize.cfg` (paths, timings, progress bars, addresses, dates). A notebook
whose printed numbers drift fails the tests; if the change is intended, regenerate and commit the references
with the notebook. This module is their only writer.

A reference is its notebook, with one cell of parameters injected after the `parameters` cell (as papermill does),
executed on one thread with papermill in `tests/nbval/`, where nbval runs it too (so relative paths agree). The
injected cell makes RUN_DIR a fresh folder under $TMPDIR at every run. Outputs are stored sanitized, and figures,
widget views and run metadata (timings, paths, widget state) are left out: nbval skips them anyway, and without
them a reference changes only when an output does.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REFERENCES = ROOT / "tests" / "nbval"
SANITIZE = REFERENCES / "sanitize.cfg"
INJECTED_ID = "nbval-parameters"

# The notebooks with a reference (cheap in SMOKE mode: ~20 s each on one core) and what their reference runs set
# besides SMOKE. Paths are relative to REFERENCES, where nbval runs the notebook. 00_tour is left out: counting
# every preset on the meta device takes ~25 s on its own.
CHEAP: dict[str, dict[str, Any]] = {
    "01_data": {"SAMPLES_DIR": "../../data_samples"},   # the mixture table, sample counts, scene graphs
    "07_moe": {},                                      # parameter counts and the losses after 3 steps, dense and MoE
}
# Cells nbval may run but must not compare: their output changes from run to run by nature.
IGNORE_OUTPUT_TAG = "nbval-ignore-output"
IGNORED_TAGS = ("interactive",)   # widget explorers (house style: tagged in the notebooks already)
# Outputs the references do not keep: nbval does not compare them, and they change with every run.
DROPPED_DATA = ("image/png", "image/jpeg", "image/svg+xml", "application/vnd.jupyter.widget-view+json")


def parameters_source(name: str, extra: dict[str, Any]) -> str:
    """The injected cell: SMOKE, a fresh RUN_DIR under $TMPDIR on every run, and the notebook's `extra` values."""
    lines = ["# Injected by mm1lab.notebook_refs: this reference's parameters (nbval re-runs this cell).",
             "import tempfile", "", "SMOKE = True",
             f"RUN_DIR = tempfile.mkdtemp(prefix={name + '-'!r})   # under $TMPDIR; tests/test_nbval.py sets it"]
    lines += [f"{key} = {value!r}" for key, value in extra.items()]
    return "\n".join(lines)


def prepare(name: str):
    """The notebook `name` with the reference's parameters cell injected after its `parameters` cell."""
    import nbformat

    from mm1lab.runner import check_notebook, parameters_cell

    path = NOTEBOOKS / f"{name}.ipynb"
    extra = CHEAP[name]
    check_notebook(path, {"SMOKE": True, **extra})   # names the notebook and the parameter that it lacks
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell(parameters_source(name, extra), id=INJECTED_ID)
    cell.metadata["tags"] = ["injected-parameters"]   # papermill's tag, so its tools and ours recognise the cell
    nb.cells.insert(parameters_cell(nb) + 1, cell)
    return nb


def sanitize_patterns() -> list[tuple[str, str]]:
    """The (regex, replacement) pairs of SANITIZE, read by nbval's own parser."""
    try:
        from nbval.plugin import get_sanitize_patterns
    except ImportError as exc:
        raise ImportError("the references are checked with nbval: pip install -e '.[dev]'") from exc
    return get_sanitize_patterns(SANITIZE.read_text())


def sanitize(text: str, patterns: list[tuple[str, str]]) -> str:
    """`text` as nbval compares it: every pattern replaced, in file order."""
    for regex, replacement in patterns:
        text = re.sub(regex, replacement, text)
    return text


def clean(nb):
    """Sanitize the outputs (as nbval will) and strip what changes from run to run but is never compared
    (timings, paths, widget state, figures)."""
    patterns = sanitize_patterns()
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    for cell in nb.cells:
        for key in ("execution", "papermill"):
            cell.metadata.pop(key, None)
        tags = cell.metadata.get("tags", [])
        if any(tag in tags for tag in IGNORED_TAGS) and IGNORE_OUTPUT_TAG not in tags:
            cell.metadata["tags"] = [*tags, IGNORE_OUTPUT_TAG]
        outputs = []
        for output in cell.get("outputs", []):   # one stream output per run of prints: the kernel's chunking varies
            if outputs and output.get("name") and outputs[-1].get("name") == output.get("name"):
                outputs[-1]["text"] += output["text"]
            else:
                outputs.append(output)
        if "outputs" in cell:
            cell.outputs = outputs
        for output in outputs:
            if "text" in output:
                output["text"] = sanitize(output["text"], patterns)
            if "data" in output:
                output["data"] = {k: sanitize(v, patterns) if isinstance(v, str) else v
                                  for k, v in output["data"].items() if k not in DROPPED_DATA}
                output["metadata"] = {}
    return nb


def generate(names: Iterable[str] | None = None, *, kernel: str | None = None) -> list[Path]:
    """Execute each named notebook (all of CHEAP by default) in SMOKE mode and write its reference.

    Runs on one thread, as the test does, so reductions add up in the same order. A failing cell raises a
    RuntimeError naming the notebook and the cell; no reference is written for it.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from mm1lab.runner import DEFAULT_KERNEL, kernel_environ, resolve_kernel

    names = list(names or CHEAP)
    unknown = [n for n in names if n not in CHEAP]
    if unknown:
        raise ValueError(f"no reference is defined for {', '.join(unknown)}; known: {', '.join(CHEAP)} "
                         f"(add a notebook to CHEAP in {__file__} to give it one)")
    kernel = resolve_kernel(kernel or DEFAULT_KERNEL)
    REFERENCES.mkdir(parents=True, exist_ok=True)
    written = []
    # The RUN_DIRs of these runs go to a scratch $TMPDIR, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="mm1lab-refs-") as scratch, \
            kernel_environ(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=scratch):
        for name in names:
            print(f"mm1lab: running {name} in SMOKE mode for its reference", file=sys.stderr, flush=True)
            try:
                nb = papermill.execute_notebook(prepare(name), None, kernel_name=kernel, cwd=str(REFERENCES),
                                                progress_bar=False)
            except PapermillExecutionError as exc:
                raise RuntimeError(f"{name}: cell {exc.cell_index} failed in SMOKE mode ({exc.ename}: {exc.evalue}); "
                                   f"no reference written. Fix the notebook (tests/test_notebooks.py fails on "
                                   f"it too), then regenerate") from exc
            path = REFERENCES / f"{name}.ipynb"
            tmp = path.with_suffix(".ipynb.tmp")
            nbformat.write(clean(nb), tmp)
            tmp.replace(path)   # a reference is replaced whole, never left half-written
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m mm1lab.notebook_refs`."""
    parser = argparse.ArgumentParser(prog="python -m mm1lab.notebook_refs", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"notebooks to regenerate (default: all of {', '.join(CHEAP)})")
    parser.add_argument("--kernel", help="Jupyter kernel (default: mm1lab, the venv's)")
    args = parser.parse_args(argv)
    try:
        for path in generate(args.names, kernel=args.kernel):
            print(f"wrote {path.relative_to(ROOT)}")
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"mm1lab.notebook_refs: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
