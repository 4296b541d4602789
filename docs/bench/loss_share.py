"""How much of a run's loss is about shape? Count the targets that take loss in a run's own batches.
(docs/stage0.md, "Why k-shot shape, position and POPE stay at baseline")

    OMP_NUM_THREADS=1 python docs/bench/loss_share.py <run>/config.yaml [MORE ...] --steps 20

For each training config, draws `--steps` global batches exactly as the trainer does (the run's data, mixture, batch
size and loss mask), and counts per step the targets that take loss: all of them, those that are a shape word
(" circle", " star", ...) and those that are a colour word. Each loss is a mean over its batch's targets, so a
shape word's share of the targets is its share of the gradient's weight. Nothing is trained.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mm1lab.data.shapeworld import COLORS, SHAPES
from mm1lab.data.tokenizer import load_tokenizer
from mm1lab.config import IGNORE
from mm1lab.train.config import TrainConfig
from mm1lab.train.trainer import Trainer


def targets(batch: dict) -> torch.Tensor:
    """The target ids that take loss, masked the way `mm1lab.train.data.loss_tokens` counts them."""
    labels = batch["labels"]
    for key in ("loss_mask", "attention_mask"):
        if batch.get(key) is not None:
            labels = labels.masked_fill(~batch[key].bool(), IGNORE)
    labels = labels[:, 1:]
    return labels[labels != IGNORE]


def word_ids(words) -> torch.Tensor:
    """The single-token ids of " word" (how a word reads after a space: in captions and after "ASSISTANT:")."""
    tok = load_tokenizer()
    ids = [tok.encode(" " + w) for w in words]
    return torch.tensor([i[0] for i in ids if len(i) == 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="training configs (a run's config.yaml)")
    parser.add_argument("--steps", type=int, default=20, help="global batches to draw from each")
    args = parser.parse_args()
    shape_ids, colour_ids = word_ids(SHAPES), word_ids(COLORS)
    print("| config | batch | targets per step | shape words per step | share | colour words per step | share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.configs:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig.load(path, [f"out_dir={out}", "track.progress=false", "track.tensorboard=false"])
            trainer = Trainer(cfg)
            total = shapes = colours = 0
            for _ in range(args.steps):
                for batch in trainer.batches.next_step():
                    t = targets(batch)
                    total += t.numel()
                    shapes += int(torch.isin(t, shape_ids).sum())
                    colours += int(torch.isin(t, colour_ids).sum())
        n = args.steps
        print(f"| {path} | {cfg.batch_size} | {total / n:.0f} | {shapes / n:.1f} | {shapes / total:.3f} | "
              f"{colours / n:.1f} | {colours / total:.3f} |")


if __name__ == "__main__":
    main()
