"""ShapeWorld as MM1's data streams, and the MM1 default mixture built from them.

Item i of each stream is a pure function of i, so the streams are random access and endless. Scene seeds per
stream (all below 2**31, the held-out evaluation range):
    caption, dense: scene i (the same images, alt-text vs dense captions, as VeCap re-captions web images)
    interleaved: scenes 2**28 + 8i ... (2 to 5 images)        sft: scenes 2**29 + 2i (and + 1 for two-image turns)
    ocr, ocr_plain, sft_ocr: the i-th scene with a sign from 2**30 on (see `ShapeWorldStreams.ocr_seed`)
    interleaved_ocr: the ocr stream's scenes 5i ... (2 to 5 images)

`<stream>-text` (caption-text, dense-text, interleaved-text) is that stream with its images taken out: the words
people write around pictures, as a text corpus. Stage 0 pre-trains the LM on these and the text documents, the
way MM1's LLM saw web text before it ever saw an image.
"""

from __future__ import annotations

import dataclasses
import random
from functools import lru_cache
from pathlib import Path

from mm1lab.data.mixture import IndexedStream, MixtureDataset
from mm1lab.data.prompts import caption_text
from mm1lab.data.sample import Sample
from mm1lab.data.shapeworld import Difficulty, ShapeWorld, make_scene
from mm1lab.data.text import alt_text, dense_caption, interleaved_document, sft_turns, text_chat, text_document
from mm1lab.data.tokenizer import IMAGE

MM1_WEIGHTS = {"caption": 45.0, "interleaved": 45.0, "text": 10.0}   # MM1's 45:45:10
STREAMS = ("caption", "dense", "interleaved", "text", "sft", "sft_text", "sft_ocr", "sign", "ocr",
           "ocr_plain", "interleaved_ocr")
TEXT_ONLY = ("caption", "dense", "interleaved")   # streams that also come as `<name>-text`
INTERLEAVED_BASE, SFT_BASE, OCR_BASE = 2**28, 2**29, 2**30
OCR_GROUP = 256   # seeds per group of the ocr stream (see `ShapeWorldStreams.ocr_seed`)


def mm1_weights(dense_share: float = 0.07, *, caption: float = 45.0, interleaved: float = 45.0,
                text: float = 10.0) -> dict[str, float]:
    """Stream weights: captions split into alt-text and synthetic dense captions by `dense_share` (0..1)."""
    if not 0 <= dense_share <= 1:
        raise ValueError(f"dense_share must be in [0, 1], got {dense_share}")
    return {"caption": caption * (1 - dense_share), "dense": caption * dense_share, "interleaved": interleaved,
            "text": text}


