"""ShapeWorld: a procedural world of coloured shapes and signs, rendered with Pillow, deterministic from a seed.

A `Scene` (the scene graph) holds the ground truth every caption, question and answer is derived from. It lives in
unit coordinates, so the same scene renders at any resolution and a resolution ablation changes only the pixels;
text drawn at 6% of the image side is unreadable at 64 px and clear at 256 px.
`Difficulty` holds the knobs (objects per scene, colours, shapes, sizes, text sizes, question mix); `DIFFICULTIES`
has "easy" (the CPU demo: 1-4 large objects of one colour, learnable in minutes), "medium" and "hard".
Rendering costs a few ms per scene, so `ShapeWorld` caches rendered blocks of consecutive seeds on disk
(`~/.cache/mm1lab/shapeworld`, or $MM1LAB_CACHE), keyed by difficulty, resolution and seed block, under a size cap
($MM1LAB_CACHE_GB, default 8; see render_cache.py).
Seeds below 2**31 are for training; evaluation sets draw from 2**31 and above (see `evalsets.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mm1lab.config import pick
from mm1lab.data import render_cache

RENDER_VERSION = 1   # bump when drawing changes, so stale caches are not reused
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (240, 220, 40),
          "purple": (150, 60, 200), "orange": (250, 140, 20), "pink": (250, 130, 190), "cyan": (40, 210, 220),
          "brown": (140, 90, 40), "gray": (140, 140, 140)}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "pentagon")
BACKGROUNDS = {"black": (15, 15, 20), "white": (245, 245, 245), "beige": (235, 225, 200)}
WORDS = ("STOP", "OPEN", "CAT", "DOG", "SALE", "EXIT", "BUS", "MILK", "PARK", "SHOP", "TAXI", "HOTEL", "BOOK",
         "FISH", "TEA", "SUN", "MOON", "CAKE", "ZOO", "FARM")
SIZES = {"small": 0.07, "large": 0.13}   # radius as a fraction of the image side (3x3 grid)
POSITIONS = ("top left", "top center", "top right", "left", "center", "right", "bottom left", "bottom center",
             "bottom right")   # what `Obj.position` names (thirds of the image)


@dataclass(frozen=True, kw_only=True)
class Difficulty:
    """Knobs of the world. Question shares (`question_mix`) weight the SFT/interleaved/eval question types."""

    name: str = "custom"
    min_objects: int = 1
    max_objects: int = 4
    colors: int = 6                       # use the first n of COLORS
    shapes: int = 3                       # use the first n of SHAPES
    sizes: tuple[str, ...] = ("large",)
    one_color: bool = True                # every object in a scene shares one colour
    backgrounds: int = 1                  # use the first n of BACKGROUNDS
    text_prob: float = 0.0                # share of scenes carrying a sign
    text_sizes: tuple[float, ...] = (0.22,)   # text height as a fraction of the image side
    caption_noise: float = 0.1            # share of alt-text captions that are partial or loosely related
    # Counting gets the largest share, with step-by-step answers that name every object: it is the slowest skill to
    # appear (colour is learned almost for free). Yes/no existence probes teach refusing to hallucinate (POPE).
    question_mix: tuple[tuple[str, float], ...] = (("color", 0.2), ("count", 0.35), ("count_steps", 0.15),
                                                   ("shape", 0.15), ("pope", 0.15))

    def __post_init__(self) -> None:
        checks = [(1 <= self.min_objects <= self.max_objects <= 12, "need 1 <= min_objects <= max_objects <= 12"),
                  (2 <= self.colors <= len(COLORS), f"colors must be in 2..{len(COLORS)}"),
                  (1 <= self.shapes <= len(SHAPES), f"shapes must be in 1..{len(SHAPES)}"),
                  (set(self.sizes) <= set(SIZES) and self.sizes, f"sizes must be a non-empty subset of {list(SIZES)}"),
                  (1 <= self.backgrounds <= len(BACKGROUNDS), f"backgrounds must be in 1..{len(BACKGROUNDS)}"),
                  (0 <= self.text_prob <= 1 and 0 <= self.caption_noise <= 1, "probabilities must be in [0, 1]"),
                  (all(0.02 <= s <= 0.4 for s in self.text_sizes), "text_sizes must be fractions in [0.02, 0.4]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Difficulty({self.name!r}): {message}")

    @property
    def color_names(self) -> tuple[str, ...]:
        """The colours in use."""
        return tuple(COLORS)[: self.colors]

    @property
    def shape_names(self) -> tuple[str, ...]:
        """The shapes in use."""
        return SHAPES[: self.shapes]

    @property
    def grid(self) -> int:
        """Cells per side of the placement grid (one object per cell, so objects never overlap)."""
        return 3 if self.max_objects <= 6 else 4

    def key(self) -> str:
        """Short stable hash of every knob, for cache paths and sample seeds."""
        return _difficulty_key(self)


@lru_cache(maxsize=64)
def _difficulty_key(d: Difficulty) -> str:
    # Cached: every sample seeds its randomness with this key, and hashing the knobs afresh each time (asdict, JSON,
    # SHA-1) took ~5% of a demo SFT step (cProfile). A frozen Difficulty is hashable, so equal knobs share one entry.
    blob = json.dumps(dataclasses.asdict(d), sort_keys=True) + f"v{RENDER_VERSION}"
    return f"{d.name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


DIFFICULTIES = {
    # The demo world: the tiny preset learns colour within minutes at 64 px; counting after ~20k counting examples
    # (the demo's SFT stage, ~6 CPU minutes).
    "easy": Difficulty(name="easy"),
    "medium": Difficulty(name="medium", max_objects=6, colors=8, shapes=5, sizes=("small", "large"), one_color=False,
                         backgrounds=2, text_prob=0.5, text_sizes=(0.2, 0.12), caption_noise=0.2,
                         question_mix=(("color", 0.2), ("count", 0.15), ("shape", 0.15), ("position", 0.1),
                                       ("ocr", 0.15), ("pope", 0.2), ("count_steps", 0.05))),
    # Binding colour to shape, existence and small-text OCR: for longer runs and resolution ablations.
    "hard": Difficulty(name="hard", min_objects=2, max_objects=9, colors=10, shapes=8, sizes=("small", "large"),
                       one_color=False, backgrounds=3, text_prob=0.7, text_sizes=(0.16, 0.09, 0.06),
                       caption_noise=0.3,
                       question_mix=(("color", 0.15), ("count", 0.1), ("shape", 0.1), ("position", 0.1),
                                     ("ocr", 0.25), ("pope", 0.25), ("count_steps", 0.05))),
}


def get_difficulty(difficulty: str | Difficulty) -> Difficulty:
    """A `Difficulty` from its preset name (or pass one through)."""
    return pick(DIFFICULTIES, difficulty, "difficulty", Difficulty)


@dataclass
class Obj:
    """One shape: centre (x, y) in [0, 1] from the top left, radius r as a fraction of the side."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    r: float

    @property
    def position(self) -> str:
        """'top left' ... 'bottom right', or 'center' (thirds of the image)."""
        col = ("left", "center", "right")[min(int(self.x * 3), 2)]
        row = ("top", "middle", "bottom")[min(int(self.y * 3), 2)]
        return "center" if (row, col) == ("middle", "center") else f"{row} {col}".replace("middle ", "")


