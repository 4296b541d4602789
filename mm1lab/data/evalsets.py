"""Stable evaluation sets from held-out ShapeWorld seeds (2**31 and above; training uses seeds below 2**31).

`eval_set(task, n, seed, difficulty, shots)` returns `n` items; the same arguments give the same items everywhere.
Each item is a dict:
    id, task, question, answer (the short reference), answers (all references), choices (None for open answers),
    prompt + images: the k-shot pre-training prompt (`prompts.kshot_prompt`) and every image it refers to
                     (demonstrations first, then the query),
    chat_prompt + query_images: the zero-shot chat prompt for a fine-tuned model and the query's images,
    ground_truth: the query scene graph(s) as dicts (the text task has its own fields instead), shots.
Tasks: caption, color, count, shape, position, vqa (a mix of the four), ocr, pope, multi_image, text.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from mm1lab.data.prompts import BOS, DEMO_SEPARATOR, caption_text, chat_vqa_prompt, kshot_prompt, user_content
from mm1lab.data.prompts import chat_prompt as make_chat_prompt
from mm1lab.data.shapeworld import Difficulty, ShapeWorld, get_difficulty
from mm1lab.data.text import alt_text, ask, compare, dense_caption, pope, textcore_item

TASKS = ("caption", "color", "count", "shape", "position", "vqa", "ocr", "pope", "multi_image", "text")
EVAL_BASE = 2**31   # first held-out seed
SHOTS = (0, 4, 8)


def eval_seed(task: str, seed: int, index: int, *, demo: bool = False) -> int:
    """The held-out scene seed of item `index` (demonstrations come from a disjoint range)."""
    return EVAL_BASE + (TASKS.index(task) * 2 + demo) * 2**26 + seed * 2**18 + index


def _choices(task: str, d: Difficulty) -> list[str] | None:
    return {"color": list(d.color_names), "count": [str(i) for i in range(1, d.max_objects + 1)],   # counts are >= 1
            "shape": list(d.shape_names), "pope": ["yes", "no"], "multi_image": ["first", "second", "same"]}.get(task)


def _qa(task: str, world: ShapeWorld, seed_of, index: int) -> dict[str, Any]:
    """Question, answers and images for one (query or demonstration) item."""
    d = world.difficulty
    rng = random.Random(f"{task}:{seed_of(index)}")
    if task == "multi_image":
        seeds = [seed_of(2 * index), seed_of(2 * index + 1)]
        scenes = [world.scene(s) for s in seeds]
        q, short, _ = compare(scenes, rng)
        return dict(question=q, answer=short, answers=[short], scenes=scenes, seeds=seeds)
    seed = seed_of(index * 64 if task == "ocr" else index)
    scene = world.scene(seed)
    if task == "caption":
        clean = dataclasses.replace(d, caption_noise=0.0)
        refs = [dense_caption(scene)] + [alt_text(scene, rng, clean) for _ in range(4)]
        return dict(question="", answer=refs[1], answers=refs, scenes=[scene], seeds=[seed])
    if task == "pope":
        q, short, _ = pope(scene, rng, d, answer_yes=index % 2 == 0)   # exactly balanced yes/no
    elif task == "vqa":
        q, short, _ = ask(scene, rng.choice(("color", "count", "shape", "position")), rng, d)
    elif task == "ocr":
        for t in range(1, 64):   # OCR needs text: walk to the next scene that has a sign
            if scene.signs:
                break
            seed = seed_of(index * 64 + t)
            scene = world.scene(seed)
        q, short, _ = ask(scene, "ocr", rng, d)
    else:
        q, short, _ = ask(scene, task, rng, d)
    return dict(question=q, answer=short, answers=[short], scenes=[scene], seeds=[seed])


def eval_set(task: str, n: int = 100, seed: int = 0, difficulty: str | Difficulty = "easy", shots: int = 0, *,
             resolution: int = 64, cache_dir=None, cache: bool = True) -> list[dict[str, Any]]:
    """`n` held-out items of `task` with `shots` demonstrations each (see the module docstring for the fields)."""
    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "text":
        return _text_set(n, seed, shots)
    d = get_difficulty(difficulty)
    if task == "ocr" and d.text_prob == 0:
        raise ValueError(f"difficulty {d.name!r} has no text (text_prob=0); use 'medium' or 'hard' for OCR")
    world = ShapeWorld(d, resolution, cache_dir=cache_dir, cache=cache)
    items = []
    for i in range(n):
        query = _qa(task, world, lambda j: eval_seed(task, seed, j), i)
        demo_rng = random.Random(f"demos:{task}:{seed}:{i}")
        demo_ids = demo_rng.sample(range(4096), shots)
        demos = [_qa(task, world, lambda j: eval_seed(task, seed, j, demo=True), j) for j in demo_ids]
        for item in [*demos, query]:
            item["images"] = [world.image(s) for s in item["seeds"]]
        kind = "caption" if task == "caption" else "vqa"
        prompt, images = kshot_prompt(demos, query, kind=kind)
        n_img = len(query["images"])
        chat = (make_chat_prompt(user_content("Describe the image briefly.", n_img)) if task == "caption"
                else chat_vqa_prompt(query["question"], n_img, short=True))
        items.append(dict(id=f"{task}-{d.name}-{seed}-{i}", task=task, question=query["question"],
                          answer=query["answer"], answers=query["answers"], choices=_choices(task, d),
                          prompt=prompt, images=images, chat_prompt=chat, query_images=query["images"],
                          ground_truth=[s.to_dict() for s in query["scenes"]], shots=shots))
    return items


def _text_set(n: int, seed: int, shots: int) -> list[dict[str, Any]]:
    """The TextCore analogue: multiple-choice cloze; rank `choices` by log-likelihood after `prompt`."""
    items = []
    for i in range(n):
        rng = random.Random(f"textcore:{EVAL_BASE + seed * 2**18 + i}")
        item = textcore_item(rng)
        demos = [textcore_item(random.Random(f"textcore-demo:{seed}:{i}:{j}")) for j in range(shots)]
        context = DEMO_SEPARATOR.join(d["prompt"] + d["choices"][d["label"]] for d in demos)
        prompt = BOS + (context + DEMO_SEPARATOR if demos else "") + item["prompt"]
        answer = item["choices"][item["label"]]
        items.append(dict(id=f"text-{seed}-{i}", task="text", question=item["prompt"], answer=answer, answers=[answer],
                          choices=item["choices"], label=item["label"], prompt=prompt, images=[],
                          chat_prompt=make_chat_prompt(item["prompt"]), query_images=[], ground_truth=item,
                          shots=shots))
    return items


def caption_prompt(num_images: int = 1) -> str:
    """The zero-shot caption prompt of a pre-trained model (as in `kshot_prompt(kind='caption')`)."""
    return BOS + caption_text(None, num_images)
