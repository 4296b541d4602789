"""Every committed notebook: stored clean (no outputs, one `parameters` cell with SMOKE) and runs in SMOKE mode."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mm1lab.runner import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
IDS = [nb.name for nb in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path):
    json.loads(path.read_text())   # valid JSON first, with the JSON parser's line/column on failure
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing "
                       f"(JupyterLab: Edit > Clear Outputs of All Cells; or `jupyter nbconvert --clear-output "
                       f"--inplace {path.name}`)")
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged `parameters`, found cells {tagged}"
    assert "SMOKE" in nb.cells[tagged[0]].source, f"{path.name}: the parameters cell must define SMOKE"


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    result = run_notebook(path, {}, smoke=True, out_root=tmp_path)
    assert result.ok, f"{path.name} failed in SMOKE mode: {result.error}\n  partial notebook: {result.notebook}"
