"""Evaluation harness: MM1's k-shot pre-training and chat (SFT) protocols on ShapeWorld, COCO and VQAv2.

`evaluate` is the entry point; it puts together one piece from each module of `mm1lab.eval`:
- `suites`: which (task, shots) pairs to run (`SUITES`, `get_suite`) and each task's metric (`TASK_METRICS`);
- `items`: the questions, from ShapeWorld (`shapeworld_items`) or real COCO / VQAv2 files (`coco_items`,
  `vqav2_items`), each with a k-shot and a chat prompt;
- `predictor`: what answers them, a `Predictor`; a model is wrapped in a `ModelPredictor`, and the oracle and
  constant reference points live in `baselines`;
- `scoring`: one scoring path for every predictor (`score_predictions`) and the baseline beside each score
  (`task_baseline`);
- `report`: writing and plotting what `evaluate` returns.

Report: {"suite", "checkpoint", "config", "created", "skipped", "tasks": {"color@0shot": {"task", "shots",
"metric", "score", "baseline", "baseline_kind", "n", "extra", "examples"}, ...}}. `extra` holds the metric's
secondary numbers and the baseline's (`baseline_answer`, `majority_share`); `examples` the first five answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mm1lab.eval.items import Item, coco_items, shapeworld_items, vqav2_items
from mm1lab.eval.predictor import ModelPredictor, Predictor
from mm1lab.eval.scoring import bootstrap_interval, item_scores, score_predictions, task_baseline
from mm1lab.eval.suites import TASK_METRICS, Suite, get_suite


def predict(predictor: Predictor, items: Sequence[Item], *, batch_size: int = 16,
            rank_choices: bool = False) -> list[str]:
    """Answer strings for `items` in batches; choice tasks (text, or any with choices if `rank_choices`)
    are answered with the text of the choice `predictor.score_choices` picks."""
    out: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start:start + batch_size])
        if batch[0]["task"] == "text" or (rank_choices and batch[0].get("choices")):
            out += [it["choices"][c] for it, c in zip(batch, predictor.score_choices(batch))]
        else:
            out += list(predictor(batch))
    return out


def evaluate(model, tokenizer=None, suite: str | Suite = "shapeworld-pretrain", *,
             shots: Sequence[int] | None = None, n: int = 50, batch_size: int = 16, difficulty: str = "easy",
             max_new_tokens: int | None = None, seed: int = 0, tasks: Sequence[str] | None = None,
             rank_choices: bool = False, coco_dir: str | Path | None = None, vqav2_dir: str | Path | None = None,
             checkpoint: str | None = None, progress: Callable[[str], None] | None = None,
             task_difficulty: dict[str, str] | None = None, resolution: int | None = None) -> dict[str, Any]:
    """Evaluate a model (or any `Predictor`) on a suite and return the report (see the module docstring).

    Every score comes with a 95% bootstrap interval over the items (`interval`), and `above_baseline` says whether
    the whole interval lies above the baseline.

    Args:
        model: an `MM1Model` (wrapped in a `ModelPredictor` with `tokenizer`) or a `Predictor`.
        suite: a name in `SUITES` or a `Suite`. shots: default the suite's ((0, 4, 8); chat suites (0,)).
        n: items per (task, shots); the same items at every shot count. tasks: a subset of the suite's tasks.
        difficulty: the ShapeWorld world of the items; task_difficulty: per-task exceptions, e.g. {"ocr": "medium"}
            (OCR needs a world with signs). resolution: the rendered image side (default: the model's).
        rank_choices: answer closed-set tasks (colour, count, ...) by log-likelihood ranking of their choices.
        coco_dir / vqav2_dir: the real files for the `coco` / `vqav2` suites (layout: docs/evaluation.md).
        progress: called with a line per finished (task, shots), e.g. `print`.
    """
    spec = get_suite(suite)
    entries = spec.entries(shots, tasks)
    world = lambda task: (task_difficulty or {}).get(task, difficulty)   # noqa: E731
    if resolution is None:   # render at the model's own resolution (a 64 px default would blur a 128 px model's text)
        resolution = getattr(getattr(model, "cfg", None), "vision", None)
        resolution = resolution.image_size if resolution is not None else 64
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("evaluate(model, tokenizer, ...): a model needs its tokenizer (mm1lab.data.tokenizer)")
        predictor = ModelPredictor(model, tokenizer, chat=spec.chat, max_new_tokens=max_new_tokens)
    else:
        predictor = model
    report: dict[str, Any] = dict(
        suite=spec.name, checkpoint=None if checkpoint is None else str(checkpoint),
        config=dict(shots=sorted({k for _, k in entries}), n=n, seed=seed, difficulty=difficulty,
                    task_difficulty=dict(task_difficulty or {}), resolution=resolution,
                    batch_size=batch_size, max_new_tokens=max_new_tokens, rank_choices=rank_choices,
                    chat=spec.chat, predictor=getattr(predictor, "name", type(predictor).__name__),
                    model=getattr(getattr(model, "cfg", None), "name", None)),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), skipped={}, tasks={})
    for task, k in entries:
        if spec.source == "shapeworld" and task == "ocr" and tasks is None and not _has_text(world(task)):
            report["skipped"][f"ocr@{k}shot"] = (f"difficulty {world(task)!r} draws no text; use 'medium' or "
                                                 "'hard' (task_difficulty={'ocr': 'medium'})")
            continue
        if spec.source == "coco":
            items = coco_items(_need(coco_dir, "coco_dir", "coco"), k, n=n, seed=seed)
        elif spec.source == "vqav2":
            items = vqav2_items(_need(vqav2_dir, "vqav2_dir", "vqav2"), k, n=n, seed=seed)
        else:
                items = shapeworld_items(task, k, n=n, seed=seed, difficulty=world(task), resolution=resolution)
        predictions = predict(predictor, items, batch_size=batch_size, rank_choices=rank_choices)
        score, extra = score_predictions(task, predictions, items)
        low, high = bootstrap_interval(item_scores(task, predictions, items), seed=seed)
        base = task_baseline(task, items)
        if base["answer"] is not None:
            extra["baseline_answer"] = base["answer"]
        key = f"{task}@{k}shot"
        report["tasks"][key] = dict(
            task=task, shots=k, metric=TASK_METRICS[task], score=score, interval=[low, high],
            baseline=base["score"], baseline_kind=base["kind"], above_baseline=low > base["score"], n=len(items),
            difficulty=world(task) if spec.source == "shapeworld" else None, extra={**extra, **base["extra"]},
            examples=[dict(id=it["id"], prediction=p, answer=it["answer"]) for it, p in zip(items[:5], predictions)])
        if progress is not None:
            progress(f"{key:>18}  {TASK_METRICS[task]:<12} {score:7.3f} [{low:.3f}, {high:.3f}]  "
                     f"(baseline {base['score']:.3f}, n={len(items)})")
    return report


def _has_text(difficulty: str) -> bool:
    from mm1lab.data.shapeworld import get_difficulty

    return get_difficulty(difficulty).text_prob > 0


def _need(path, name: str, suite: str) -> Path:
    if path is None:
        raise ValueError(f"the {suite!r} suite reads real files: pass {name}= (CLI: --{name.replace('_', '-')})")
    return Path(path)
