"""Does a VLM read the sign? Rank the 20 sign words by likelihood after a sign caption's opening.
(docs/stage0.md, "Sign captions in VLM pre-training do not teach reading")

    python docs/bench/sign_word_rank.py CHECKPOINT [--n 200]

k-shot OCR asks the model to write the word, which fails for two reasons at once: reading it and the answer's
form. This takes the form away. For each held-out medium-world OCR item (the evaluation's own items) whose sign
holds one of the 20 words (numbers are left out: they have no closed set), it scores each word in
`<image>Caption: a sign that says "WORD"`, the `medium:ocr` stream's caption, and counts how often the right word
is the most likely. Chance is 1/20. A model that reads scores well above it, whatever it writes when asked.
"""

from __future__ import annotations

import argparse

import torch

from mm1lab.data.prompts import caption_text
from mm1lab.data.shapeworld import WORDS
from mm1lab.eval.items import shapeworld_items
from mm1lab.eval.predictor import ModelPredictor
from mm1lab.eval.scoring import bootstrap_interval
from mm1lab.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a VLM run, checkpoint, exported or notebook run folder")
    parser.add_argument("--n", type=int, default=200, help="held-out OCR items to draw (those with a word are kept)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    items = [it for it in shapeworld_items("ocr", 0, n=args.n, difficulty="medium") if it["answers"][0] in WORDS]
    predictor = ModelPredictor(loaded.model.eval(), loaded.tokenizer)
    prompt = caption_text("a sign that says")           # each choice adds ` "WORD"`, as the caption spells it
    ranked = [dict(it, prompt=prompt, choices=[f' "{w}"' for w in WORDS]) for it in items]
    right = []
    with torch.no_grad():
        for i in range(0, len(ranked), args.batch_size):
            batch = ranked[i:i + args.batch_size]
            right += [float(WORDS[k] == it["answers"][0]) for it, k in zip(batch, predictor.score_choices(batch))]
    low, high = bootstrap_interval(right)
    print(f"{args.checkpoint}: the right word is the most likely for {int(sum(right))} of {len(right)} signs, "
          f"{sum(right) / len(right):.3f} [{low:.3f}, {high:.3f}] (chance {1 / len(WORDS):.3f})")


if __name__ == "__main__":
    main()
