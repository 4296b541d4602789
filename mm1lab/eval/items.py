"""Eval items: the questions a suite asks, from generated ShapeWorld scenes or from real COCO / VQAv2 files.

Items come from `mm1lab.data.evalsets.eval_set` (ShapeWorld) or from the COCO / VQAv2 readers in
`mm1lab.data.eval_formats`; each carries both prompt formats: `prompt` + `images` (k interleaved demonstrations,
for pre-trained models) and `chat_prompt` + `query_images` (zero-shot chat, for fine-tuned models). All templates
live in `mm1lab.data.prompts`. An item is a plain dict in the layout of `mm1lab.data.evalsets`: `id`, `task`,
`question`, `answer`, `answers` (the references), `choices` (None unless ranked), the two prompt formats, `shots`.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Item = dict[str, Any]

DEMO_POOL = 32   # extra items read from a real file to draw demonstrations from


def shapeworld_items(task: str, shots: int, *, n: int, seed: int = 0, difficulty: str = "easy",
                     resolution: int = 64) -> list[Item]:
    """ShapeWorld eval items (held-out seeds) rendered at `resolution`; see `mm1lab.data.evalsets.eval_set`."""
    from mm1lab.data.evalsets import eval_set

    return eval_set(task, n=n, seed=seed, difficulty=difficulty, shots=shots, resolution=resolution)


def _first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no {what} under {root}; looked for {', '.join(candidates)} (see docs/evaluation.md)")


def coco_items(coco_dir: str | Path, shots: int, *, n: int, seed: int = 0) -> list[Item]:
    """COCO-captions items from `coco_dir` (annotations/captions_val2014.json or captions_val2014.json, and
    the images in val2014/); demonstrations are other images of the same file, their first reference caption."""
    from mm1lab.data.eval_formats import read_coco_captions
    from mm1lab.data.sample import Skips

    root, skips = Path(coco_dir), Skips()
    ann = _first_existing(root, ("annotations/captions_val2014.json", "captions_val2014.json"), "COCO captions JSON")
    images = _first_existing(root, ("val2014", "images/val2014", "images"), "COCO image folder")
    pool = read_coco_captions(ann, images, limit=n + DEMO_POOL, skips=skips)   # only these images are decoded
    _report_skips(ann, skips)
    pool = [dict(question="", answer=p["answers"][0], answers=p["answers"], images=[p["image"]], id=p["id"])
            for p in pool if p["answers"]]
    return _real_items("caption", pool, shots, n=n, seed=seed)


def vqav2_items(vqav2_dir: str | Path, shots: int, *, n: int, seed: int = 0) -> list[Item]:
    """VQAv2 items from `vqav2_dir` (the questions and annotations JSON, images in val2014/); demonstrations
    are other questions of the same file with their most common ("multiple choice") answer."""
    from mm1lab.data.eval_formats import read_vqav2
    from mm1lab.data.sample import Skips

    root, skips = Path(vqav2_dir), Skips()
    questions = _first_existing(root, ("v2_OpenEnded_mscoco_val2014_questions.json",
                                       "questions/v2_OpenEnded_mscoco_val2014_questions.json"), "VQAv2 questions JSON")
    answers = _first_existing(root, ("v2_mscoco_val2014_annotations.json",
                                     "annotations/v2_mscoco_val2014_annotations.json"), "VQAv2 annotations JSON")
    images = _first_existing(root, ("val2014", "images/val2014", "images"), "VQAv2 (COCO) image folder")
    pool = read_vqav2(questions, answers, images, limit=n + DEMO_POOL, skips=skips)
    _report_skips(questions, skips)
    pool = [dict(question=p["question"], answer=p["answer"], answers=p["answers"], images=[p["image"]], id=p["id"])
            for p in pool if p["answers"]]
    return _real_items("vqa", pool, shots, n=n, seed=seed)


def _report_skips(path: Path, skips) -> None:
    """Entries a reader skipped are left out of the evaluation: say so (how many, why, the first), never silently."""
    if skips.counts:
        warnings.warn(f"{path}: {sum(skips.counts.values())} entries skipped {dict(skips.counts)} and left out of "
                      f"the evaluation, e.g. {skips.examples[0]} (docs/robustness.md)", stacklevel=3)


def _real_items(task: str, pool: list[Item], shots: int, *, n: int, seed: int) -> list[Item]:
    """Eval items (the evalsets layout) for the first `n` of `pool`, each with `shots` demonstrations from the rest."""
    from mm1lab.data.prompts import chat_vqa_prompt, kshot_prompt

    if shots > len(pool) - 1:
        raise ValueError(f"{task}: {shots}-shot prompts need at least {shots + 1} usable items, the file has "
                         f"{len(pool)}")
    items = []
    for i, query in enumerate(pool[:n]):
        rng = random.Random(f"demos:{task}:{seed}:{query['id']}")
        demos = [pool[j] for j in rng.sample([j for j in range(len(pool)) if j != i], shots)]
        prompt, images = kshot_prompt(demos, query, kind="caption" if task == "caption" else "vqa")
        chat = chat_vqa_prompt(query["question"], 1, short=True) if task == "vqa" else None
        items.append(dict(id=f"{task}-{query['id']}", task=task, question=query["question"], answer=query["answer"],
                          answers=query["answers"], choices=None, prompt=prompt, images=images, chat_prompt=chat,
                          query_images=query["images"], shots=shots))
    if not items:
        raise ValueError(f"{task}: no usable items (every entry lacked an image or reference answers)")
    return items
