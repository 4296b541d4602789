"""Typed configs for the three MM1 parts and the presets built from them.

Every config is a keyword-only dataclass. Derived sizes are properties (never frozen defaults), and
`__post_init__` validates each field with a message that names the field and what is allowed.
`MM1Config.preset(name)` returns one of `PRESETS`; `to_dict`/`from_dict`, JSON and YAML round-trip.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm1lab.fieldtypes import FieldTypeError, convert_fields

PARTS = ("vision", "connector", "lm")   # MM1's three parts: the attribute names on MM1Config and MM1Model
IGNORE = -100   # label value that takes no loss (the PyTorch / HF convention)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


class ConfigError(ValueError):
    """A config field holds a value that cannot work; the message names the field and the fix."""


@dataclass(frozen=True)
class ConnectorKind:
    """One row of the connector table: the file that builds it and what the rest of mm1lab needs to know.

    module: the file in `mm1lab/connectors/` that defines and registers it (imported by that package).
    every_patch: one LM token per patch (k = patches, `num_tokens` ignored); else k = `num_tokens`.
    fit: how k must fit the patch grid: "pool" (k a perfect square, pooled to sqrt(k) x sqrt(k), at most the
        grid), "divide" (k a perfect square whose root divides the grid side), or None (any k).
    regions: what its `ConnectorInfo.regions` hold, the caption of the probe's attention map.
    """

    module: str
    every_patch: bool = False
    fit: str | None = None
    regions: str = "connector regions"


# The connector table. Adding a connector for an ablation: one row here, one file in mm1lab/connectors/.
CONNECTORS: dict[str, ConnectorKind] = {
    "avgpool": ConnectorKind(module="avgpool", fit="divide", regions="each token's average-pooled cell"),
    "attnpool": ConnectorKind(module="attnpool", regions="attention-pooling weights (mean over pooling heads)"),
    "c-abstractor": ConnectorKind(module="c_abstractor", fit="pool",
                                  regions="each token's pooled cell (the 3x3 convolutions' halo left out)"),
    "d-abstractor": ConnectorKind(module="d_abstractor", fit="pool",
                                  regions="bilinear footprint of the D-Abstractor's sampling points"),
    "mlp": ConnectorKind(module="mlp", every_patch=True, regions="one token per patch"),
    "pixel-shuffle": ConnectorKind(module="pixel_shuffle", fit="divide", regions="each token's pixel-shuffle block"),
}
FITS = ("pool", "divide", None)


def check_connector_fits(kind: str, num_tokens: int, grid: int) -> None:
    """Raise a ConfigError if `num_tokens` image tokens of connector `kind` cannot come from a grid x grid map."""
    fit, side = CONNECTORS[kind].fit, math.isqrt(num_tokens)
    if fit == "divide":
        _check(grid % side == 0,
               f"ConnectorConfig.num_tokens={num_tokens}: {kind!r} needs sqrt(num_tokens)={side} to divide the patch "
               f"grid side {grid}; use one of {[r * r for r in range(1, grid + 1) if grid % r == 0]}")
    elif fit == "pool":
        _check(side <= grid,
               f"ConnectorConfig.num_tokens={num_tokens} pools to {side}x{side}, larger than the {grid}x{grid} "
               f"patch grid; use at most {grid * grid}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Fields renamed since configs were first written: a file with an old name still loads, with a warning.
RENAMED: dict[str, dict[str, str]] = {
    "ConnectorConfig": {"hidden": "width"},
    "MoEConfig": {"expert_ffn_dim": "ffn_dim"},
}


def build(cls: type, data: dict[str, Any], where: str | None = None) -> Any:
    """`cls(**data)` for a config dataclass, with renamed fields translated, unknown fields named and every value
    checked against its field's type (`mm1lab.fieldtypes`); nested configs are built the same way."""
    name, where = cls.__name__, where or cls.__name__
    _check(isinstance(data, dict), f"{where}: expected a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    for old, new in RENAMED.get(name, {}).items():
        if old in data:
            _check(new not in data, f"{where}: both {old!r} (its old name) and {new!r} are set; keep {new!r}")
            warnings.warn(f"{where}.{old} is now called {new!r}; rename it in your config", FutureWarning,
                          stacklevel=3)
            data[new] = data.pop(old)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    _check(not unknown, f"{where}: unknown field(s) {unknown}; known fields are {known}")
    try:
        data = convert_fields(cls, data, where, build)
    except FieldTypeError as exc:
        raise ConfigError(str(exc)) from None
    return cls(**data)


def pick(table: dict[str, Any], name: Any, what: str, cls: type | None = None) -> Any:
    """`table[name]`, or `name` itself when it already is a `cls`; a ValueError lists the choices."""
    if cls is not None and isinstance(name, cls):
        return name
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return table[name]


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, int) and value > 0,
               f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(kw_only=True)
