"""Evaluation formats: COCO-captions annotation JSON and VQAv2 questions + annotations JSON.

A researcher with the real COCO or VQAv2 files points these readers at them; images are found by the COCO file
naming (COCO_val2014_000000000042.jpg). Missing or corrupt images are skipped and counted (or, strictly, raise).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from mm1lab.data.formats import jpeg_bytes, open_image
from mm1lab.data.sample import DataError, Skips, SkipSample


# ---- evaluation: COCO captions and VQAv2 ----------------------------------------------------------------
def write_coco_captions(items: Iterable[tuple[int, Image.Image, list[str]]], ann_path: str | Path,
                        image_dir: str | Path, *, split: str = "val2014", quality: int = 90) -> Path:
    """Write (image_id, image, captions) as a COCO captions annotation file plus COCO-named JPEGs."""
    ann_path, image_dir = Path(ann_path), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, image, captions in items:
        name = f"COCO_{split}_{image_id:012d}.jpg"
        (image_dir / name).write_bytes(jpeg_bytes(image, quality))
        images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "caption": c} for c in captions]
    data = {"info": {"description": "ShapeWorld in COCO captions format"}, "images": images,
            "annotations": annotations, "type": "captions"}
    ann_path.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")
    return ann_path


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def read_coco_captions(ann_path: str | Path, image_dir: str | Path, *, strict: bool = False,
                       skips: Skips | None = None) -> list[dict[str, Any]]:
    """Items {id, file_name, image (PIL), answers (reference captions)}; bad images skipped and counted."""
    data, skips = _load_json(Path(ann_path)), skips if skips is not None else Skips(strict=strict)
    refs: dict[int, list[str]] = {}
    for ann in data.get("annotations", []):
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    items = []
    for entry in data.get("images", []):
        where = f"{ann_path} image id={entry.get('id')}"
        try:
            image = open_image(Path(image_dir) / entry["file_name"], where)
        except SkipSample as skip:
            skips.add(skip)
            continue
        items.append({"id": entry["id"], "file_name": entry["file_name"], "image": image,
                      "answers": refs.get(entry["id"], [])})
    return items


def write_vqav2(items: Iterable[dict], questions_path: str | Path, annotations_path: str | Path,
                image_dir: str | Path, *, split: str = "val2014", quality: int = 90) -> None:
    """Write {question_id, image_id, image, question, answers (list), answer_type} as VQAv2 JSON + COCO JPEGs."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, annotations, written = [], [], set()
    for it in items:
        if it["image_id"] not in written:
            (image_dir / f"COCO_{split}_{it['image_id']:012d}.jpg").write_bytes(jpeg_bytes(it["image"], quality))
            written.add(it["image_id"])
        questions.append({"question_id": it["question_id"], "image_id": it["image_id"], "question": it["question"]})
        answers = (list(it["answers"]) * 10)[:10]   # VQAv2 has ten human answers per question
        annotations.append({"question_id": it["question_id"], "image_id": it["image_id"],
                            "multiple_choice_answer": answers[0], "answer_type": it.get("answer_type", "other"),
                            "question_type": it.get("question_type", "what"),
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(answers)]})
    meta = {"data_subtype": split, "data_type": "mscoco", "task_type": "Open-Ended"}
    Path(questions_path).write_text(json.dumps({**meta, "questions": questions}, sort_keys=True, indent=1) + "\n")
    Path(annotations_path).write_text(json.dumps({**meta, "annotations": annotations}, sort_keys=True, indent=1) + "\n")


def read_vqav2(questions_path: str | Path, annotations_path: str | Path | None, image_dir: str | Path, *,
               split: str = "val2014", strict: bool = False, skips: Skips | None = None) -> list[dict[str, Any]]:
    """Items {id (question_id), image_id, image, question, answers (ten), answer}; `annotations_path=None` for test."""
    skips = skips if skips is not None else Skips(strict=strict)
    questions = _load_json(Path(questions_path)).get("questions", [])
    anns = {} if annotations_path is None else {
        a["question_id"]: a for a in _load_json(Path(annotations_path)).get("annotations", [])}
    images: dict[int, Image.Image | None] = {}
    items = []
    for q in questions:
        where = f"{questions_path} question_id={q.get('question_id')}"
        if q["image_id"] not in images:
            try:
                images[q["image_id"]] = open_image(Path(image_dir) / f"COCO_{split}_{q['image_id']:012d}.jpg", where)
            except SkipSample as skip:
                skips.add(skip)
                images[q["image_id"]] = None
        if images[q["image_id"]] is None:
            continue
        ann = anns.get(q["question_id"], {})
        items.append({"id": q["question_id"], "image_id": q["image_id"], "image": images[q["image_id"]],
                      "question": q["question"], "answers": [a["answer"] for a in ann.get("answers", [])],
                      "answer": ann.get("multiple_choice_answer")})
    return items
