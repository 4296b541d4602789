"""Run a notebook over a grid of parameters and aggregate the runs: `mm1lab sweep NOTEBOOK --grid grid.yaml`.

A sweep is one folder; its runs are ordinary run folders (see `mm1lab/runner.py`) nested inside it, and each
also gets its line in `papermill_runs/index.jsonl` (with a `sweep` field naming the sweep folder):

    papermill_runs/<YYYYmmdd-HHMMSS-ffffff>-sweep-<name>/
        grid.yaml                   the grid and base parameters, as run
        runs/<i>-<k=v,...>/         one run folder per combination, in grid order
        sweep.csv                   one row per run: every parameter, every scalar metric, status
        sweep.md                    the same for reading: swept keys, metrics, status
        sweep.png                   each numeric metric against the first grid key, one line per other combination

grid.yaml: `{key: [v1, v2], ...}` (the cross product is run, first key slowest) plus an optional
`base: {key: value}` of fixed parameters.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mm1lab import yamlio
from mm1lab.runner import (
    DEFAULT_KERNEL,
    RunResult,
    check_names,
    check_notebook,
    check_values,
    new_folder,
    relative_to,
    run_notebook,
    say,
    slug,
)
from mm1lab.train.tracking import flatten


@dataclass
class SweepResult:
    """A finished sweep: its folder, the grid, one RunResult per combination and the aggregated rows."""

    name: str
    folder: Path
    grid: dict[str, list]
    runs: list[RunResult]
    rows: list[dict[str, Any]]


def validate_grid(grid: Any) -> dict[str, list]:
    """The grid, checked: a non-empty mapping of parameter name -> non-empty list of values."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"a grid is a mapping `key: [v1, v2, ...]` with at least one key, got {grid!r}")
    check_names(grid, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid key {key!r} must map to a non-empty list of values, got {values!r}; "
                             f"write `{key}: [{values!r}]` to fix one value, or put it under `base:`")
    return grid


def load_grid(path: str | Path) -> tuple[dict[str, list], dict[str, Any]]:
    """(grid, base parameters) from a grid.yaml file."""
    path = Path(path)
    spec = yamlio.load_mapping(path, "grid file")
    base = spec.pop("base", None) or {}
    if not isinstance(base, dict):
        raise ValueError(f"{path}: `base` must be a mapping `key: value`, got {base!r}")
    check_names(base, f"{path}: base")
    try:
        return validate_grid(spec), base
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The cross product of the grid, first key varying slowest."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def sweep(notebook: str | Path, grid: dict[str, list], *, base_parameters: dict[str, Any] | None = None,
          out_root: str | Path = "papermill_runs", name: str | None = None, kernel: str = DEFAULT_KERNEL,
          smoke: bool | None = None) -> SweepResult:
    """Run `notebook` once per grid combination, sequentially, then write sweep.csv, sweep.md and sweep.png.

    A failed run does not stop the sweep; it shows up as a row with status "failed".
    """
    grid, base = validate_grid(grid), dict(base_parameters or {})
    if smoke is not None:
        base["SMOKE"] = smoke
    clash = sorted(set(grid) & set(base))
    if clash:
        raise ValueError(f"{', '.join(clash)} is both swept (grid) and fixed (base/-p); keep it in one place")
    combos = combinations(grid)
    check_values({**base, **grid}, "grid")
    check_notebook(notebook, {**base, **combos[0]})   # every combination has the same names: fail before any run
    name = name or Path(notebook).stem
    out_root = Path(out_root)
    folder = new_folder(out_root, f"sweep-{name}").resolve()
    (folder / "grid.yaml").write_text(yaml.safe_dump({**grid, "base": base}, sort_keys=False))

    runs = []
    width = len(str(len(combos) - 1))   # zero-padded so runs/ lists in grid order
    for i, combo in enumerate(combos):
        label = ",".join(f"{k}={v}" for k, v in combo.items())
        say(f"sweep {name}: run {i + 1}/{len(combos)}: {label}")
        runs.append(run_notebook(
            notebook, {**base, **combo}, out_root=out_root, name=f"{name}/{label}", kernel=kernel,
            folder=folder / "runs" / f"{i:0{width}d}-{slug(label)}", live=f"run {i + 1}/{len(combos)}",
            extra_index=dict(sweep=relative_to(folder, out_root))))

    rows = aggregate_runs([run.folder for run in runs])
    write_tables(rows, list(grid), folder)
    fig = plot_sweep(rows, list(grid))
    fig.savefig(folder / "sweep.png", dpi=120, bbox_inches="tight")
    return SweepResult(name=name, folder=folder, grid=grid, runs=runs, rows=rows)


