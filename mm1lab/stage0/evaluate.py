"""How good is a stage-0 encoder? Attribute read-outs on held-out ShapeWorld scenes, each beside its chance level.

- `zero_shot(clip, ...)`: CLIP classifies an attribute from text prompts alone (no training on the labels).
- `retrieval(clip, ...)`: image -> caption R@1 among N held-out scenes and their dense captions (chance 1/N).
- `shape_swap(clip, ...)`: how often the image prefers its dense caption to the same caption with one shape word
  swapped (NegCLIP's test of binding; chance 0.5).
- `linear_probe(encoder, ...)`: a classifier on the frozen patch features, for any encoder, CLIP or AIM. "linear"
  reads every patch in place (so where things are is readable); "attention" pools the patches with learned
  attention first, so it can read a word wherever the sign stands. This is what MM1's connector builds on.

Attributes (`ATTRIBUTES`) are functions of the scene graph: the scene's colour, the object count, the shape and
position of the first object in reading order (top to bottom, left to right, as dense captions list them), and the
word on the sign (medium world, scenes whose sign holds one of the 20 words). Held-out scenes come from seeds far
above both the training streams (< 2**31) and MM1's evaluation sets (`mm1lab.data.evalsets`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from mm1lab.data.collate import preprocess_image
from mm1lab.data.shapeworld import POSITIONS, WORDS, Scene, ShapeWorld, get_difficulty
from mm1lab.data.text import NUMBER_WORDS, dense_caption
from mm1lab.eval.scoring import bootstrap_interval

STAGE0_EVAL_BASE = 2**32           # held-out scenes for stage-0 evaluation; probe training scenes above it
PROBE_TRAIN_OFFSET = 2**24


def reading_order(scene: Scene):
    """Objects top to bottom, left to right (the order dense captions use)."""
    return sorted(scene.objects, key=lambda o: (round(o.y * 3), o.x))


@dataclass(frozen=True)
class Attribute:
    """An attribute read off a scene: its world, its label (None: the scene does not qualify), the label set and
    the zero-shot prompt of each label."""

    world: str
    label: Callable[[Scene], str | None]
    labels: Callable[[str], tuple[str, ...]]        # difficulty name -> label set
    prompt: Callable[[str], str]


def _plural(n: int) -> str:
    return "shape" if n == 1 else "shapes"


ATTRIBUTES: dict[str, Attribute] = {
    "color": Attribute("easy", lambda s: s.objects[0].color, lambda d: get_difficulty(d).color_names,
                       lambda c: f"{c} shapes"),
    "count": Attribute("easy", lambda s: str(len(s.objects)),
                       lambda d: tuple(str(n) for n in range(1, get_difficulty(d).max_objects + 1)),
                       lambda n: f"The image shows {NUMBER_WORDS[int(n)]} {_plural(int(n))}."),
    "shape": Attribute("easy", lambda s: reading_order(s)[0].shape, lambda d: get_difficulty(d).shape_names,
                       lambda shape: f"a {shape}"),
    "position": Attribute("easy", lambda s: reading_order(s)[0].position, lambda d: POSITIONS,
                          lambda p: "In the center there is a shape." if p == "center" else f"At the {p} there is a "
                                    "shape."),
    "text": Attribute("medium", lambda s: s.signs[0].text if s.signs and s.signs[0].text in WORDS else None,
                      lambda d: WORDS, lambda w: f'A line of text reads "{w}".'),
}


def attribute_set(name: str, n: int, resolution: int, *, split: str = "test", cache_dir=None,
                  mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
                  ) -> tuple[Tensor, list[str]]:
    """`n` held-out images (preprocessed) whose scenes qualify for attribute `name`, and their labels.

    split "test" and "train" (probe training) draw from disjoint seed ranges."""
    attr = ATTRIBUTES[name]
    world = ShapeWorld(attr.world, resolution, cache_dir=cache_dir)
    start = STAGE0_EVAL_BASE + (PROBE_TRAIN_OFFSET if split == "train" else 0)
    images, labels, seed = [], [], start
    while len(labels) < n:
        label = attr.label(world.scene(seed))
        if label is not None:
            images.append(preprocess_image(world.image(seed), resolution, mean, std))
            labels.append(label)
        seed += 1
        if seed - start > 50 * n + 1000:
            raise RuntimeError(f"attribute {name!r}: too few qualifying scenes in the {attr.world} world")
    return torch.stack(images), labels


def chance(labels: list[str], label_set: tuple[str, ...]) -> dict[str, float]:
    """The majority label's share (what always answering it scores) and 1 / number of labels."""
    return dict(majority=Counter(labels).most_common(1)[0][1] / len(labels), uniform=1 / len(label_set))


@torch.no_grad()
def zero_shot(clip, tokenizer, name: str, *, n: int = 256, resolution: int | None = None,
              batch_size: int = 128) -> dict[str, float]:
    """Accuracy of CLIP picking the right label's prompt for attribute `name`, beside the chance levels."""
    from mm1lab.stage0.data import encode_captions

    attr, v = ATTRIBUTES[name], clip.cfg.vision
    label_set = attr.labels(attr.world)
    images, labels = attribute_set(name, n, resolution or v.image_size, mean=v.image_mean, std=v.image_std)
    clip.eval()
    texts = clip.encode_text(encode_captions(tokenizer, [attr.prompt(x) for x in label_set], clip.cfg.text))
    image_embeds = torch.cat([clip.encode_images(images[i:i + batch_size]) for i in range(0, n, batch_size)])
    predicted = (image_embeds @ texts.T).argmax(1).tolist()
    accuracy = sum(label_set[p] == y for p, y in zip(predicted, labels)) / n
    return dict(score=accuracy, n=n, **chance(labels, label_set))