class VisionConfig:
    """ViT image encoder (CLIP-style). Defaults are ViT-L/14 at 336 px, MM1's ablation encoder."""

    image_size: int = 336
    patch_size: int = 14
    channels: int = 3
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    cls_token: bool = True
    patch_bias: bool = False      # CLIP's patch conv has no bias; SigLIP's does
    pre_norm: bool = True         # CLIP's `ln_pre` before the first block
    post_norm: bool = True        # final LayerNorm, applied to the features when feature_layer == -1
    feature_layer: int = -1       # which block's output feeds the connector: -1 last, -2 penultimate
    norm_eps: float = 1e-5
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)   # CLIP normalisation
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self) -> None:
        _positive(self, "image_size", "patch_size", "channels", "width", "depth", "heads")
        _check(self.image_size % self.patch_size == 0,
               f"VisionConfig.image_size ({self.image_size}) must be a multiple of patch_size "
               f"({self.patch_size}); try {self.grid_size * self.patch_size} or "
               f"{(self.grid_size + 1) * self.patch_size}")
        _check(self.width % self.heads == 0,
               f"VisionConfig.heads ({self.heads}) must divide width ({self.width})")
        _check(self.act in ACTIVATIONS, f"VisionConfig.act must be one of {ACTIVATIONS}, got {self.act!r}")
        _check(-self.depth <= self.feature_layer <= -1,
               f"VisionConfig.feature_layer must be in [-{self.depth}, -1] (counted from the last block), "
               f"got {self.feature_layer}")
        _check(self.mlp_ratio > 0, f"VisionConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        _check(len(self.image_mean) == self.channels and len(self.image_std) == self.channels,
               f"VisionConfig.image_mean/image_std need {self.channels} values (one per channel)")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def ffn_dim(self) -> int:
        """Width of each block's MLP (the FFN), `mlp_ratio` x width."""
        return int(self.width * self.mlp_ratio)


@dataclass(kw_only=True)
class ConnectorConfig:
    """Vision-language connector, chosen by `kind` from the registry in `mm1lab.connectors`."""

    kind: str = "c-abstractor"
    num_tokens: int = 144          # image tokens handed to the LM per image (k); `mlp` keeps every patch
    width: int = 1024              # internal width of the C-Abstractor stages and the D-Abstractor decoder
    depth: int = 3                 # RegNet bottleneck blocks per C-Abstractor stage
    layers: int = 6                # D-Abstractor decoder layers
    heads: int = 8                 # attnpool / D-Abstractor heads
    points: int = 4                # D-Abstractor sampling points per head

    def __post_init__(self) -> None:
        _check(self.kind in CONNECTORS,
               f"ConnectorConfig.kind: unknown connector {self.kind!r}; choose one of {', '.join(CONNECTORS)}")
        _positive(self, "num_tokens", "width", "depth", "layers", "heads", "points")
        if CONNECTORS[self.kind].fit is not None:
            _check(math.isqrt(self.num_tokens) ** 2 == self.num_tokens,
                   f"ConnectorConfig.num_tokens must be a perfect square for {self.kind!r} "
                   f"(it pools to a sqrt(k) x sqrt(k) grid), got {self.num_tokens}")

    @property
    def token_grid(self) -> int:
        """Side of the square output grid for the pooling connectors."""
        return math.isqrt(self.num_tokens)


