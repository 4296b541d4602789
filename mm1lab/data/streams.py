"""ShapeWorld as MM1's data streams, and the MM1 default mixture built from them.

Item i of each stream is a pure function of i, so the streams are random access and endless. Scene seeds per
stream (all below 2**31, the held-out evaluation range):
    caption, dense: scene i (the same images, alt-text vs dense captions, as VeCap re-captions web images)
    interleaved: scenes 2**28 + 8i ... (2 to 5 images)        sft: scenes 2**29 + 2i (and + 1 for two-image turns)
"""

from __future__ import annotations

import random
from pathlib import Path

from mm1lab.data.mixture import IndexedStream, MixtureDataset
from mm1lab.data.prompts import caption_text
from mm1lab.data.sample import Sample
from mm1lab.data.shapeworld import Difficulty, ShapeWorld
from mm1lab.data.text import alt_text, dense_caption, interleaved_document, sft_turns, text_document

MM1_WEIGHTS = {"caption": 45.0, "interleaved": 45.0, "text": 10.0}   # MM1's 45:45:10
INTERLEAVED_BASE, SFT_BASE = 2**28, 2**29


def mm1_weights(dense_share: float = 0.07, *, caption: float = 45.0, interleaved: float = 45.0,
                text: float = 10.0) -> dict[str, float]:
    """Stream weights: captions split into alt-text and synthetic dense captions by `dense_share` (0..1)."""
    if not 0 <= dense_share <= 1:
        raise ValueError(f"dense_share must be in [0, 1], got {dense_share}")
    return {"caption": caption * (1 - dense_share), "dense": caption * dense_share, "interleaved": interleaved,
            "text": text}


class ShapeWorldStreams:
    """Sample makers for every data type; `world.image(seed)` renders (and caches) at `resolution`."""

    def __init__(self, difficulty: str | Difficulty = "easy", resolution: int = 64, *,
                 cache_dir: str | Path | None = None, cache: bool = True, multi_image_share: float = 0.1):
        self.world = ShapeWorld(difficulty, resolution, cache_dir=cache_dir, cache=cache)
        self.d = self.world.difficulty
        self.multi_image_share = multi_image_share

    def _rng(self, stream: str, i: int) -> random.Random:
        return random.Random(f"{stream}:{self.d.key()}:{i}")

    def caption(self, i: int) -> Sample:
        """Web-style alt-text caption of scene i."""
        scene = self.world.scene(i)
        text = caption_text(alt_text(scene, self._rng("caption", i), self.d))
        return Sample.pretrain("caption", text, [self.world.image(i)], id=f"caption-{i}")

    def dense(self, i: int) -> Sample:
        """Synthetic dense caption (VeCap analogue) of scene i."""
        text = caption_text(dense_caption(self.world.scene(i)))
        return Sample.pretrain("dense", text, [self.world.image(i)], id=f"dense-{i}")

    def interleaved_seeds(self, i: int) -> list[int]:
        """Scene seeds of interleaved document i."""
        n = self._rng("interleaved-n", i).randint(2, 5)
        return [INTERLEAVED_BASE + 8 * i + m for m in range(n)]

    def interleaved(self, i: int) -> Sample:
        """An interleaved document with 2-5 images."""
        seeds = self.interleaved_seeds(i)
        text = interleaved_document([self.world.scene(s) for s in seeds], self._rng("interleaved", i), self.d)
        return Sample.pretrain("interleaved", text, [self.world.image(s) for s in seeds], id=f"interleaved-{i}")

    def document(self, i: int) -> str:
        """The raw text of text-only document i."""
        return text_document(self._rng("text", i))

    def text(self, i: int) -> Sample:
        """A text-only document."""
        return Sample.pretrain("text", self.document(i), [], id=f"text-{i}")

    def sft_seeds(self, i: int) -> list[int]:
        """Scene seeds of SFT conversation i (two for a comparison)."""
        two = self._rng("sft-n", i).random() < self.multi_image_share
        return [SFT_BASE + 2 * i, SFT_BASE + 2 * i + 1][: 2 if two else 1]

    def sft_turns(self, i: int) -> list[dict[str, str]]:
        """The conversation of SFT item i (roles user/assistant)."""
        return sft_turns([self.world.scene(s) for s in self.sft_seeds(i)], self._rng("sft", i), self.d)

    def sft(self, i: int) -> Sample:
        """A LLaVA-style conversation about one scene (or two, `multi_image_share` of the time)."""
        seeds = self.sft_seeds(i)
        return Sample.chat(self.sft_turns(i), [self.world.image(s) for s in seeds], id=f"sft-{i}")

    def prerender(self, items: int) -> None:
        """Render into the cache every image the first `items` items of each stream use."""
        self.world.prerender(0, items)
        self.world.prerender(INTERLEAVED_BASE, INTERLEAVED_BASE + 8 * items)
        self.world.prerender(SFT_BASE, SFT_BASE + 2 * items)

    def stream(self, name: str) -> IndexedStream:
        """The endless stream `name` (caption, dense, interleaved, text, sft)."""
        if name not in ("caption", "dense", "interleaved", "text", "sft"):
            raise ValueError(f"unknown stream {name!r}")
        return IndexedStream(getattr(self, name))


def shapeworld_mixture(difficulty: str | Difficulty = "easy", resolution: int = 64, *,
                       weights: dict[str, float] | None = None, dense_share: float = 0.07, seed: int = 0,
                       cache_dir: str | Path | None = None, cache: bool = True, rank: int | None = None,
                       world_size: int | None = None) -> MixtureDataset:
    """The pre-training mixture on ShapeWorld: MM1's 45:45:10, with `dense_share` of captions dense (VeCap ~7%)."""
    sw = ShapeWorldStreams(difficulty, resolution, cache_dir=cache_dir, cache=cache)
    weights = weights or mm1_weights(dense_share)
    return MixtureDataset({n: sw.stream(n) for n in weights}, weights, seed=seed, rank=rank, world_size=world_size)


def shapeworld_sft(difficulty: str | Difficulty = "easy", resolution: int = 64, *, seed: int = 0,
                   text_share: float = 0.0, cache_dir: str | Path | None = None, cache: bool = True,
                   rank: int | None = None, world_size: int | None = None) -> MixtureDataset:
    """SFT conversations on ShapeWorld (optionally mixed with text-only documents, `text_share` of samples)."""
    sw = ShapeWorldStreams(difficulty, resolution, cache_dir=cache_dir, cache=cache)
    weights = {"sft": 1.0 - text_share, "text": text_share}
    return MixtureDataset({n: sw.stream(n) for n in weights}, weights, seed=seed, rank=rank, world_size=world_size)
