"""Evaluation reports on disk: the JSON, a score-versus-baseline figure, and loading a checkpoint to evaluate.

The figure has one panel per task (metrics differ in scale: CIDEr-D runs to 10, accuracies to 1), a bar per
shot count, and the task's baseline as a dashed line, so every score is read against its majority/chance level.
Figures are built without pyplot (`mm1lab.plots.NotebookFigure`), so this runs headless and shows in notebooks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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


# ---- checkpoints ----------------------------------------------------------------------------------------------
@dataclass
class EvalCheckpoint:
    """What `load_checkpoint_for_eval` returns: the model (eval mode), its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    path: Path
    step: int | None = None


CONFIG_NAMES = ("model_config.json", "config.json")   # the trainer's name first, then the plain export


def load_checkpoint_for_eval(path: str | Path, *, device: str = "cpu") -> EvalCheckpoint:
    """Load an mm1lab checkpoint folder for evaluation.

    `path` may be a checkpoint folder (model.safetensors + model_config.json or config.json), a trainer run
    folder, or its checkpoints/ folder (the newest checkpoint is taken, as `mm1lab.train.checkpoint` finds it).
    The tokenizer is the first tokenizer.json found in the checkpoint folder or the two folders above it,
    else the committed one (`mm1lab.data.tokenizer.load_tokenizer()`).
    """
    from mm1lab.config import MM1Config
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.model import MM1Model
    from mm1lab.train.checkpoint import find_checkpoint, load_weights

    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path}: expected model.safetensors (with model_config.json or "
                                "config.json) or a run folder with checkpoints/")
    config = next((found / name for name in CONFIG_NAMES if (found / name).exists()), None)
    if config is None:
        raise FileNotFoundError(f"{found} has model.safetensors but no {' or '.join(CONFIG_NAMES)} (an "
                                "MM1Config.to_dict() as JSON)")
    model = MM1Model(MM1Config.load(config))
    state = load_weights(found / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{found / 'model.safetensors'} does not match {config.name}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    tok_path = next((p / "tokenizer.json" for p in (found, found.parent, found.parent.parent)
                     if (p / "tokenizer.json").exists()), None)
    meta = found / "meta.json"
    step = json.loads(meta.read_text()).get("step") if meta.exists() else None
    return EvalCheckpoint(model=model.to(device).eval(), tokenizer=load_tokenizer(tok_path), path=found, step=step)