@dataclass(kw_only=True)
class MoEConfig:
    """Mixture-of-experts FFN: `num_experts` SwiGLU experts, top-k routing, in every `every`-th layer."""

    num_experts: int = 64
    top_k: int = 2
    every: int = 2                 # layers i with (i + 1) % every == 0 are MoE (every 2nd: 1, 3, 5, ...)
    ffn_dim: int | None = None     # each expert's FFN width; None: the LM's ffn_dim
    balance_coef: float = 0.01     # load-balancing loss coefficient (MM1)
    z_coef: float = 0.001          # router z-loss coefficient (MM1)

    def __post_init__(self) -> None:
        _positive(self, "num_experts", "top_k", "every")
        _check(self.top_k <= self.num_experts,
               f"MoEConfig.top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        _check(self.ffn_dim is None or self.ffn_dim > 0,
               f"MoEConfig.ffn_dim must be None or positive, got {self.ffn_dim}")
        _check(self.balance_coef >= 0 and self.z_coef >= 0,
               "MoEConfig.balance_coef and z_coef must be >= 0")

    def is_moe_layer(self, index: int) -> bool:
        return (index + 1) % self.every == 0


@dataclass(kw_only=True)
class LMConfig:
    """Decoder-only LM (Llama family): RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    vocab_size: int = 32000
    width: int = 2048
    depth: int = 24
    heads: int = 16
    kv_heads: int | None = None    # None: multi-head attention (kv_heads == heads)
    head_dim_override: int | None = None   # for checkpoints whose head_dim != width / heads
    ffn_dim: int = 5632
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False         # Qwen2 has biases on q, k, v
    tie_embeddings: bool = True
    moe: MoEConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = build(MoEConfig, self.moe, "LMConfig.moe")
        _positive(self, "vocab_size", "width", "depth", "heads", "ffn_dim", "max_seq_len")
        if self.head_dim_override is None:
            _check(self.width % self.heads == 0, f"LMConfig.heads ({self.heads}) must divide width ({self.width})")
        _check(self.n_kv_heads > 0 and self.heads % self.n_kv_heads == 0,
               f"LMConfig.kv_heads ({self.kv_heads}) must be a positive divisor of heads ({self.heads})")
        _check(self.head_dim % 2 == 0, f"LMConfig head_dim ({self.head_dim}) must be even for rotary embeddings")

    @property
    def n_kv_heads(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.width // self.heads

    def is_moe_layer(self, index: int) -> bool:
        return self.moe is not None and self.moe.is_moe_layer(index)


@dataclass(kw_only=True)
class MM1Config:
    """A whole MM1 model: encoder, connector, LM, and the token ids the model itself needs."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    image_token_id: int = 3        # placeholder id; each image fills `image_tokens` consecutive placeholders
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    max_images: int = 16           # images per sequence (MM1)
    name: str = "custom"

    def __post_init__(self) -> None:
        for attr, cls in (("vision", VisionConfig), ("connector", ConnectorConfig), ("lm", LMConfig)):
            if isinstance(getattr(self, attr), dict):
                setattr(self, attr, build(cls, getattr(self, attr), f"MM1Config.{attr}"))
        for name in ("image_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            _check(0 <= value < self.lm.vocab_size,
                   f"MM1Config.{name} ({value}) must be a token id in [0, lm.vocab_size={self.lm.vocab_size})")
        _positive(self, "max_images")
        check_connector_fits(self.connector.kind, self.connector.num_tokens, self.vision.grid_size)

    @property
    def image_tokens(self) -> int:
        """LM tokens per image (k): every patch for connectors that keep them (`mlp`), else connector.num_tokens."""
        return self.vision.num_patches if CONNECTORS[self.connector.kind].every_patch else self.connector.num_tokens

    # ---- presets -------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MM1Config:
        """A named preset (see `PRESETS`); keyword overrides replace top-level fields."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        cfg = cls.from_dict(PRESETS[name]())
        return dataclasses.replace(cfg, **overrides) if overrides else cfg

    # ---- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MM1Config:
        return build(cls, plain(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MM1Config:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(plain(self.to_dict()), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> MM1Config:
        from mm1lab import yamlio
        return cls.from_dict(yamlio.load(text))

    def save(self, path: str | Path) -> None:
        """Write JSON or YAML, chosen by the file suffix."""
        path = Path(path)
        path.write_text(self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> MM1Config:
        """Read JSON or YAML (by suffix); every error names the file."""
        from mm1lab import yamlio
        path = Path(path)
        try:
            return cls.from_dict(yamlio.load_file(path) if path.suffix in (".yaml", ".yml")
                                 else json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:   # ConfigError, malformed JSON, or yamlio's error (which names the file)
            raise ConfigError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def plain(data: Any) -> Any:
    """A fresh copy of nested dicts, lists and tuples with tuples as lists: what JSON and YAML (safe_dump rejects
    Python tuples) write, and what `from_dict` may change without touching the caller's dict."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    return data


