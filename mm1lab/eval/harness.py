"""Evaluation harness: MM1's k-shot pre-training and chat (SFT) protocols on ShapeWorld, COCO and VQAv2.

A suite is a list of (task, shots) pairs, and each task has one metric (`TASK_METRICS`). Items come from
`mm1lab.data.evalsets.eval_set` (ShapeWorld) or from the COCO / VQAv2 readers in `mm1lab.data.eval_formats`; each
carries both prompt formats: `prompt` + `images` (k interleaved demonstrations, for pre-trained models) and
`chat_prompt` + `query_images` (zero-shot chat, for fine-tuned models). All templates live in `mm1lab.data.prompts`.

Everything that answers goes through one scoring path. A `Predictor` maps a batch of items to answer strings and,
for log-likelihood tasks, to choice indices: `ModelPredictor` wraps an MM1Model (batched greedy decoding),
`OraclePredictor` and `ConstantPredictor` (`mm1lab.eval.baselines`) are the two reference points.

Report: {"suite", "checkpoint", "config", "created", "skipped", "tasks": {"color@0shot": {"task", "shots",
"metric", "score", "baseline", "baseline_kind", "n", "extra", "examples"}, ...}}. Baselines: the majority
answer's score for closed-answer tasks (computed by scoring that constant answer), chance for the text task,
and the CIDEr-D of the most common reference caption used as every prediction for captions.
"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

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

Item = dict[str, Any]

# ---- suites and metrics -----------------------------------------------------------------------------------
TASK_METRICS = {
    "caption": "cider_d", "color": "vqa_accuracy", "shape": "vqa_accuracy", "position": "vqa_accuracy",
    "vqa": "vqa_accuracy", "count": "accuracy", "ocr": "exact_match", "pope": "accuracy",
    "multi_image": "accuracy", "text": "accuracy",
}  # fmt: skip
VQA_TASKS = ("color", "shape", "position", "vqa")
DEFAULT_NEW_TOKENS = {"caption": 48, "ocr": 16}   # every other task answers in a word or number
SHORT_NEW_TOKENS = 8


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
    if isinstance(suite, Suite):
        return suite
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    return SUITES[suite]


# ---- scoring ----------------------------------------------------------------------------------------------
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


# ---- predictors -------------------------------------------------------------------------------------------
class Predictor(Protocol):
    """Anything that answers eval items: a model, an oracle, a constant."""

    def __call__(self, items: Sequence[Item]) -> list[str]:
        """One answer string per item (generated after the item's prompt)."""

    def score_choices(self, items: Sequence[Item]) -> list[int]:
        """One index into `item["choices"]` per item (e.g. the most likely choice)."""


EVAL_MAX_IMAGES = 64


def eval_config(cfg):
    """`cfg` with `max_images` raised to `EVAL_MAX_IMAGES` for prompt encoding: MM1's 16 images per sequence is a
    pre-training data cap, and an 8-shot two-image prompt holds 18; the context length still bounds a prompt."""
    return dataclasses.replace(cfg, max_images=max(cfg.max_images, EVAL_MAX_IMAGES))


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ModelPredictor:
    """Batched, left-padded greedy decoding (deterministic) and log-likelihood choice ranking for an MM1Model.

    Args:
        model, tokenizer: an `MM1Model` and its `MM1Tokenizer`.
        collator: a `mm1lab.data.collate.Collator` (default: one built from tokenizer and model.cfg).
        chat: read `chat_prompt` + `query_images` (SFT) instead of the k-shot `prompt` + `images`; decoding stops
            at `<|end|>` / eos, else at the first newline (the demonstration separator) / eos.
        max_new_tokens: per answer; default `DEFAULT_NEW_TOKENS` by task, else `SHORT_NEW_TOKENS`.
    """

    def __init__(self, model, tokenizer, collator=None, *, chat: bool = False, max_new_tokens: int | None = None):
        from mm1lab.data.collate import Collator

        self.model, self.tok, self.chat, self.max_new_tokens = model, tokenizer, chat, max_new_tokens
        self.collator = collator if collator is not None else Collator(tokenizer, eval_config(model.cfg))
        if chat:
            self.stop_tokens = [tokenizer.end_id, tokenizer.eos_id]
        else:   # every token that contains a newline ends the answer, as it ends a demonstration
            self.stop_tokens = [tokenizer.eos_id] + [
                i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i], skip_special=False)]

    def _prompt(self, item: Item) -> tuple[str, list]:
        if not self.chat:
            return item["prompt"], list(item["images"])
        if item.get("chat_prompt") is None:
            raise ValueError(f"item {item.get('id')} ({item['task']}) has no chat prompt; evaluate it with k-shot "
                             "prompts (a pre-training suite) instead")
        return item["chat_prompt"], list(item["query_images"])

    def _encode(self, item: Item) -> dict[str, Any]:
        try:
            return self.collator.encode_prompt(*self._prompt(item))
        except ValueError as exc:
            raise ValueError(f"eval item {item.get('id')}: {exc}") from None

    @torch.no_grad()
    def __call__(self, items: Sequence[Item]) -> list[str]:
        from mm1lab.generate import left_pad

        encoded = [self._encode(it) for it in items]
        ids, mask = left_pad([e["input_ids"][0].tolist() for e in encoded], pad_id=self.tok.pad_id)
        images = [e["images"] for e in encoded if e["images"] is not None]
        task = items[0]["task"]
        budget = self.max_new_tokens or DEFAULT_NEW_TOKENS.get(task, SHORT_NEW_TOKENS)
        device = next(self.model.parameters()).device
        with _eval_mode(self.model):
            new = self.model.generate(ids.to(device), torch.cat(images).to(device) if images else None,
                                      attention_mask=mask.to(device), max_new_tokens=budget,
                                      stop_tokens=self.stop_tokens)
        texts = [self.tok.decode(row) for row in new.tolist()]
        return [t.strip() if self.chat else t.split("\n")[0].strip() for t in texts]

    @torch.no_grad()
    def loglikelihoods(self, items: Sequence[Item]) -> list[list[float]]:
        """Summed log-probability of each choice's tokens after the item's prompt (one list per item).

        A choice gets a leading space unless it has one: answers follow "Answer:" / `<|assistant|>` that way in
        training, and the byte-level BPE keeps the space on the word ("Ġred").
        """
        rows, conts, images = [], [], []
        for item in items:
            e = self._encode(item)
            context = e["input_ids"][0].tolist()
            for choice in item["choices"]:
                cont = self.tok.encode(choice if choice[:1].isspace() else " " + choice)
                rows.append(context + cont)
                conts.append(len(cont))
                if e["images"] is not None:
                    images.append(e["images"])
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.tok.pad_id, dtype=torch.long)   # right-padded: positions stay 0..
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for b, row in enumerate(rows):
            ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), True
        device = next(self.model.parameters()).device
        with _eval_mode(self.model):
            logits = self.model(ids.to(device), torch.cat(images).to(device) if images else None,
                                attention_mask=mask.to(device)).logits.float().cpu()
        scores = []
        for b, (row, k) in enumerate(zip(rows, conts)):
            logp = F.log_softmax(logits[b, len(row) - k - 1:len(row) - 1], dim=-1)   # position t predicts t + 1
            scores.append(float(logp.gather(-1, ids[b, len(row) - k:len(row), None]).sum()))
        out, at = [], 0
        for item in items:
            out.append(scores[at:at + len(item["choices"])])
            at += len(item["choices"])
        return out

    def score_choices(self, items: Sequence[Item]) -> list[int]:
        """The most likely choice per item (ties go to the first)."""
        return [max(range(len(s)), key=s.__getitem__) for s in self.loglikelihoods(items)]


