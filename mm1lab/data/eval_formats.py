"""Evaluation formats: COCO-captions annotation JSON and VQAv2 questions + annotations JSON.

A researcher with the real COCO or VQAv2 files points these readers at them; images are found by the COCO file
naming (COCO_val2014_000000000042.jpg). Entries with missing or wrongly typed fields, image paths that leave the
image folder, and missing or corrupt images are skipped and counted, named by file and entry (or, strictly, raise).
A file that is not JSON at all raises `DataError` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from mm1lab.data.formats import jpeg_bytes
from mm1lab.data.guards import check_text, image_path, is_int, open_image, read_json_file
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


def _entries(data: Any, key: str, path: Path) -> list:
    """`data[key]`, which must be a list (a file without it has no entries)."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with a {key!r} list, got {type(data).__name__}")
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(entries).__name__}")
    return entries


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SkipSample("bad_record", where, message)


def read_coco_captions(ann_path: str | Path, image_dir: str | Path, *, strict: bool = False,
                       skips: Skips | None = None, limit: int | None = None,
                       allow_absolute_paths: bool = False) -> list[dict[str, Any]]:
    """Items {id, file_name, image (PIL), answers (reference captions)}; bad entries and images skipped and counted.

    Args:
        limit: stop after this many good items (only their images are decoded).
        allow_absolute_paths: accept absolute `file_name`s (by default they, and `..`, are `path_outside_root`).
    """
    ann_path, skips = Path(ann_path), skips if skips is not None else Skips(strict=strict)
    data = read_json_file(ann_path)
    refs: dict[int, list[str]] = {}

    def caption(i: int, ann: Any) -> None:
        where = f"{ann_path} annotations[{i}]"
        _require(isinstance(ann, dict) and is_int(ann.get("image_id")) and isinstance(ann.get("caption"), str),
                 where, "an annotation needs an integer 'image_id' and a string 'caption'")
        check_text(ann["caption"], where)
        refs.setdefault(ann["image_id"], []).append(ann["caption"])

    def item(i: int, entry: Any) -> dict[str, Any]:
        where = f"{ann_path} images[{i}]" + (f" id={entry.get('id')!r}" if isinstance(entry, dict) else "")
        _require(isinstance(entry, dict) and is_int(entry.get("id")) and isinstance(entry.get("file_name"), str),
                 where, "an image entry needs an integer 'id' and a string 'file_name'")
        check_text(entry["file_name"], where)
        path = image_path(image_dir, entry["file_name"], where, allow_absolute=allow_absolute_paths)
        return {"id": entry["id"], "file_name": entry["file_name"], "image": open_image(path, where),
                "answers": refs.get(entry["id"], [])}

    for i, ann in enumerate(_entries(data, "annotations", ann_path)):
        skips.run(lambda: caption(i, ann))   # noqa: B023 - called at once
    items = []
    for i, entry in enumerate(_entries(data, "images", ann_path)):
        if limit is not None and len(items) >= limit:
            break
        found = skips.run(lambda: item(i, entry))   # noqa: B023 - called at once
        if found is not None:
            items.append(found)
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
               split: str = "val2014", strict: bool = False, skips: Skips | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Items {id (question_id), image_id, image, question, answers (ten), answer}; `annotations_path=None` for test.

    Bad entries, questions without an annotation and questions whose image is bad are skipped and counted, each
    question once. `limit`: stop after this many good items.
    """
    questions_path, skips = Path(questions_path), skips if skips is not None else Skips(strict=strict)
    anns: dict[int, dict] | None = None

    def annotation(i: int, a: Any) -> None:
        where = f"{annotations_path} annotations[{i}]"
        _require(isinstance(a, dict) and is_int(a.get("question_id")), where, "needs an integer 'question_id'")
        answers = a.get("answers", [])
        _require(isinstance(answers, list) and all(isinstance(x, dict) and isinstance(x.get("answer"), str)
                                                    for x in answers),
                 where, "'answers' must be a list of {\"answer\": str}")
        _require(isinstance(a.get("multiple_choice_answer"), (str, type(None))), where,
                 "'multiple_choice_answer' must be a string")
        check_text(a, where)
        anns[a["question_id"]] = a

    if annotations_path is not None:
        anns = {}
        for i, a in enumerate(_entries(read_json_file(annotations_path), "annotations", Path(annotations_path))):
            skips.run(lambda: annotation(i, a))   # noqa: B023 - called at once
    images: dict[int, Image.Image | SkipSample] = {}

    def item(i: int, q: Any) -> dict[str, Any]:
        where = f"{questions_path} questions[{i}]" + (
            f" question_id={q.get('question_id')!r}" if isinstance(q, dict) else "")
        _require(isinstance(q, dict) and is_int(q.get("question_id")) and is_int(q.get("image_id"))
                 and isinstance(q.get("question"), str), where,
                 "a question needs an integer 'question_id' and 'image_id' and a string 'question'")
        check_text(q["question"], where)
        ann = {} if anns is None else anns.get(q["question_id"])
        _require(ann is not None, where, f"no annotation with this question_id in {annotations_path}")
        image_id = q["image_id"]
        if image_id not in images:
            try:
                images[image_id] = open_image(Path(image_dir) / f"COCO_{split}_{image_id:012d}.jpg", where)
            except SkipSample as skip:
                images[image_id] = skip
        if isinstance(images[image_id], SkipSample):   # counted for every question that needs the image
            bad = images[image_id]
            raise SkipSample(bad.reason, where, bad.detail)
        return {"id": q["question_id"], "image_id": image_id, "image": images[image_id], "question": q["question"],
                "answers": [x["answer"] for x in ann.get("answers", [])], "answer": ann.get("multiple_choice_answer")}

    items = []
    for i, q in enumerate(_entries(read_json_file(questions_path), "questions", questions_path)):
        if limit is not None and len(items) >= limit:
            break
        found = skips.run(lambda: item(i, q))   # noqa: B023 - called at once
        if found is not None:
            items.append(found)
    return items
