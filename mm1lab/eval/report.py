"""Evaluation reports on disk: the JSON and a score-versus-baseline figure.

The figure has one panel per task (metrics differ in scale: CIDEr-D runs to 10, accuracies to 1), a bar per
shot count, and the task's baseline as a dashed line, so every score is read against its majority/chance level.
Figures are built without pyplot (`mm1lab.plots.NotebookFigure`), so this runs headless and shows in notebooks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mm1lab.plots import NotebookFigure

BASELINE_LABELS = {"majority": "majority answer", "chance": "chance", "constant-caption": "most common caption"}


def plot_report(report: dict[str, Any], *, title: str | None = None) -> NotebookFigure:
    """Score per shot count (bars) against the task's baseline (dashed), one panel per task."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for entry in report["tasks"].values():
        by_task.setdefault(entry["task"], []).append(entry)
    if not by_task:
        raise ValueError("the report has no scored tasks to plot (see its 'skipped' entry)")
    cols = min(4, len(by_task))
    rows = math.ceil(len(by_task) / cols)
    fig = NotebookFigure(figsize=(3.2 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (task, entries) in zip(axes, by_task.items()):
        entries = sorted(entries, key=lambda e: e["shots"])
        xs = range(len(entries))
        bars = ax.bar(xs, [e["score"] for e in entries], color="tab:blue", width=0.6)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        for x, e in zip(xs, entries):
            ax.hlines(e["baseline"], x - 0.4, x + 0.4, colors="black", linestyles="dashed", linewidth=1.2,
                      label=BASELINE_LABELS.get(e["baseline_kind"], e["baseline_kind"]) if x == 0 else None)
        ax.set_xticks(list(xs), [f"{e['shots']}-shot" for e in entries])
        top = max([e["score"] for e in entries] + [e["baseline"] for e in entries])
        ax.set_ylim(0, max(1.0, top) * 1.3)   # headroom for the bar labels and the legend
        ax.set_title(f"{task} (n={entries[0]['n']})", fontsize=9)
        ax.set_ylabel(entries[0]["metric"], fontsize=8)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    for ax in axes[len(by_task):]:
        ax.set_axis_off()
    fig.suptitle(title or f"{report['suite']}: score vs baseline" +
                 (f" ({Path(report['checkpoint']).name})" if report.get("checkpoint") else ""), fontsize=10)
    return fig


def write_report(report: dict[str, Any], out_dir: str | Path, *, stem: str | None = None) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.png` (default stem: `eval_<suite>`) into `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"eval_{report['suite']}"
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report).savefig(png_path, dpi=100)
    return json_path, png_path


# MM1 averages captioning (CIDEr, reported x100) and VQA-style accuracies (x100) into one number per shot count.
PAPER_SCALE = {"cider_d": 100.0}   # every other metric is a 0-1 share, also x100


def paper_average(report: dict[str, Any], *, tasks: list[str] | None = None) -> dict[int, float]:
    """{shots: the mean over `tasks` (default: every task but `text`) of the score on MM1's scale (x100)}, the
    number MM1's ablation figures plot for its pre-trained models."""
    by_shots: dict[int, list[float]] = {}
    for entry in report["tasks"].values():
        if (tasks is None and entry["task"] == "text") or (tasks is not None and entry["task"] not in tasks):
            continue
        by_shots.setdefault(entry["shots"], []).append(entry["score"] * PAPER_SCALE.get(entry["metric"], 100.0))
    return {k: sum(v) / len(v) for k, v in sorted(by_shots.items())}
