"""Collation: tokenize, expand image markers, cap images, pack or pad, mask the loss, preprocess the images.

The model's image convention: every image fills exactly k = `cfg.image_tokens` consecutive `<image>` ids (id 3), and
a batch's images are one float tensor (N, 3, H, W), normalised, in the order their placeholder runs appear reading
the batch row-major. With `high_res=True` (MM1's sub-image decomposition) each image becomes 5 encoder images, a
downsized overview first and then the 2x2 grid of crops (row-major), so its marker expands to 5k placeholders.

Labels are not shifted (the model shifts) and are -100 on image placeholders, padding, and everything outside the
loss segments (for SFT: all but the assistant answers). `batch["skipped"]` counts the samples skipped *since the
previous batch* (upstream reader skips plus the collator's own), so the trainer sums them across batches/workers.
A stream's final `Sample.tally` only brings skip counts and its state; a batch of tallies alone has no rows.
Axes: b - rows in the batch, n - sequence, c - channels, h w - pixels, gh gw - sub-image grid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from mm1lab.config import IGNORE
from mm1lab.data.guards import decoded_image
from mm1lab.data.sample import Sample, Skips, SkipSample
from mm1lab.data.tokenizer import IMAGE


def to_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image or a uint8 array (h, w, 3)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def resize_center_crop(image: Any, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and crop the centre square (CLIP preprocessing)."""
    image = to_pil(image)
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalize(image: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (h, w, 3) -> float32 (3, h, w), scaled to [0, 1] then normalised per channel."""
    x = torch.from_numpy(np.array(to_pil(image), dtype=np.uint8))
    x = rearrange(x, "h w c -> c h w").float().div_(255)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def preprocess_image(image: Any, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """One image -> (3, size, size) float32, resized, centre-cropped and normalised."""
    return normalize(resize_center_crop(image, size), mean, std)


def subimage_views(image: Any, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """MM1 sub-image decomposition -> (5, 3, size, size): a downsized overview, then the 2x2 crops (row-major)."""
    big = normalize(resize_center_crop(image, 2 * size), mean, std)
    crops = rearrange(big, "c (gh h) (gw w) -> (gh gw) c h w", gh=2, gw=2)
    overview = preprocess_image(image, size, mean, std)
    return torch.cat([overview[None], crops])


@dataclass
class Encoded:
    """One tokenized sample: ids and labels (lists of equal length) and its preprocessed images."""

    ids: list[int]
    labels: list[int]
    images: list[torch.Tensor]   # (views, 3, h, w) per image
    stream: str


class Collator:
    """Turns a list of `Sample`s into a model batch (see the module docstring for the contract).

    Args:
        tokenizer: an `MM1Tokenizer`.
        cfg: an `MM1Config`; gives k (image_tokens), the image size and normalisation, max_images, max_seq_len.
        max_len: tokens per row (default cfg.lm.max_seq_len).
        pack: concatenate several samples per row; `segment_ids` tells them apart, and the model lets each attend
            only to itself (document-masked packing).
        pad_to_max: pad every row to `max_len` instead of to the longest row.
        high_res: sub-image decomposition (5 encoder images per image).
        truncate: streams whose over-long samples are cut (at an image boundary) instead of skipped.
        strict: raise `DataError` instead of skipping.
    """

    def __init__(self, tokenizer, cfg, *, max_len: int | None = None, pack: bool = False, pad_to_max: bool = False,
                 high_res: bool = False, truncate: tuple[str, ...] = ("interleaved", "text"), strict: bool = False):
        self.tok, self.cfg = tokenizer, cfg
        self.k = cfg.image_tokens
        self.size, self.mean, self.std = cfg.vision.image_size, cfg.vision.image_mean, cfg.vision.image_std
        self.max_len = max_len or cfg.lm.max_seq_len
        self.max_images = cfg.max_images
        self.pack, self.pad_to_max, self.high_res, self.truncate = pack, pad_to_max, high_res, tuple(truncate)
        self.views = 5 if high_res else 1
        self.skips = Skips(strict=strict)   # cumulative over this collator's life (in its own process)
        if tokenizer.image_id != cfg.image_token_id or tokenizer.pad_id != cfg.pad_token_id:
            raise ValueError(f"tokenizer ids (image {tokenizer.image_id}, pad {tokenizer.pad_id}) differ from the "
                             f"config's (image {cfg.image_token_id}, pad {cfg.pad_token_id})")

    # ---- one sample -----------------------------------------------------------------------------------
    def encode(self, sample: Sample) -> Encoded:
        """Tokenize one sample; raises `SkipSample` for bad ones (marker/image mismatch, empty, too long, an image
        that does not decode)."""
        where = f"{sample.stream} sample {sample.id or '?'}"
        ids, labels, starts = [], [], []   # starts: position of each image run
        run = self.k * self.views
        for text, in_loss in sample.segments:
            for j, piece in enumerate(text.split(IMAGE)):
                if j:
                    starts.append(len(ids))
                    ids += [self.tok.image_id] * run
                    labels += [IGNORE] * run
                if piece:
                    piece_ids = self.tok.encode(piece)
                    ids += piece_ids
                    labels += piece_ids if in_loss else [IGNORE] * len(piece_ids)
        if len(starts) != len(sample.images):
            raise SkipSample("image_count_mismatch", where,
                             f"{len(starts)} <image> markers, {len(sample.images)} images")
        specials = {self.tok.pad_id, self.tok.bos_id, self.tok.eos_id, self.tok.image_id, self.tok.user_id,
                    self.tok.assistant_id, self.tok.end_id}
        if not any(i not in specials for i in ids):
            raise SkipSample("empty_text", where)
        cut = len(ids)
        if len(starts) > self.max_images:
            if sample.stream not in self.truncate:
                raise SkipSample("too_many_images", where, f"{len(starts)} images > max_images={self.max_images}")
            cut = starts[self.max_images]
        if cut > self.max_len:
            if sample.stream not in self.truncate:
                raise SkipSample("too_long", where, f"{len(ids)} tokens > max_len={self.max_len}")
            cut = self.max_len
            inside = [s for s in starts if s < cut < s + run]
            cut = inside[0] if inside else cut   # never split an image's placeholder run
        kept = sum(s + run <= cut for s in starts)
        truncated = cut < len(ids)
        ids, labels = ids[:cut], labels[:cut]
        if truncated and not any(label != IGNORE and i not in specials for i, label in zip(ids, labels)):
            raise SkipSample("too_long", where, "nothing left to learn from after truncation")
        images = [self._views(decoded_image(im, f"{where} image {i}")) for i, im in enumerate(sample.images[:kept])]
        return Encoded(ids=ids, labels=labels, images=images, stream=sample.stream)

    def _views(self, image: Any) -> torch.Tensor:
        if self.high_res:
            return subimage_views(image, self.size, self.mean, self.std)
        return preprocess_image(image, self.size, self.mean, self.std)[None]

    # ---- a batch --------------------------------------------------------------------------------------
    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        """Collate samples into {input_ids, labels, attention_mask, images, stream, skipped, ...}."""
        skipped: Counter[str] = Counter()
        states: dict[str, Any] = {}
        encoded = []
        for sample in samples:
            skipped.update(sample.skipped)
            if sample.state is not None:
                states[sample.state["shard"]] = sample.state
            if sample.is_tally:   # the end of a stream: skips to count, nothing to encode
                continue
            try:
                encoded.append(self.encode(sample))
            except SkipSample as skip:
                self.skips.add(skip)   # raises DataError in strict mode
                skipped[skip.reason] += 1
        rows = self._pack(encoded) if self.pack else [[e] for e in encoded]
        batch = self._pad(rows)
        batch.update(skipped=dict(skipped), state=states,
                     stream_counts=dict(Counter(e.stream for e in encoded)))
        return batch

    def _pack(self, encoded: list[Encoded]) -> list[list[Encoded]]:
        rows, row, used = [], [], 0
        for e in encoded:   # greedy, in arrival order (keeps the image order predictable)
            if row and used + len(e.ids) > self.max_len:
                rows.append(row)
                row, used = [], 0
            row.append(e)
            used += len(e.ids)
        return rows + [row] if row else rows

    def _pad(self, rows: list[list[Encoded]]) -> dict[str, Any]:
        lengths = [sum(len(e.ids) for e in row) for row in rows]
        n = self.max_len if self.pad_to_max else max(lengths, default=0)
        input_ids = torch.full((len(rows), n), self.tok.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
        segment_ids = torch.zeros((len(rows), n), dtype=torch.long)
        images = []
        for b, row in enumerate(rows):
            at = 0
            for seg, e in enumerate(row, start=1):
                input_ids[b, at:at + len(e.ids)] = torch.tensor(e.ids)
                labels[b, at:at + len(e.ids)] = torch.tensor(e.labels)
                segment_ids[b, at:at + len(e.ids)] = seg
                at += len(e.ids)
                images += e.images
        return dict(input_ids=input_ids, labels=labels, attention_mask=segment_ids > 0, segment_ids=segment_ids,
                    images=torch.cat(images) if images else None,
                    stream=["+".join(e.stream for e in row) for row in rows])

    # ---- prompts for evaluation -----------------------------------------------------------------------
    def encode_prompt(self, text: str, images: list[Any] | None = None) -> dict[str, Any]:
        """A single prompt (e.g. from `prompts.kshot_prompt`) as model input: input_ids (1, n), images, mask.

        Nothing is skipped or truncated here: a mismatch or an over-long prompt raises ValueError.
        """
        sample = Sample(stream="prompt", segments=[(text, False)], images=list(images or []), id="prompt")
        try:
            e = self.encode(sample)
        except SkipSample as skip:
            raise ValueError(f"cannot encode prompt: {skip}") from None
        ids = torch.tensor([e.ids], dtype=torch.long)
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                    images=torch.cat(e.images) if e.images else None)
