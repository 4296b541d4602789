"""Does a VLM read the sign? Rank the 20 sign words by likelihood after a sign caption's opening or a question.
(docs/stage0.md, "Sign captions in VLM pre-training do not teach reading", "k-shot OCR: the word's other token")

    python docs/bench/sign_word_rank.py CHECKPOINT [--n 200] [--forms caption answer ...]

k-shot OCR asks the model to write the word, which fails for two reasons at once: reading it and the answer's
form. This takes the form away. For each held-out medium-world OCR item (the evaluation's own items) whose sign
holds one of the 20 words (numbers are left out: they have no closed set), it scores each word in
`<image>Caption: a sign that says "WORD"`, the `medium:ocr` stream's caption, and counts how often the right word
is the most likely. Chance is 1/20. A model that reads scores well above it, whatever it writes when asked.

Other forms put the word elsewhere (`--forms`; every one by default):
    caption         `<image>Caption: a sign that says "WORD"` (the `medium:ocr` stream's caption)
    caption-plain   `<image>Caption: a sign that says WORD` (the `medium:ocr_plain` stream's caption)
    answer          the evaluation's own 0-shot prompt, `<image>Question: What does the sign say? Answer: WORD`
    answer-quoted   the same prompt, the word quoted: `Answer: "WORD"`
The byte-level BPE spells a word differently after a quote and after a space, so a model can read into one
spelling and not the other: `answer` is what k-shot OCR needs.
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

QUOTED, PLAIN = ' "{}"', " {}"
FORMS = {"caption": QUOTED, "caption-plain": PLAIN, "answer": PLAIN, "answer-quoted": QUOTED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a VLM run, checkpoint, exported or notebook run folder")
    parser.add_argument("--n", type=int, default=200, help="held-out OCR items to draw (those with a word are kept)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS))
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    items = [it for it in shapeworld_items("ocr", 0, n=args.n, difficulty="medium") if it["answers"][0] in WORDS]
    predictor = ModelPredictor(loaded.model.eval(), loaded.tokenizer)
    caption = caption_text("a sign that says")
    for form in args.forms:
        # each choice adds the word as the form spells it, after the caption's opening or the item's own question
        ranked = [dict(it, prompt=it["prompt"] if form.startswith("answer") else caption,
                       choices=[FORMS[form].format(w) for w in WORDS]) for it in items]
        right = []
        with torch.no_grad():
            for i in range(0, len(ranked), args.batch_size):
                batch = ranked[i:i + args.batch_size]
                right += [float(WORDS[k] == it["answers"][0]) for it, k in zip(batch, predictor.score_choices(batch))]
        low, high = bootstrap_interval(right)
        print(f"{args.checkpoint} [{form}]: the right word is the most likely for {int(sum(right))} of {len(right)} "
              f"signs, {sum(right) / len(right):.3f} [{low:.3f}, {high:.3f}] (chance {1 / len(WORDS):.3f})",
              flush=True)


if __name__ == "__main__":
    main()