class ShapeWorldStreams:
    """Sample makers for every data type; `world.image(seed)` renders (and caches) at `resolution`.

    question_mix: weights of the question types asked in interleaved documents and conversations, instead of the
        world's own (`Difficulty.question_mix`); may add "caption" and "describe" turns to conversations.
    compare_share: the chance of a two-image comparison passage in an interleaved document.
    qa_share: the share of an interleaved document's one-image passages that ask a question (the rest caption).
    The scenes and images stay the world's either way.
    """

    def __init__(self, difficulty: str | Difficulty = "easy", resolution: int = 64, *,
                 cache_dir: str | Path | None = None, cache: bool = True, multi_image_share: float = 0.1,
                 question_mix: dict[str, float] | None = None, compare_share: float = 0.0,
                 qa_share: float = 0.45):
        self.world = ShapeWorld(difficulty, resolution, cache_dir=cache_dir, cache=cache)
        self.d = self.world.difficulty
        self.multi_image_share, self.compare_share, self.qa_share = multi_image_share, compare_share, qa_share
        # the difficulty the text generators read; `self.d` (its key) still seeds scenes and sample randomness
        self.questions = self.d if not question_mix else dataclasses.replace(
            self.d, question_mix=tuple((t, float(w)) for t, w in question_mix.items() if w > 0))

    def _rng(self, stream: str, i: int) -> random.Random:
        return random.Random(f"{stream}:{self.d.key()}:{i}")

    def caption(self, i: int) -> Sample:
        """Web-style alt-text caption of scene i."""
        scene = self.world.scene(i)
        text = caption_text(alt_text(scene, self._rng("caption", i), self.d))
        return Sample.pretrain("caption", text, [self.world.image(i)], id=f"caption-{i}")

    def sign(self, i: int) -> Sample:
        """An OCR-style caption of scene i: only what its sign says (the alt-text when it has none), as text-rich
        caption data does for web images."""
        scene = self.world.scene(i)
        text = f'a sign that says "{scene.signs[0].text}"' if scene.signs else \
            alt_text(scene, self._rng("caption", i), self.d)
        return Sample.pretrain("caption", caption_text(text), [self.world.image(i)], id=f"sign-{i}")

    def ocr_seed(self, i: int) -> int:
        """The scene seed of ocr item i: one of the scenes with a sign, taken in order from groups of 256 seeds.

        Scenes with signs are packed densely so that the cache's seed blocks are mostly used: drawing one scene
        per 64 seeds, as this stream once did, rendered (and cached) 64 images for every one it used. A group of
        `OCR_GROUP` seeds holds about `text_prob` x 256 signed scenes (128 in the medium world) and gives half of
        that many items, so a group with too few is an 8-sigma event; if one came, its items would repeat.
        """
        if not self.d.text_prob:
            raise ValueError(f"the ocr stream needs signs, and world {self.d.name!r} draws none (text_prob=0); "
                             "use medium:ocr or hard:ocr")
        group, k = divmod(i, self.ocr_items_per_group)
        if OCR_BASE + OCR_GROUP * (group + 1) > 2**31:
            raise ValueError(f"ocr item {i} would draw from the held-out evaluation seeds (2**31 and above); the "
                             f"stream has {(2**31 - OCR_BASE) // OCR_GROUP * self.ocr_items_per_group:,} items")
        signed = _signed_seeds(self.d, OCR_BASE + OCR_GROUP * group)
        return signed[k % len(signed)]

    @property
    def ocr_items_per_group(self) -> int:
        return max(1, int(OCR_GROUP * self.d.text_prob / 2))

    def ocr(self, i: int) -> Sample:
        """A text-rich caption: a scene that has a sign, captioned with what the sign says (`sign` captions every
        scene, half of them without one). This is the share of web captions that reading is learned from."""
        return self._sign_caption(i, 'a sign that says "{}"', "ocr")

    def ocr_plain(self, i: int) -> Sample:
        """`ocr`'s scene i, its word unquoted: `a sign that says STOP`.

        Byte-level BPE splits a word by what comes before it: after a quote, `STOP` is one token; after a space, as
        an answer follows "Answer:", ` STOP` is another. A model that learns to read from quoted captions writes
        the quoted token, not the answer's, unless documents that ask (`interleaved_ocr`) carry the reading over;
        with them `mm1lab demo --long` keeps `ocr` (docs/stage0.md, "Quoted captions with the documents")."""
        return self._sign_caption(i, "a sign that says {}", "ocr_plain")

    def _sign_caption(self, i: int, template: str, stream: str) -> Sample:
        seed = self.ocr_seed(i)
        scene = self.world.scene(seed)
        text = template.format(scene.signs[0].text) if scene.signs else \
            alt_text(scene, self._rng("caption", seed), self.d)
        return Sample.pretrain("caption", caption_text(text), [self.world.image(seed)], id=f"{stream}-{i}")

    def interleaved_ocr(self, i: int) -> Sample:
        """A text-rich interleaved document: 2-5 scenes that have signs (the `ocr` stream's scenes 5i ...), and
        every question asks what a sign says. In `interleaved`, OCR is one question type among many, asked of
        scenes half of which have no sign, so a k-shot OCR passage is rare there."""
        n = self._rng("interleaved_ocr-n", i).randint(2, 5)
        seeds = [self.ocr_seed(5 * i + m) for m in range(n)]
        text = interleaved_document([self.world.scene(s) for s in seeds], self._rng("interleaved_ocr", i),
                                    self._asks_ocr, qa_share=self.qa_share)
        return Sample.pretrain("interleaved", text, [self.world.image(s) for s in seeds], id=f"interleaved_ocr-{i}")

    @property
    def _asks_ocr(self) -> Difficulty:
        return dataclasses.replace(self.d, question_mix=(("ocr", 1.0),))

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
        text = interleaved_document([self.world.scene(s) for s in seeds], self._rng("interleaved", i), self.questions,
                                    compare_share=self.compare_share, qa_share=self.qa_share)
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
        return sft_turns([self.world.scene(s) for s in self.sft_seeds(i)], self._rng("sft", i), self.questions)

    def sft(self, i: int) -> Sample:
        """A LLaVA-style conversation about one scene (or two, `multi_image_share` of the time)."""
        seeds = self.sft_seeds(i)
        return Sample.chat(self.sft_turns(i), [self.world.image(s) for s in seeds], id=f"sft-{i}")

    def sft_text(self, i: int) -> Sample:
        """A text-only conversation (MM1's SFT mix keeps text-only SFT data): complete a fact."""
        return Sample.chat(text_chat(self._rng("sft_text", i)), [], id=f"sft_text-{i}", stream="sft")

    def sft_ocr(self, i: int) -> Sample:
        """A conversation about what a scene's sign says (TextVQA-style SFT data), on the `ocr` stream's scene i.
        In `sft` conversations OCR is one question type among many, asked of scenes half of which have no sign."""
        seed = self.ocr_seed(i)
        turns = sft_turns([self.world.scene(seed)], self._rng("sft_ocr", i), self._asks_ocr)
        return Sample.chat(turns, [self.world.image(seed)], id=f"sft_ocr-{i}", stream="sft")

    def prerender(self, items: int) -> None:
        """Render into the cache every image the first `items` items of each stream use."""
        self.world.prerender(0, items)
        self.world.prerender(INTERLEAVED_BASE, INTERLEAVED_BASE + 8 * items)
        self.world.prerender(SFT_BASE, SFT_BASE + 2 * items)

    def text_only(self, name: str, i: int) -> Sample:
        """Item i of stream `name` with its images taken out (and the `Caption:` head of captions)."""
        sample = getattr(self, name)(i)
        text = sample.text.replace(IMAGE, " ").replace("Caption:", " ")
        text = "\n".join(" ".join(line.split()) for line in text.splitlines())
        for special in ("<bos>", "<eos>"):
            text = text.replace(special, "")
        return Sample.pretrain("text", text.strip(), [], id=f"{name}-text-{i}")

    def stream(self, name: str) -> IndexedStream:
        """The endless stream `name`: caption, dense, interleaved, text, sft, or caption/dense/interleaved-text."""
        base = name.removesuffix("-text")
        if name in STREAMS:
            return IndexedStream(getattr(self, name))
        if base in TEXT_ONLY and name != base:
            return IndexedStream(lambda i: self.text_only(base, i))
        raise ValueError(f"unknown stream {name!r}; choose one of {', '.join(STREAMS)} or "
                         f"{', '.join(s + '-text' for s in TEXT_ONLY)}")


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


@lru_cache(maxsize=16)
def _signed_seeds(d: Difficulty, start: int) -> tuple[int, ...]:
    """The seeds in [start, start + OCR_GROUP) whose scene has a sign (scene graphs only: about 30 ms a group)."""
    return tuple(s for s in range(start, start + OCR_GROUP) if make_scene(s, d).signs)