# ---------------------------------------------------------------------------------------------- aggregation
def aggregate_runs(folders: list[str | Path]) -> list[dict[str, Any]]:
    """One row per run folder: its parameters, every scalar metric, status, duration and folder.

    A sweep folder (one with `runs/`) stands for all of its runs, so `aggregate_runs([sweep_dir])` works.
    A metric named like a parameter is renamed `metric.<name>`.
    """
    rows = []
    for folder in map(Path, folders):
        if (folder / "runs").is_dir():
            rows.extend(aggregate_runs(sorted(p for p in (folder / "runs").iterdir() if p.is_dir())))
            continue
        if not (folder / "parameters.yaml").exists():
            raise FileNotFoundError(f"{folder} is not a run folder (no parameters.yaml)")
        parameters = yamlio.load((folder / "parameters.yaml").read_text()) or {}
        status_path, metrics_path = folder / "status.json", folder / "metrics.json"
        # A run still in progress (or killed) has no status.json yet.
        status = json.loads(status_path.read_text()) if status_path.exists() else {"status": "unfinished"}
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        # Scalars only: lists (e.g. per-probe answers) do not fit a table cell.
        metrics = {k: v for k, v in flatten(metrics, sep=".").items()
                   if isinstance(v, (int, float, str, bool)) or v is None}
        row = {"run": folder.name, **parameters}
        row.update({(f"metric.{k}" if k in parameters else k): v for k, v in metrics.items()})
        row.update(status=status.get("status"), duration_s=status.get("duration_s"), folder=str(folder))
        rows.append(row)
    return rows


def metric_columns(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Columns that are neither parameters nor bookkeeping, in first-seen order."""
    skip = set(keys) | {"run", "status", "duration_s", "folder"}
    params = {k for row in rows for k in _parameter_names(row)}
    return list(dict.fromkeys(k for row in rows for k in row if k not in skip and k not in params))


def _parameter_names(row: dict[str, Any]) -> list[str]:
    parameters = Path(row["folder"]) / "parameters.yaml"
    return list(yamlio.load(parameters.read_text()) or {}) if parameters.exists() else []


def write_tables(rows: list[dict[str, Any]], keys: list[str], folder: Path) -> None:
    """sweep.csv (every column) and sweep.md (swept keys, metrics, status) in `folder`."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    shown = keys + metric_columns(rows, keys) + ["status", "run"]
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in shown) + " |" for row in rows]
    (folder / "sweep.md").write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- plot
def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def plot_sweep(rows: list[dict[str, Any]], keys: list[str], metrics: list[str] | None = None):
    """A matplotlib Figure: each numeric metric against `keys[0]`, one line per combination of the other keys.

    Pure (no pyplot state, no files), so notebooks can display it and headless runs can save it.
    """
    from matplotlib.figure import Figure

    metrics = metrics or [m for m in metric_columns(rows, keys) if any(_number(r.get(m)) == _number(r.get(m))
                                                                       for r in rows)]
    if not metrics:
        fig = Figure(figsize=(5, 2))
        fig.text(0.5, 0.5, "no numeric metrics (did the notebook write RUN_DIR/metrics.json?)", ha="center")
        return fig
    x_key, others = keys[0], keys[1:]
    xs = list(dict.fromkeys(repr(r.get(x_key)) for r in rows))   # x values in grid order
    numeric_x = all(_number(r.get(x_key)) == _number(r.get(x_key)) for r in rows)
    groups = list(dict.fromkeys(tuple(repr(r.get(k)) for k in others) for r in rows))

    cols = min(3, len(metrics))
    n_rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * n_rows), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        for group in groups:
            members = [r for r in rows if tuple(repr(r.get(k)) for k in others) == group]
            x = [_number(r.get(x_key)) if numeric_x else xs.index(repr(r.get(x_key))) for r in members]
            # A failed run's metrics (if it wrote any) are not results: NaN leaves a gap in the line.
            y = [_number(r.get(metric)) if r.get("status") == "ok" else math.nan for r in members]
            label = ", ".join(f"{k}={members[0].get(k)}" for k in others) or None
            ax.plot(x, y, marker="o", label=label)
        if not numeric_x:
            ax.set_xticks(range(len(xs)), [x.strip("'") for x in xs])
        ax.set_xlabel(x_key)
        ax.set_title(metric)
        if others:
            ax.legend(fontsize="small")
    return fig
