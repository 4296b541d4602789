"""lmms-eval task functions for the committed COCO-captions and VQAv2 samples (`data_samples/eval/`).

lmms-eval loads the rows named by each YAML's `data_files` (the questions, or the COCO image entries) with HF
`datasets`, offline; `process_docs` then reads the same folder with mm1lab's own readers
(`mm1lab.data.eval_formats`: bad entries and images are skipped and reported, never loaded silently) and adds what
the row lacks: the reference answers and the image file. Scores come from `mm1lab.eval.scoring`, so they compare
directly with `mm1lab eval --suite coco / vqav2` at zero shots.

Prompt text depends on the model name (`lmms_eval_specific_kwargs`): `mm1lab` gets the SFT wording
(`prompts.user_content`, `text.DESCRIBE_TYPES`), `mm1lab_pretrained` the pre-training wording (`prompts.qa_text`,
`prompts.caption_text`), any other model lmms-eval's own vqav2 / coco wording from `pre_prompt` + `post_prompt`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from mm1lab.data.tokenizer import default_samples_dir

SAMPLES = default_samples_dir() / "eval"   # the YAMLs' data_files point into the same folders
VQAV2_FILES = ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014")
COCO_FILES = ("captions_val2014.json", "val2014")


def _dataset(rows: list[dict], source: Path):
    import datasets

    if not rows:
        raise ValueError(f"{source}: no usable entries for the lmms-eval task (see the warnings above)")
    return datasets.Dataset.from_list(rows)


def _report(path: Path, skips) -> None:
    if skips.counts:
        warnings.warn(f"{path}: {sum(skips.counts.values())} entries skipped {dict(skips.counts)} and left out of "
                      f"the lmms-eval task, e.g. {skips.examples[0]}", stacklevel=3)


def _missing(source: Path, ids: list) -> ValueError:
    return ValueError(f"{source}: entries {ids[:5]} of the task's data_files are not usable in {source.parent} "
                      "(see the warnings above); point the YAML's data_files and SAMPLES at the same folder")


# ---- VQAv2 ------------------------------------------------------------------------------------------------
def vqav2_docs(dataset):
    """process_docs: each loaded question with its ten answers, its most common answer, answer type, the choices
    for the multiple-choice task (the most common answers of all sample questions of that type) and image path."""
    from mm1lab.data.eval_formats import read_vqav2
    from mm1lab.data.guards import read_json_file
    from mm1lab.data.sample import Skips

    folder = SAMPLES / "vqav2"
    questions, annotations, images = (folder / name for name in VQAV2_FILES)
    skips = Skips()
    items = {it["id"]: it for it in read_vqav2(questions, annotations, images, skips=skips)}
    _report(questions, skips)
    kinds = {a.get("question_id"): a.get("answer_type", "other")
             for a in read_json_file(annotations).get("annotations", []) if isinstance(a, dict)}
    absent = [row["question_id"] for row in dataset if row["question_id"] not in items]
    if absent:
        raise _missing(questions, absent)
    choices = {kind: sorted({it["answer"] for q, it in items.items() if kinds.get(q) == kind and it["answer"]})
               for kind in set(kinds.values())}   # a closed answer set per type, for the multiple-choice task
    rows = []
    for row in dataset:
        item, kind = items[row["question_id"]], kinds[row["question_id"]]
        rows.append(dict(question_id=row["question_id"], image_id=row["image_id"], question=row["question"],
                         answers=item["answers"], answer=item["answer"], answer_type=kind, choices=choices[kind],
                         image=str(images / f"COCO_val2014_{row['image_id']:012d}.jpg")))
    return _dataset(rows, questions)


def vqav2_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The question in the model's wording: mm1lab's SFT or pre-training template, else pre_prompt/post_prompt."""
    from mm1lab.data.prompts import qa_text, user_content

    kwargs = lmms_eval_specific_kwargs or {}
    kind = kwargs.get("mm1lab_prompt")
    if kind == "chat":
        return user_content(doc["question"], 0, short=True)   # images go first, added by the model
    if kind == "plain":
        return qa_text(doc["question"], None, 0)
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def vqav2_process_results(doc, results):
    """VQA accuracy of the answer against the ten references (`mm1lab.eval.scoring`, as `mm1lab eval` scores)."""
    from mm1lab.eval.scoring import score_predictions

    return {"vqa_accuracy": score_predictions("vqa", [results[0]], [{"answers": doc["answers"]}])[0]}


def vqav2_choices(doc):
    """doc_to_choice: the multiple-choice answers of every sample question with the doc's answer type, sorted."""
    return doc["choices"]


def vqav2_target(doc):
    """doc_to_target for the multiple-choice task: the index of the doc's answer among its choices."""
    return doc["choices"].index(doc["answer"])


# ---- COCO captions ----------------------------------------------------------------------------------------
def coco_docs(dataset):
    """process_docs: each loaded COCO image entry with its reference captions and image path."""
    from mm1lab.data.eval_formats import read_coco_captions
    from mm1lab.data.sample import Skips

    folder = SAMPLES / "coco"
    annotations, images = (folder / name for name in COCO_FILES)
    skips = Skips()
    items = {it["id"]: it for it in read_coco_captions(annotations, images, skips=skips) if it["answers"]}
    _report(annotations, skips)
    absent = [row["id"] for row in dataset if row["id"] not in items]
    if absent:
        raise _missing(annotations, absent)
    return _dataset([dict(id=row["id"], file_name=row["file_name"], answers=items[row["id"]]["answers"],
                          image=str(images / row["file_name"])) for row in dataset], annotations)


def coco_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The caption request: mm1lab's SFT question, its pre-training "Caption:", else lmms-eval's coco prompt."""
    from mm1lab.data.prompts import caption_text
    from mm1lab.data.text import DESCRIBE_TYPES

    kwargs = lmms_eval_specific_kwargs or {}
    kind = kwargs.get("mm1lab_prompt")
    if kind == "chat":
        return DESCRIBE_TYPES["caption"]
    if kind == "plain":
        return caption_text(None, 0)
    return kwargs.get("prompt", "Provide a one-sentence caption for the provided image.")


def coco_process_results(doc, results):
    """The caption and its references, for the corpus-level CIDEr-D and BLEU-4 in the aggregations below."""
    entry = {"prediction": results[0], "answers": list(doc["answers"])}
    return {"cider_d": entry, "bleu4": entry}


def coco_cider_d(entries):
    """CIDEr-D over all captions (its IDF is a corpus statistic), as `mm1lab eval` scores captions."""
    from mm1lab.eval.scoring import score_predictions

    return score_predictions("caption", [e["prediction"] for e in entries], entries)[0]


def coco_bleu4(entries):
    """BLEU-4 over all captions (coco-caption's corpus BLEU)."""
    from mm1lab.eval.scoring import score_predictions

    return score_predictions("caption", [e["prediction"] for e in entries], entries)[1]["bleu4"]


# ---- both -------------------------------------------------------------------------------------------------
def doc_to_visual(doc):
    """The doc's image (decoded, RGB) as lmms-eval's one-element visual list."""
    from mm1lab.eval.bridges.core import open_part

    return [open_part(Path(doc["image"]))]