def _caption_scenes(clip, n: int, world: str, resolution: int | None) -> tuple[list[int], list[Scene], Tensor]:
    """The `n` held-out scenes that retrieval and the shape swap caption: seeds, scene graphs, preprocessed images."""
    v = clip.cfg.vision
    size = resolution or v.image_size
    sw = ShapeWorld(world, size)
    seeds = [STAGE0_EVAL_BASE + 2 * PROBE_TRAIN_OFFSET + i for i in range(n)]
    images = torch.stack([preprocess_image(sw.image(s), size, v.image_mean, v.image_std) for s in seeds])
    return seeds, [sw.scene(s) for s in seeds], images


@torch.no_grad()
def retrieval(clip, tokenizer, *, n: int = 256, world: str = "easy", resolution: int | None = None) -> dict[str, float]:
    """Image -> text R@1 among `n` held-out scenes and their dense captions (chance 1/n)."""
    from mm1lab.stage0.data import encode_captions

    seeds, scenes, images = _caption_scenes(clip, n, world, resolution)
    clip.eval()
    texts = clip.encode_text(encode_captions(tokenizer, [dense_caption(s) for s in scenes], clip.cfg.text))
    hits = (clip.encode_images(images) @ texts.T).argmax(1) == torch.arange(n)
    return dict(score=hits.float().mean().item(), n=n, uniform=1 / n)


@torch.no_grad()
def shape_swap(clip, tokenizer, *, n: int = 256, world: str = "easy",
               resolution: int | None = None) -> dict[str, float]:
    """How often CLIP embeds a held-out scene closer to its dense caption than to the same caption with one shape
    word swapped (`mm1lab.stage0.data.swap_shape`): does it bind shapes to their places? Chance 0.5."""
    import random

    from mm1lab.stage0.data import encode_captions, swap_shape

    seeds, scenes, images = _caption_scenes(clip, n, world, resolution)            # retrieval's scenes
    shapes = get_difficulty(world).shape_names
    captions = [dense_caption(s) for s in scenes]                                  # each names every object
    swapped = [swap_shape(c, shapes, random.Random(f"swap:{s}")) for c, s in zip(captions, seeds)]
    clip.eval()
    image = clip.encode_images(images)
    true, false = (clip.encode_text(encode_captions(tokenizer, texts, clip.cfg.text)) for texts in (captions, swapped))
    wins = (image * true).sum(1) > (image * false).sum(1)
    return dict(score=wins.float().mean().item(), n=n, uniform=0.5)


@torch.no_grad()
def patch_features(encoder, images: Tensor, *, batch_size: int = 128) -> Tensor:
    """(N, patches, width) frozen features of the encoder's feature layer, bidirectional (no mask)."""
    encoder.eval()
    return torch.cat([encoder(images[i:i + batch_size]).features for i in range(0, len(images), batch_size)])


class AttentionProbe(torch.nn.Module):
    """One learned query attends over the patches; a linear layer reads the pooled feature."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.query = torch.nn.Parameter(torch.zeros(dim))
        self.out = torch.nn.Linear(dim, classes)

    def forward(self, features: Tensor) -> Tensor:
        weights = (features @ self.query * features.shape[-1] ** -0.5).softmax(-1)       # (N, n)
        return self.out(torch.einsum('Nn,Nnd->Nd', weights, features))


def linear_probe(encoder, name: str, *, n_train: int = 2048, n_test: int = 512, resolution: int | None = None,
                 steps: int = 300, weight_decay: float = 1e-3, seed: int = 0, kind: str = "linear") -> dict[str, float]:
    """Test accuracy of a probe (full-batch AdamW on standardised frozen patch features) for attribute `name`, beside
    the chance levels of the test labels. kind: "linear" (every patch in place) or "attention" (attention-pooled)."""
    attr, v = ATTRIBUTES[name], encoder.cfg
    label_set = attr.labels(attr.world)
    size = resolution or v.image_size
    x_train, y_train = attribute_set(name, n_train, size, split="train", mean=v.image_mean, std=v.image_std)
    x_test, y_test = attribute_set(name, n_test, size, mean=v.image_mean, std=v.image_std)
    f_train, f_test = patch_features(encoder, x_train), patch_features(encoder, x_test)
    if kind == "linear":
        f_train, f_test = (rearrange(f, 'N n d -> N (n d)') for f in (f_train, f_test))
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    index = {label: i for i, label in enumerate(label_set)}
    t_train = torch.tensor([index[y] for y in y_train])
    torch.manual_seed(seed)
    if kind == "linear":
        probe = torch.nn.Linear(f_train.shape[1], len(label_set))
        with torch.no_grad():
            probe.weight.normal_(0, 0.01)
            probe.bias.zero_()
    elif kind == "attention":
        probe = AttentionProbe(f_train.shape[-1], len(label_set))
    else:
        raise ValueError(f"probe kind must be 'linear' or 'attention', got {kind!r}")
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(f_train), t_train).backward()
        opt.step()
    with torch.no_grad():
        predicted = probe(f_test).argmax(1).tolist()
    right = [float(label_set[p] == y) for p, y in zip(predicted, y_test)]
    return dict(score=sum(right) / n_test, interval=bootstrap_interval(right), n=n_test, **chance(y_test, label_set))