# ---- presets ---------------------------------------------------------------------------------------------
# Sizes of the LMs are not published; these Llama-shaped widths/depths land within a few percent of the
# paper's 1.2B / 3B / 7B / 30B and of the MoE totals (~64B, ~47B). `mm1lab presets` prints the counts.
VIT_L14_336 = dict(image_size=336, patch_size=14, width=1024, depth=24, heads=16)
VIT_H14_378 = dict(image_size=378, patch_size=14, width=1280, depth=32, heads=16)
C_ABSTRACTOR_144 = dict(kind="c-abstractor", num_tokens=144, width=1024, depth=3)
LM_1B = dict(vocab_size=32000, width=2048, depth=24, heads=16, ffn_dim=5632)
LM_3B = dict(vocab_size=32000, width=3072, depth=26, heads=24, ffn_dim=8192)
LM_7B = dict(vocab_size=32000, width=4096, depth=32, heads=32, ffn_dim=11008)
LM_30B = dict(vocab_size=32000, width=6656, depth=60, heads=52, ffn_dim=17920)


def _mm1(name: str, lm: dict[str, Any], moe: dict[str, Any] | None = None,
         vision: dict[str, Any] = VIT_H14_378) -> dict[str, Any]:
    return dict(name=name, vision=dict(vision), connector=dict(C_ABSTRACTOR_144),
                lm=dict(lm, moe=dict(moe) if moe else None))


PRESETS: dict[str, Any] = {
    # ~1M parameters: learns ShapeWorld counting and colour within minutes on 2 CPU cores.
    "tiny": lambda: dict(
        name="tiny",
        vision=dict(image_size=64, patch_size=8, width=64, depth=4, heads=4, act="gelu"),
        connector=dict(kind="c-abstractor", num_tokens=16, width=64, depth=1),
        lm=dict(vocab_size=2048, width=128, depth=4, heads=4, ffn_dim=384, max_seq_len=1024),
    ),
    "ablation-base": lambda: _mm1("ablation-base", LM_1B, vision=VIT_L14_336),
    "mm1-3b": lambda: _mm1("mm1-3b", LM_3B),
    "mm1-7b": lambda: _mm1("mm1-7b", LM_7B),
    "mm1-30b": lambda: _mm1("mm1-30b", LM_30B),
    "mm1-3b-moe": lambda: _mm1("mm1-3b-moe", LM_3B, moe=dict(num_experts=64, top_k=2, every=2)),
    # Experts slightly wider than the dense 7B FFN: the paper's ~47B total does not fit 11008-wide experts (~41B).
    "mm1-7b-moe": lambda: _mm1("mm1-7b-moe", LM_7B, moe=dict(num_experts=32, top_k=2, every=4, ffn_dim=12800)),
}
