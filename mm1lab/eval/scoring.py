"""Scoring eval answers with each task's metric, and the baseline every score is read against.

Everything that answers (a model, the oracle, a constant) is scored by `score_predictions`, so a baseline computed
here and a model's score are directly comparable. Baselines: the majority answer's score for closed-answer tasks
(computed by scoring that constant answer), chance for the text task, and the CIDEr-D of the most common
reference caption used as every prediction for captions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mm1lab.eval.items import Item
from mm1lab.eval.metrics import (
    bleu,
    cider_d,
    counting_metrics,
    exact_match,
    majority_baseline,
    ocr_metrics,
    pope_metrics,
    vqa_accuracy,
)
from mm1lab.eval.suites import TASK_METRICS, VQA_TASKS


def _vqa_references(item: Item) -> list[str]:
    """VQAv2 has ten human answers; a ShapeWorld answer is repeated as ten unanimous ones (VQA accuracy with
    a single reference would be 0 for a correct answer: it averages over leave-one-annotator-out subsets)."""
    answers = list(item["answers"])
    return answers if len(answers) >= 10 else (answers * 10)[:10]


def score_predictions(task: str, predictions: Sequence[str], items: Sequence[Item]) -> tuple[float, dict]:
    """(score, extra metrics) of `predictions` on `items` with the task's metric (`TASK_METRICS`)."""
    if len(predictions) != len(items) or not items:
        raise ValueError(f"{task}: need one prediction per item (> 0 items); got {len(predictions)} and {len(items)}")
    mean = lambda xs: sum(xs) / len(xs)
    if task == "caption":
        candidates = dict(enumerate(predictions))
        references = {i: list(item["answers"]) for i, item in enumerate(items)}
        return cider_d(candidates, references)[0], {"bleu4": bleu(candidates, references)[0]}
    if task in VQA_TASKS:
        return mean([vqa_accuracy(p, _vqa_references(it)) for p, it in zip(predictions, items)]), {}
    if task == "count":
        m = counting_metrics(predictions, [int(it["answer"]) for it in items])
        return m.pop("accuracy"), m
    if task == "ocr":
        m = ocr_metrics(predictions, [it["answer"] for it in items])
        return m.pop("exact_match"), m
    if task == "pope":
        m = pope_metrics(predictions, [it["answer"] for it in items])
        return m.pop("accuracy"), m
    if task == "multi_image":
        return mean([exact_match(p, it["answer"]) for p, it in zip(predictions, items)]), {}
    if task == "text":   # predictions are the chosen choices' text
        return mean([float(p == it["choices"][it["label"]]) for p, it in zip(predictions, items)]), {}
    raise ValueError(f"no metric for task {task!r}; known tasks: {', '.join(TASK_METRICS)}")


def item_scores(task: str, predictions: Sequence[str], items: Sequence[Item]) -> list[float]:
    """Each item's share of the task's score: their mean is `score_predictions`' score. CIDEr-D keeps the corpus
    IDF of all `items` (its per-image scores); every other metric scores one item at a time."""
    if task == "caption":
        per_image = cider_d(dict(enumerate(predictions)), {i: list(it["answers"]) for i, it in enumerate(items)})[1]
        return [per_image[i] for i in range(len(items))]
    return [score_predictions(task, [p], [it])[0] for p, it in zip(predictions, items)]


def bootstrap_interval(scores: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores` (items resampled with replacement, seeded)."""
    import torch

    values = torch.tensor(list(scores), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (resamples, len(values)), generator=generator)
    means = values[picks].mean(1)
    tail = (1 - level) / 2
    return float(means.quantile(tail)), float(means.quantile(1 - tail))


def task_baseline(task: str, items: Sequence[Item]) -> dict[str, Any]:
    """The reference score beside a task's score: {kind, score, answer (the constant answer, or None), extra}.

    Closed answers: the majority answer (`metrics.majority_baseline`), scored through `score_predictions` as if
    a model gave it to every item; for ShapeWorld this equals the majority share. Captions: the most common
    reference caption as every prediction. Text: chance, the mean of 1 / number of choices.
    """
    if task == "text":
        return dict(kind="chance", score=sum(1 / len(it["choices"]) for it in items) / len(items), answer=None,
                    extra={})
    if task == "caption":
        counts = Counter(ref for it in items for ref in it["answers"])
        answer = counts.most_common(1)[0][0]
        return dict(kind="constant-caption", score=score_predictions(task, [answer] * len(items), items)[0],
                    answer=answer, extra={})
    # OCR is scored case-sensitively, so its majority answer must not be normalised; the rest compare normalised
    answers = [" ".join(it["answer"].split()) if task == "ocr" else it["answer"] for it in items]
    answer, share = majority_baseline(answers, normalize=task != "ocr")
    score = score_predictions(task, [answer] * len(items), items)[0]
    return dict(kind="majority", score=score, answer=answer, extra={"majority_share": share})
