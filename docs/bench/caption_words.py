"""Does a VLM read shape? Score which colour and shape words its 0-shot captions use against the scene graph.
(docs/stage0.md, "Why k-shot shape, position and POPE stay at baseline")

    OMP_NUM_THREADS=1 python docs/bench/caption_words.py papermill_runs/<demo>/02_pretrain/train [MORE ...]

For each of N held-out easy-world caption items (the `shapeworld-pretrain` suite's, `mm1lab.eval`), the model
captions the image as in the k-shot suite ("<image>Caption:"). The caption is right on an attribute when the set of
colour (or shape) words it uses is the scene's set exactly. The baseline is the share of the most common set
among the items: what one fixed caption would score. CIDEr-D cannot say this, since a caption with the right
colours, count and layout and the wrong shapes still shares most of its n-grams with the references.
"""

from __future__ import annotations

import argparse
from collections import Counter

from mm1lab import load_model
from mm1lab.data.shapeworld import get_difficulty
from mm1lab.eval.harness import predict
from mm1lab.eval.items import shapeworld_items
from mm1lab.eval.predictor import ModelPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="pre-trained (or any) VLM runs or checkpoints")
    parser.add_argument("--n", type=int, default=200, help="held-out caption items")
    args = parser.parse_args()

    d = get_difficulty("easy")
    items = shapeworld_items("caption", 0, n=args.n)
    truth = {attr: [frozenset(o[attr] for o in it["ground_truth"][0]["objects"]) for it in items]
             for attr in ("color", "shape")}
    words = {"color": d.color_names, "shape": d.shape_names}
    baseline = {attr: Counter(sets).most_common(1)[0][1] / len(items) for attr, sets in truth.items()}
    print(f"{len(items)} held-out scenes; baseline (most common set): "
          + ", ".join(f"{attr} {b:.2f}" for attr, b in baseline.items()))
    for path in args.checkpoints:
        model, tokenizer = load_model(path)
        captions = predict(ModelPredictor(model, tokenizer, chat=False), items, batch_size=50)
        right = {attr: sum(frozenset(w for w in words[attr] if w in c) == t for c, t in zip(captions, sets))
                 / len(items) for attr, sets in truth.items()}
        print(f"{path}: colour {right['color']:.2f}, shape {right['shape']:.2f}; e.g. {captions[0]!r}")


if __name__ == "__main__":
    main()
