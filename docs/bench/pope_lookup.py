"""Does a model answer POPE by looking up the asked colour? (docs/stage0.md, "`mm1lab demo --long`")

    OMP_NUM_THREADS=1 python docs/bench/pope_lookup.py CHECKPOINT [--shots 0] [--n 200] [--chat]

Answers the held-out POPE items that `mm1lab eval` scores ("Is there a red circle?", half "yes") and counts the
answers by what each item asks: a colour and shape that are present ("yes"), or absent with the colour absent from
the scene, the shape absent, or both present on different objects. A "no" item whose colour is absent can be
answered from colour alone, which the demo's models read at 1.00. --chat asks in the chat format, as the
fine-tuned model is scored; otherwise the k-shot prompt with --shots demonstrations.
"""

from __future__ import annotations

import argparse
import collections
import re

from mm1lab.eval.items import shapeworld_items
from mm1lab.eval.predictor import ModelPredictor
from mm1lab.load import load_model

QUESTION = re.compile(r"Is there an? (\w+) (\w+)\?")


def kind(item: dict) -> str:
    """What the item asks, read from its question and its scene's ground truth."""
    color, shape = QUESTION.fullmatch(item["question"]).groups()
    objects = item["ground_truth"][-1]["objects"]
    if item["answer"] == "yes":
        return "yes"
    if color not in {o["color"] for o in objects}:
        return "no, colour absent"
    if shape not in {o["shape"] for o in objects}:
        return "no, shape absent"
    return "no, both present apart"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--chat", action="store_true", help="chat prompts (a fine-tuned model), not k-shot ones")
    args = p.parse_args()
    model, tokenizer = load_model(args.checkpoint)
    items = shapeworld_items("pope", args.shots, n=args.n, resolution=model.cfg.vision.image_size)
    predictor = ModelPredictor(model.eval(), tokenizer, chat=args.chat)
    said = [a for i in range(0, len(items), 16) for a in predictor(items[i:i + 16])]
    counts = collections.Counter((kind(it), a.strip().lower().startswith("yes")) for it, a in zip(items, said))
    right = sum(n for (k, yes), n in counts.items() if yes == (k == "yes"))
    print(f"{args.checkpoint}: POPE accuracy {right / len(items):.3f} on {len(items)} items "
          f"({'chat' if args.chat else f'{args.shots}-shot'})")
    for k in ("yes", "no, colour absent", "no, shape absent", "no, both present apart"):
        total = counts[(k, True)] + counts[(k, False)]
        if total:
            print(f"  {k:<24} {total:>4} items, answered yes {counts[(k, True)]:>4}, no {counts[(k, False)]:>4}")


if __name__ == "__main__":
    main()
