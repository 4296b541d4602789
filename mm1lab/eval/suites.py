"""Evaluation tasks and suites: which metric scores each task, how long its answers are, and which (task, shots)
pairs a suite evaluates.

A suite is a list of (task, shots) pairs, and each task has one metric (`TASK_METRICS`). Pre-training suites prompt
with k interleaved demonstrations (k = 0, 4, 8, as in MM1); chat suites prompt like SFT and are zero-shot only.
A suite's `source` says where its items come from (`mm1lab.eval.items`): generated ShapeWorld scenes, or the real
COCO-captions / VQAv2 files on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mm1lab.config import pick

# ---- tasks ------------------------------------------------------------------------------------------------
TASK_METRICS = {
    "caption": "cider_d", "color": "vqa_accuracy", "shape": "vqa_accuracy", "position": "vqa_accuracy",
    "vqa": "vqa_accuracy", "count": "accuracy", "ocr": "exact_match", "pope": "accuracy",
    "multi_image": "accuracy", "text": "accuracy",
}  # fmt: skip
VQA_TASKS = ("color", "shape", "position", "vqa")   # scored with VQA accuracy against (up to) ten references
DEFAULT_NEW_TOKENS = {"caption": 48, "ocr": 16}   # every other task answers in a word or number
SHORT_NEW_TOKENS = 8


# ---- suites -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suite:
    """A named set of tasks, each evaluated at every shot count. `chat`: prompt like SFT (zero-shot only)."""

    name: str
    tasks: tuple[str, ...]
    shots: tuple[int, ...] = (0, 4, 8)
    chat: bool = False
    source: str = "shapeworld"   # or "coco", "vqav2": the real benchmark files

    def entries(self, shots: Sequence[int] | None = None,
                tasks: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """The (task, shots) pairs to evaluate, in report order (task-major)."""
        shots = tuple(self.shots if shots is None else shots)
        if self.chat and shots != (0,):
            raise ValueError(f"suite {self.name!r} uses chat prompts, which are zero-shot; got shots={shots}. "
                             "Use shots=(0,) or a pre-training suite for k-shot prompts")
        if any(k < 0 for k in shots):
            raise ValueError(f"shots must be >= 0, got {shots}")
        unknown = [t for t in tasks or () if t not in self.tasks]
        if unknown:
            raise ValueError(f"suite {self.name!r} has no task(s) {unknown}; its tasks are {', '.join(self.tasks)}")
        return [(task, k) for task in (tasks or self.tasks) for k in shots]


SHAPEWORLD_TASKS = ("caption", "vqa", "color", "count", "shape", "position", "ocr", "pope", "multi_image", "text")
SUITES = {
    "shapeworld-pretrain": Suite(name="shapeworld-pretrain", tasks=SHAPEWORLD_TASKS),
    "shapeworld-sft": Suite(name="shapeworld-sft", tasks=SHAPEWORLD_TASKS, shots=(0,), chat=True),
    "coco": Suite(name="coco", tasks=("caption",), source="coco"),
    "vqav2": Suite(name="vqav2", tasks=("vqa",), source="vqav2"),
}


def get_suite(suite: str | Suite) -> Suite:
    """A `Suite` by name (see `SUITES`), or pass one through."""
    return pick(SUITES, suite, "suite", Suite)
