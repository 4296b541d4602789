"""`mm1lab demo`: build the tiny MM1, follow one batch through it, generate, and print the preset table."""

from __future__ import annotations

import argparse
import time

import torch

from mm1lab.config import MM1Config
from mm1lab.model import MM1Model
from mm1lab.params import format_table, preset_tables


def model_tour(seed: int = 0) -> None:
    """Build the tiny preset and print the shape of a batch at each stage, then a short generation."""
    torch.manual_seed(seed)
    cfg = MM1Config.preset("tiny")
    model = MM1Model(cfg).eval()
    k, size = cfg.image_tokens, cfg.vision.image_size
    ids = torch.randint(10, cfg.lm.vocab_size, (2, 12 + k))
    ids[0, 1:1 + k] = cfg.image_token_id                   # sample 0: one image after the first token
    images = torch.randn(1, 3, size, size)
    vis = model.vision(images)
    tokens = model.connector(vis.features)
    t0 = time.perf_counter()
    out = model(ids, images, labels=ids)
    new = model.generate(ids, images, max_new_tokens=8, stop_tokens=[])
    ms = (time.perf_counter() - t0) * 1e3
    print(f"tiny MM1: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"  images            {tuple(images.shape)}")
    print(f"  encoder features  {tuple(vis.features.shape)}  ({vis.grid[0]}x{vis.grid[1]} patches)")
    print(f"  connector tokens  {tuple(tokens.shape)}  ({cfg.connector.kind}, k={k})")
    print(f"  LM logits         {tuple(out.logits.shape)}  loss at init {out.loss.item():.3f} "
          f"(ln vocab = {torch.log(torch.tensor(float(cfg.lm.vocab_size))).item():.3f})")
    print(f"  generated         {new.tolist()}  (forward + 8-token generation in {ms:.0f} ms)")


def main(args: argparse.Namespace | None = None) -> int:
    model_tour()
    print()
    print(format_table(preset_tables()))
    return 0