# ---- items ------------------------------------------------------------------------------------------------
def shapeworld_items(task: str, shots: int, *, n: int, seed: int = 0, difficulty: str = "easy") -> list[Item]:
    """ShapeWorld eval items (held-out seeds); see `mm1lab.data.evalsets.eval_set`."""
    from mm1lab.data.evalsets import eval_set

    return eval_set(task, n=n, seed=seed, difficulty=difficulty, shots=shots)


DEMO_POOL = 32   # extra items read from a real file to draw demonstrations from


def _subset_json(path: Path, key: str, limit: int, tmp: Path) -> Path:
    """`path` itself, or a copy in `tmp` with only the first `limit` entries of `key` (and their annotations),
    so the readers (which decode every image they list) touch only the images the evaluation needs."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if len(data.get(key, [])) <= limit:
        return path
    data[key] = data[key][:limit]
    if key == "images":   # COCO keeps captions in the same file; VQAv2 answers are matched by question id later
        keep = {entry["id"] for entry in data["images"]}
        data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    out = tmp / path.name
    out.write_text(json.dumps(data))
    return out


def _first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no {what} under {root}; looked for {', '.join(candidates)} (see docs/evaluation.md)")


def coco_items(coco_dir: str | Path, shots: int, *, n: int, seed: int = 0) -> list[Item]:
    """COCO-captions items from `coco_dir` (annotations/captions_val2014.json or captions_val2014.json, and
    the images in val2014/); demonstrations are other images of the same file, their first reference caption."""
    from mm1lab.data.eval_formats import read_coco_captions

    root = Path(coco_dir)
    ann = _first_existing(root, ("annotations/captions_val2014.json", "captions_val2014.json"), "COCO captions JSON")
    images = _first_existing(root, ("val2014", "images/val2014", "images"), "COCO image folder")
    with tempfile.TemporaryDirectory() as tmp:
        pool = read_coco_captions(_subset_json(ann, "images", n + DEMO_POOL, Path(tmp)), images)
    pool = [dict(question="", answer=p["answers"][0], answers=p["answers"], images=[p["image"]], id=p["id"])
            for p in pool if p["answers"]]
    return _real_items("caption", pool, shots, n=n, seed=seed)


def vqav2_items(vqav2_dir: str | Path, shots: int, *, n: int, seed: int = 0) -> list[Item]:
    """VQAv2 items from `vqav2_dir` (the questions and annotations JSON, images in val2014/); demonstrations
    are other questions of the same file with their most common ("multiple choice") answer."""
    from mm1lab.data.eval_formats import read_vqav2

    root = Path(vqav2_dir)
    questions = _first_existing(root, ("v2_OpenEnded_mscoco_val2014_questions.json",
                                       "questions/v2_OpenEnded_mscoco_val2014_questions.json"), "VQAv2 questions JSON")
    answers = _first_existing(root, ("v2_mscoco_val2014_annotations.json",
                                     "annotations/v2_mscoco_val2014_annotations.json"), "VQAv2 annotations JSON")
    images = _first_existing(root, ("val2014", "images/val2014", "images"), "VQAv2 (COCO) image folder")
    with tempfile.TemporaryDirectory() as tmp:
        pool = read_vqav2(_subset_json(questions, "questions", n + DEMO_POOL, Path(tmp)), answers, images)
    pool = [dict(question=p["question"], answer=p["answer"], answers=p["answers"], images=[p["image"]], id=p["id"])
            for p in pool if p["answers"]]
    return _real_items("vqa", pool, shots, n=n, seed=seed)


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


# ---- evaluate ---------------------------------------------------------------------------------------------
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
             checkpoint: str | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate a model (or any `Predictor`) on a suite and return the report (see the module docstring).

    Args:
        model: an `MM1Model` (wrapped in a `ModelPredictor` with `tokenizer`) or a `Predictor`.
        suite: a name in `SUITES` or a `Suite`. shots: default the suite's ((0, 4, 8); chat suites (0,)).
        n: items per (task, shots); the same items at every shot count. tasks: a subset of the suite's tasks.
        rank_choices: answer closed-set tasks (colour, count, ...) by log-likelihood ranking of their choices.
        coco_dir / vqav2_dir: the real files for the `coco` / `vqav2` suites (layout: docs/evaluation.md).
        progress: called with a line per finished (task, shots), e.g. `print`.
    """
    spec = get_suite(suite)
    entries = spec.entries(shots, tasks)
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("evaluate(model, tokenizer, ...): a model needs its tokenizer (mm1lab.data.tokenizer)")
        predictor = ModelPredictor(model, tokenizer, chat=spec.chat, max_new_tokens=max_new_tokens)
    else:
        predictor = model
    report: dict[str, Any] = dict(
        suite=spec.name, checkpoint=None if checkpoint is None else str(checkpoint),
        config=dict(shots=sorted({k for _, k in entries}), n=n, seed=seed, difficulty=difficulty,
                    batch_size=batch_size, max_new_tokens=max_new_tokens, rank_choices=rank_choices,
                    chat=spec.chat, predictor=getattr(predictor, "name", type(predictor).__name__),
                    model=getattr(getattr(model, "cfg", None), "name", None)),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), skipped={}, tasks={})
    for task, k in entries:
        if spec.source == "shapeworld" and task == "ocr" and tasks is None and not _has_text(difficulty):
            report["skipped"][f"ocr@{k}shot"] = f"difficulty {difficulty!r} draws no text; use 'medium' or 'hard'"
            continue
        if spec.source == "coco":
            items = coco_items(_need(coco_dir, "coco_dir", "coco"), k, n=n, seed=seed)
        elif spec.source == "vqav2":
            items = vqav2_items(_need(vqav2_dir, "vqav2_dir", "vqav2"), k, n=n, seed=seed)
        else:
            items = shapeworld_items(task, k, n=n, seed=seed, difficulty=difficulty)
        predictions = predict(predictor, items, batch_size=batch_size, rank_choices=rank_choices)
        score, extra = score_predictions(task, predictions, items)
        base = task_baseline(task, items)
        if base["answer"] is not None:
            extra["baseline_answer"] = base["answer"]
        key = f"{task}@{k}shot"
        report["tasks"][key] = dict(
            task=task, shots=k, metric=TASK_METRICS[task], score=score, baseline=base["score"],
            baseline_kind=base["kind"], n=len(items), extra={**extra, **base["extra"]},
            examples=[dict(id=it["id"], prediction=p, answer=it["answer"]) for it, p in zip(items[:5], predictions)])
        if progress is not None:
            progress(f"{key:>18}  {TASK_METRICS[task]:<12} {score:7.3f}  (baseline {base['score']:.3f}, "
                     f"n={len(items)})")
    return report


def _has_text(difficulty: str) -> bool:
    from mm1lab.data.shapeworld import get_difficulty

    return get_difficulty(difficulty).text_prob > 0


def _need(path, name: str, suite: str) -> Path:
    if path is None:
        raise ValueError(f"the {suite!r} suite reads real files: pass {name}= (CLI: --{name.replace('_', '-')})")
    return Path(path)
