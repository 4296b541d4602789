"""Input pairs for activation patching: the same ShapeWorld scene, once as it is and once with one shape removed.

The two prompts are identical and the two pictures differ only where the removed shape was, so every position
lines up and the answer differs ("3" against "2"): the setting `activation_patching` needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mm1lab.data.prompts import chat_vqa_prompt
from mm1lab.data.shapeworld import make_scene, render

QUESTION = "How many shapes are there?"


def counting_pair(model, tokenizer, *, objects: int = 3, seed: int = 0, difficulty: str = "easy",
                  max_tries: int = 1000) -> dict[str, Any]:
    """A clean scene with `objects` shapes and the corrupt one with its last shape removed, as chat samples.

    Returns dict(clean, corrupt) (each: input_ids (1, n), images, pixels [PIL], scene), question, and answer / wrong:
    the token ids of " {objects}" and " {objects - 1}", the first token the fine-tuned model answers with.
    """
    from mm1lab.data.collate import Collator

    if objects < 2:
        raise ValueError(f"objects={objects}: removing one shape must leave at least one")
    scene = next((s for s in (make_scene(seed + i, difficulty) for i in range(max_tries))
                  if len(s.objects) == objects), None)
    if scene is None:
        raise ValueError(f"no {difficulty!r} scene with {objects} shapes among seeds {seed}..{seed + max_tries - 1}; "
                         "choose a count the difficulty draws (easy: 1-4)")
    fewer = dataclasses.replace(scene, objects=scene.objects[:-1])
    collator, size = Collator(tokenizer, model.cfg), model.cfg.vision.image_size
    prompt = chat_vqa_prompt(QUESTION, 1)
    samples = {}
    for name, s in (("clean", scene), ("corrupt", fewer)):
        picture = render(s, size)
        enc = collator.encode_prompt(prompt, [picture])
        samples[name] = dict(input_ids=enc["input_ids"], images=enc["images"], pixels=[picture], scene=s,
                             id=f"{name}: {len(s.objects)} shapes")
    answer, wrong = (tokenizer.encode(f" {n}")[0] for n in (objects, objects - 1))
    return dict(**samples, question=QUESTION, answer=answer, wrong=wrong)
