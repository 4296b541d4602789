"""How much of a run's loss is about shape? Count the targets that take loss in a run's own batches.
(docs/stage0.md, "Pre-training learns shape at 3,000 steps, and sooner with more shape questions")

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

from mm1lab.config import IGNORE
from mm1lab.data.shapeworld import COLORS, SHAPES
from mm1lab.data.tokenizer import MM1Tokenizer, load_tokenizer
from mm1lab.train.config import TrainConfig
from mm1lab.train.trainer import Trainer


def targets(batch: dict, question: int, answer: int, image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target ids that take loss (masked the way `mm1lab.train.data.loss_tokens` counts them), and whether each
    lies inside a pre-training question ("Question: ... Answer:"): a word there is drawn at random, not read from
    the image. SFT masks its questions, so none of its targets lie inside one."""
    labels = batch["labels"]
    for key in ("loss_mask", "attention_mask"):
        if batch.get(key) is not None:
            labels = labels.masked_fill(~batch[key].bool(), IGNORE)
    ids = batch["input_ids"]
    at = torch.arange(ids.shape[1]).expand_as(ids)
    last_open = torch.where(ids == question, at, -1).cummax(1).values
    last_close = torch.where((ids == answer) | (ids == image), at, -1).cummax(1).values   # an answer or an image
    inside = last_open > last_close
    labels, inside = labels[:, 1:], inside[:, 1:]
    keep = labels != IGNORE
    return labels[keep], inside[keep]


def word_ids(tok: MM1Tokenizer, words) -> torch.Tensor:
    """The single-token ids of " word": how a word reads after a space, in captions and in answers."""
    ids = [tok.encode(" " + w) for w in words]
    return torch.tensor([i[0] for i in ids if len(i) == 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="training configs (a run's config.yaml)")
    parser.add_argument("--steps", type=int, default=20, help="global batches to draw from each")
    args = parser.parse_args()
    tok = load_tokenizer()
    shape_ids, colour_ids = word_ids(tok, SHAPES), word_ids(tok, COLORS)
    markers = dict(question=tok.encode("Question")[0], answer=tok.encode(" Answer")[0], image=tok.image_id)
    print("| config | batch | targets per step | shape words per step (in questions) | share outside questions "
          "| colour words per step (in questions) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path in args.configs:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig.load(path, [f"out_dir={out}", "track.progress=false", "track.tensorboard=false"])
            trainer = Trainer(cfg)
            total, shapes, colours = 0, torch.zeros(2), torch.zeros(2)     # [outside, inside] questions
            for _ in range(args.steps):
                for batch in trainer.batches.next_step():
                    t, inside = targets(batch, **markers)
                    total += t.numel()
                    for counts, ids in ((shapes, shape_ids), (colours, colour_ids)):
                        hit = torch.isin(t, ids)
                        counts += torch.stack([(hit & ~inside).sum(), (hit & inside).sum()])
        n = args.steps
        print(f"| {path} | {cfg.batch_size} | {total / n:.0f} | {shapes.sum() / n:.1f} ({shapes[1] / n:.1f}) | "
              f"{shapes[0] / total:.3f} | {colours.sum() / n:.1f} ({colours[1] / n:.1f}) |")


if __name__ == "__main__":
    main()