@dataclass
class Sign:
    """Rendered text: a word or number, its centre, height (fraction of the side) and colour."""

    text: str
    x: float
    y: float
    height: float
    color: str


@dataclass
class Scene:
    """The scene graph: the ground truth of one ShapeWorld image."""

    seed: int
    background: str
    objects: list[Obj] = field(default_factory=list)
    signs: list[Sign] = field(default_factory=list)

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Objects matching an optional shape and colour."""
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects)

    def to_dict(self) -> dict:
        """Plain dicts and lists (JSON-ready ground truth)."""
        return dataclasses.asdict(self)


def make_scene(seed: int, difficulty: str | Difficulty = "easy") -> Scene:
    """The scene for `seed` (same seed and difficulty give the same scene on every machine)."""
    d = get_difficulty(difficulty)
    rng = random.Random(f"shapeworld:{d.key()}:{seed}")
    background = rng.choice(list(BACKGROUNDS)[: d.backgrounds])
    g = d.grid
    rows = list(range(g))
    signs = []
    if rng.random() < d.text_prob:
        sign_row = rng.choice((0, g - 1))
        rows.remove(sign_row)
        text = rng.choice(WORDS) if rng.random() < 0.6 else str(rng.randint(10, 999))
        ink = "white" if background == "black" else "black"
        signs.append(Sign(text=text, x=0.5 + rng.uniform(-0.1, 0.1), y=(sign_row + 0.5) / g,
                          height=rng.choice(d.text_sizes), color=ink))
    cells = [(r, c) for r in rows for c in range(g)]
    n = rng.randint(d.min_objects, min(d.max_objects, len(cells)))
    shared = rng.choice(d.color_names)
    objects = []
    for r, c in rng.sample(cells, n):
        size = rng.choice(d.sizes)
        radius = SIZES[size] * 3 / g          # sizes are for a 3x3 grid; a finer grid shrinks them
        slack = 0.5 / g - 1.25 * radius       # jitter inside the cell without leaving it (stars reach 1.25 r)
        jx, jy = (rng.uniform(-slack, slack) if slack > 0 else 0.0 for _ in range(2))
        objects.append(Obj(shape=rng.choice(d.shape_names), color=shared if d.one_color else rng.choice(d.color_names),
                           size=size, x=(c + 0.5) / g + jx, y=(r + 0.5) / g + jy, r=radius))
    return Scene(seed=seed, background=background, objects=objects, signs=signs)


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(px, 1))   # bundled font, needs Pillow >= 10.1, no system fonts


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, turn: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(turn + 2 * math.pi * i / n), cy + radius * math.sin(turn + 2 * math.pi * i / n))
                for i in range(n)]
    if shape == "square":
        return ring(4, r * 1.15, math.pi / 4)
    if shape == "triangle":
        return ring(3, r * 1.2, -math.pi / 2)
    if shape == "diamond":
        return ring(4, r * 1.2, 0)
    if shape == "hexagon":
        return ring(6, r * 1.05, 0)
    if shape == "pentagon":
        return ring(5, r * 1.1, -math.pi / 2)
    if shape == "star":
        outer, inner = ring(5, r * 1.25, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = r * 0.38, r * 1.1
        pts = [(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b),
               (-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a), (-a, b)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, resolution: int = 64, *, supersample: int = 2) -> Image.Image:
    """Draw `scene` as an RGB image of side `resolution` (drawn `supersample`x larger, then reduced: anti-aliasing)."""
    side = resolution * supersample
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        cx, cy, r = o.x * side, o.y * side, o.r * side
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[o.color])
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=COLORS[o.color])
    for s in scene.signs:
        ink = (255, 255, 255) if s.color == "white" else (0, 0, 0)
        draw.text((s.x * side, s.y * side), s.text, fill=ink, font=_font(round(s.height * side)), anchor="mm")
    return image.reduce(supersample) if supersample > 1 else image


_TRIM_WARNED: set[Path] = set()     # cache folders whose trim this process has reported


class ShapeWorld:
    """Scenes and cached renders of one difficulty at one resolution.

    `image(seed)` renders the whole block of `block_size` consecutive seeds on first use and stores it as one .npy
    (uint8, b h w c); later calls, in this or another process, read it memory-mapped. Set `cache=False` to render
    every call (no disk use).
    """

    def __init__(self, difficulty: str | Difficulty = "easy", resolution: int = 64, *,
                 cache_dir: str | Path | None = None, cache: bool = True, block_size: int | None = None):
        self.difficulty = get_difficulty(difficulty)
        self.resolution = resolution
        self.cache = cache
        self.base = render_cache.cache_root(cache_dir)
        self.root = self.base / self.difficulty.key() / f"{resolution}px"
        # about one second of rendering per block; large images come in smaller blocks
        self.block_size = block_size or max(4, 256 * 64 * 64 // (resolution * resolution))
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._unwritable = False   # set when the cache's disk is full or read-only
        self._writes = 0           # blocks this instance wrote; the cache's size is checked on the first, then
                                   # every render_cache.CHECK_EVERY

    def scene(self, seed: int) -> Scene:
        """The scene graph of `seed`."""
        return make_scene(seed, self.difficulty)

    def image(self, seed: int) -> Image.Image:
        """The rendered image of `seed` (cached)."""
        return Image.fromarray(np.asarray(self.array(seed)))

    def array(self, seed: int) -> np.ndarray:
        """The rendered image of `seed` as a uint8 array (h, w, 3)."""
        if not self.cache:
            return np.asarray(render(self.scene(seed), self.resolution))
        block, offset = divmod(seed, self.block_size)
        return self._block(block)[offset]

    def _block(self, block: int) -> np.ndarray:
        if block in self._blocks:
            self._blocks.move_to_end(block)
            return self._blocks[block]
        path = self.root / f"{block:08d}.npy"
        if path.exists():
            try:
                arr = np.load(path, mmap_mode="r")
                render_cache.mark_used(path)
            except (ValueError, OSError):   # a damaged cache file, or one a trim just deleted: render again
                arr = self._render_block(block, path)
        else:
            arr = self._render_block(block, path)
        self._blocks[block] = arr
        if len(self._blocks) > 8:
            self._blocks.popitem(last=False)
        return arr

    def _render_block(self, block: int, path: Path) -> np.ndarray:
        """Render a block and store it; a cache that cannot be written (a full disk) is warned about once, and
        the run goes on rendering in memory."""
        start = block * self.block_size
        arr = np.stack([np.asarray(render(self.scene(s), self.resolution))
                        for s in range(start, start + self.block_size)])
        if self._unwritable:
            return arr
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)   # atomic: concurrent workers never read half a file
        except OSError as error:
            with contextlib.suppress(OSError):   # nothing to remove when the folder was never made
                tmp.unlink()
            self._unwritable = True
            warnings.warn(f"ShapeWorld could not write its render cache in {self.root} ({error}); this run goes "
                          "on rendering without it, which is slower. Free disk space, or set $MM1LAB_CACHE to a "
                          f"disk with room. The cache can be deleted at any time (rm -r {self.root.parent.parent}):"
                          " it is rebuilt as needed.", stacklevel=2)
        else:   # only a write that landed counts towards the cap; a failed trim is not a failed write
            self._trim(path)
        return arr

    def _trim(self, written: Path) -> None:
        """Keep the cache under its cap ($MM1LAB_CACHE_GB): on this instance's first write, then every
        CHECK_EVERY writes, delete the blocks used longest ago. Says so once per cache folder and process."""
        self._writes += 1
        cap = render_cache.cap_bytes()
        if cap is None or (self._writes - 1) % render_cache.CHECK_EVERY:
            return
        removed, freed = render_cache.trim(self.base, cap, keep=written)
        if removed and self.base not in _TRIM_WARNED:
            _TRIM_WARNED.add(self.base)
            warnings.warn(f"ShapeWorld's render cache in {self.base} passed its cap of {cap / 1e9:g} GB, so the "
                          f"{removed} blocks used longest ago ({freed / 1e9:.2f} GB) were deleted; they are rendered "
                          "again if needed. Set $MM1LAB_CACHE_GB to change the cap (0: none); `mm1lab data cache` "
                          "shows what the cache holds.", stacklevel=3)

    def prerender(self, start: int, stop: int) -> None:
        """Fill the cache for seeds [start, stop) ahead of training. Refuses more than the cache's cap would keep."""
        need, cap = (stop - start) * self.resolution ** 2 * 3, render_cache.cap_bytes()
        if cap is not None and need > cap:
            raise ValueError(f"prerendering {stop - start} scenes at {self.resolution} px takes about {need / 1e9:.1f} "
                             f"GB, more than the render cache's cap of {cap / 1e9:g} GB: the first blocks would be "
                             "deleted before training reads them. Raise $MM1LAB_CACHE_GB, or prerender fewer seeds.")
        for block in range(start // self.block_size, (stop - 1) // self.block_size + 1):
            self._block(block)

