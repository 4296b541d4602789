"""Reference predictors that share the model's scoring path: an oracle and a constant answerer.

Both follow the `Predictor` protocol of `mm1lab.eval.predictor`: called on a batch of eval items they return one
answer string per item, and `score_choices(items)` returns one choice index per item (log-likelihood tasks).

- `OraclePredictor` answers from each item's ground truth, so it scores 100% on every closed-answer task. For
  captions it returns one of the item's own references (`item["answer"]`); CIDEr-D compares it against all
  references, itself included, which is high but not the metric's maximum (the other references differ).
- `ConstantPredictor` gives the same answer to every item of a task. Built with `from_report`, it answers each
  task's majority answer, so evaluating it reproduces the report's baselines exactly (the tests check this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class OraclePredictor:
    """Answers from the ground truth: `item["answer"]`, and `item["label"]` (or the answer's index) for choices."""

    name = "oracle"

    def __call__(self, items: Sequence[dict[str, Any]]) -> list[str]:
        return [item["answer"] for item in items]

    def score_choices(self, items: Sequence[dict[str, Any]]) -> list[int]:
        return [item["label"] if item.get("label") is not None else list(item["choices"]).index(item["answer"])
                for item in items]


class ConstantPredictor:
    """The same answer for every item of a task.

    Args:
        answers: {task: answer} or {"task@kshot": answer}; the more specific key wins.
        choice: the index `score_choices` returns for every item (clipped to the item's number of choices).
    """

    name = "constant"

    def __init__(self, answers: Mapping[str, str], *, choice: int = 0):
        self.answers, self.choice = dict(answers), choice

    @classmethod
    def from_report(cls, report: Mapping[str, Any], *, choice: int = 0) -> ConstantPredictor:
        """The constant predictor whose answers are the baseline answers stated in an `evaluate` report."""
        answers = {key: entry["extra"]["baseline_answer"] for key, entry in report["tasks"].items()
                   if "baseline_answer" in entry.get("extra", {})}
        return cls(answers, choice=choice)

    def _answer(self, item: dict[str, Any]) -> str:
        for key in (f"{item['task']}@{item.get('shots', 0)}shot", item["task"]):
            if key in self.answers:
                return self.answers[key]
        raise KeyError(f"ConstantPredictor has no answer for task {item['task']!r} (item {item.get('id')}); "
                       f"it knows {sorted(self.answers)}")

    def __call__(self, items: Sequence[dict[str, Any]]) -> list[str]:
        return [self._answer(item) for item in items]

    def score_choices(self, items: Sequence[dict[str, Any]]) -> list[int]:
        return [min(self.choice, len(item["choices"]) - 1) for item in items]
