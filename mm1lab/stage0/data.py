"""Batches for stage 0: image-caption pairs (CLIP / SigLIP) and images alone (AIM), from the same samples MM1's
pre-training reads: ShapeWorld's caption and dense-caption streams, or real WebDataset caption shards.

A caption sample's text is `<bos><image>Caption: ...<eos>` (`mm1lab.data.prompts`); the pair collator keeps the
caption, tokenizes it with mm1lab's tokenizer and ends it with `<|end|>`, the text tower's read-out token.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import torch

from mm1lab.config import VisionConfig
from mm1lab.data.collate import preprocess_image
from mm1lab.data.sample import Sample
from mm1lab.data.tokenizer import BOS, END, EOS, IMAGE
from mm1lab.stage0.config import TextConfig

CAPTION_HEAD = "Caption:"


def caption_of(sample: Sample) -> str:
    """The caption of a caption sample, without image markers, the `Caption:` head and bos/eos."""
    text = sample.text.replace(IMAGE, "").replace(BOS, "").replace(EOS, "").strip()
    return text[len(CAPTION_HEAD):].strip() if text.startswith(CAPTION_HEAD) else text


def encode_captions(tokenizer, captions: list[str], cfg: TextConfig) -> torch.Tensor:
    """(b, n) ids: each caption's tokens, cut to `max_len - 1`, then the end-of-text token; right-padded."""
    rows = [tokenizer.encode(c)[: cfg.max_len - 1] + [cfg.eot_token_id] for c in captions]
    ids = torch.full((len(rows), max(map(len, rows))), cfg.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def _skipped(samples: list[Sample]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for s in samples:
        total.update(s.skipped)
    return dict(total)


def swap_shape(caption: str, shapes: tuple[str, ...], rng: random.Random) -> str | None:
    """`caption` with one shape word (singular or plural) replaced by another of `shapes`, or None when it names
    none: a hard negative that only an encoder which sees shape can tell from the true caption."""
    found = list(re.finditer(rf"\b({'|'.join(map(re.escape, shapes))})(s?)\b", caption))
    if not found or len(shapes) < 2:
        return None
    word = rng.choice(found)
    other = rng.choice([s for s in shapes if s != word.group(1)])
    return caption[:word.start()] + other + word.group(2) + caption[word.end():]


class PairCollator:
    """Caption samples -> {images (b, 3, H, W), ids (b + m, n), stream, skipped}; one image per sample.

    `negative_shapes`: also add, after the b captions, each caption with one of these shape words swapped (m of
    them; `swap_shape`), drawn from the sample's id, so a resumed run makes the same ones."""

    def __init__(self, tokenizer, vision: VisionConfig, text: TextConfig, negative_shapes: tuple[str, ...] = ()):
        self.tokenizer, self.vision, self.text = tokenizer, vision, text
        self.negative_shapes = tuple(negative_shapes)

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        skipped = _skipped(samples)                       # the end-of-stream tally carries skips, nothing to encode
        samples = [s for s in samples if not s.is_tally]
        for s in samples:
            if len(s.images) != 1:
                raise ValueError(f"sample {s.id} ({s.stream}) has {len(s.images)} images; contrastive pre-training "
                                 "takes caption samples with one image each (streams caption / dense)")
        v = self.vision
        images = torch.stack([preprocess_image(s.images[0], v.image_size, v.image_mean, v.image_std) for s in samples])
        captions = [caption_of(s) for s in samples]
        if self.negative_shapes:
            swapped = (swap_shape(c, self.negative_shapes, random.Random(f"negative:{s.id}"))
                       for c, s in zip(captions, samples))
            captions += [c for c in swapped if c is not None]
        return dict(images=images, ids=encode_captions(self.tokenizer, captions, self.text),
                    stream=[s.stream for s in samples], skipped=skipped)


class ImageCollator:
    """Samples -> {images (N, 3, H, W), stream, skipped}: every image of every sample (AIM needs no text)."""

    def __init__(self, vision: VisionConfig):
        self.vision = vision

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        v = self.vision
        images = [preprocess_image(im, v.image_size, v.image_mean, v.image_std) for s in samples for im in s.images]
        if not images:
            raise ValueError("a batch without images: AIM pre-trains on image streams (caption, dense, interleaved)")
        return dict(images=torch.stack(images), stream=[s.stream for s in samples if not s.is_tally],
                    skipped=_skipped(samples))


def end_of_text(tokenizer) -> int:
    """The id of `<|end|>` in mm1lab's tokenizer (the text tower's read-out token)."""
    return tokenizer.encode(END)[0]
