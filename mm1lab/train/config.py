"""Training configs: one keyword-only dataclass per concern, stage presets, YAML with `--set a.b=c` overrides.

`TrainConfig.from_dict(d)` starts from the stage preset named by `d["stage"]` (see `STAGES`) and deep-merges `d`
over it, so a YAML file only states what differs from the stage. Everything is validated in `__post_init__`
with messages that name the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mm1lab import yamlio
from mm1lab.config import PARTS, ConfigError, MM1Config, build, plain
from mm1lab.lora import LoRAConfig

PRECISIONS = ("fp32", "bf16")
PARALLEL = ("auto", "none", "ddp", "fsdp")
SOURCES = ("shapeworld", "captions", "files", "synthetic")
# What each objective trains, by part; `freeze` and `optim.lr_scale` name these (see mm1lab.train.objectives).
OBJECTIVE_PARTS: dict[str, tuple[str, ...]] = {
    "vlm": PARTS,                          # MM1: encoder, connector, LM (text-only LM pre-training too)
    "clip": ("vision", "text", "head"),    # head: the two projections and the temperature (and SigLIP's bias)
    "aim": ("vision", "head"),             # head: the pixel-regression MLP
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _parts(value: dict[str, Any], name: str, default: Any, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """A per-part dict completed with `default` for missing parts; unknown parts are an error."""
    unknown = sorted(set(value) - set(parts))
    _check(not unknown, f"TrainConfig.{name}: unknown part(s) {unknown}; parts are {', '.join(parts)}")
    return {part: value.get(part, default) for part in parts}


def parse_model(objective: str, spec: str | dict[str, Any]) -> Any:
    """The model config of `objective` from a preset name or a config dict (MM1Config, CLIPConfig, AIMConfig)."""
    if objective == "vlm":
        return MM1Config.preset(spec) if isinstance(spec, str) else MM1Config.from_dict(spec)
    from mm1lab.stage0.presets import stage0_config

    return stage0_config(objective, spec)


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW + linear warmup + cosine decay. `lr=None` uses MM1's rule for the model's parameter count.
    `name: muon`: Muon on the hidden weight matrices of `muon_parts`, AdamW on the rest (mm1lab.train.muon)."""

    name: str = "adamw"                     # adamw (MM1's) | muon
    muon_parts: tuple[str, ...] = ("lm", "connector")
    muon_conv: bool = False                 # Muon also on the conv kernels of muon_parts (the C-Abstractor's)
    lr: float | None = None                 # peak LR; None: exp(-0.4214 ln N - 0.5535)
    weight_decay: float | None = None       # None: 0.1 x peak LR (MM1); decoupled (AdamW)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int | None = None         # None: min(2000, 5% of the steps) (MM1 warms up for 2000 steps)
    min_lr_ratio: float = 0.1               # cosine ends at 10% of peak (MM1)
    grad_clip: float | None = 1.0           # max global grad norm; None: no clipping
    lr_scale: dict[str, float] = field(default_factory=dict)   # per part, multiplies the peak LR

    def __post_init__(self) -> None:
        self.betas, self.muon_parts = tuple(self.betas), tuple(self.muon_parts)
        _check(self.name in ("adamw", "muon"), f"TrainConfig.optim.name must be 'adamw' or 'muon', got {self.name!r}")
        _check(self.lr is None or self.lr > 0, f"TrainConfig.optim.lr must be > 0 or null, got {self.lr}")
        _check(self.weight_decay is None or self.weight_decay >= 0,
               f"TrainConfig.optim.weight_decay must be >= 0 or null, got {self.weight_decay}")
        _check(0 <= self.min_lr_ratio <= 1,
               f"TrainConfig.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip is None or self.grad_clip > 0,
               f"TrainConfig.optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        _check(all(s >= 0 for s in self.lr_scale.values()), "TrainConfig.optim.lr_scale values must be >= 0")


@dataclass(kw_only=True)
class DataConfig:
    """Where batches come from: the ShapeWorld mixture (`mm1lab.data`), real corpora (`files`) or a synthetic stream
    (tests, benchmarks). How they are read: `shards`, `num_workers`, `shuffle_buffer`, `epochs` (mm1lab.train.data)."""

    source: str = "shapeworld"             # or "files": real corpora (`files`); "captions": caption shards (`paths`)
    # ShapeWorld stream weights; "medium:dense" takes a stream from another difficulty than `difficulty`.
    mixture: dict[str, float] = field(default_factory=lambda: {"caption": 0.45, "interleaved": 0.45, "text": 0.10})
    difficulty: str = "easy"
    paths: list[str] = field(default_factory=list)   # source "captions": tar shards, folders or globs
    # source "files": {mixture key: sources}; the key names the format after its last colon (caption: WebDataset
    # tars, interleaved: OBELICS JSONL, text: JSONL, sft: LLaVA), e.g. "dfn:caption". Sources: paths, folders, globs,
    # brace ranges, fsspec URLs, `pipe:` commands (mm1lab/data/sources.py).
    files: dict[str, list[str]] = field(default_factory=dict)
    seq_len: int = 256                      # tokens per row
    pack: bool = False                      # pack several samples per row
    # Pad every row to seq_len rather than to the batch's longest: one shape, so compiled code (compile: true, and
    # the FlexAttention kernel of packed rows on CUDA) is not compiled again for every new row width. GPU configs.
    pad_to_seq_len: bool = False
    num_workers: int = 0                    # DataLoader workers per rank (0: in the training process); resume is exact
    shards: int = 64                        # the data is read in this many shards (a multiple of micro x ranks x
                                            # workers); fixed for a run, so any split reads the same samples
    shuffle_buffer: int = 1000              # records per shard and file stream in the shuffle buffer (files only)
    epochs: int | None = None               # passes over finite files (None: endless, reshuffled every epoch)
    seed: int = 0
    high_res: bool = False                  # MM1 sub-images: a 2x-resolution render as overview + 2x2 crops
    multi_image_share: float = 0.1          # share of SFT conversations about two images
    # Question types asked in interleaved documents and conversations (None: the world's own mix); e.g. adds
    # "position", or "caption" / "describe" turns (SFT). Scenes and evaluation items do not change with it.
    question_mix: dict[str, float] | None = None
    compare_share: float = 0.0              # chance of a two-image comparison passage in an interleaved document
    qa_share: float = 0.45                  # share of an interleaved document's one-image passages that are QA

    def __post_init__(self) -> None:
        _check(self.source in SOURCES, f"TrainConfig.data.source must be one of {SOURCES}, got {self.source!r}")
        _check(bool(self.mixture) and all(w >= 0 for w in self.mixture.values()) and sum(self.mixture.values()) > 0,
               f"TrainConfig.data.mixture needs non-negative weights with a positive sum, got {self.mixture}")
        _check(self.seq_len > 0 and self.num_workers >= 0, "TrainConfig.data.seq_len must be > 0, num_workers >= 0")
        _check(0 <= self.multi_image_share <= 1,
               f"TrainConfig.data.multi_image_share must be in [0, 1], got {self.multi_image_share}")
        _check(0 <= self.qa_share <= 1, f"TrainConfig.data.qa_share must be in [0, 1], got {self.qa_share}")
        _check(self.shards > 0 and self.shuffle_buffer >= 0 and (self.epochs is None or self.epochs > 0),
               "TrainConfig.data.shards must be > 0, shuffle_buffer >= 0, epochs > 0 or null")
        if self.source == "files":
            from mm1lab.data.formats import READERS

            missing = sorted(k for k, w in self.mixture.items() if w > 0 and k not in self.files)
            _check(not missing, f"TrainConfig.data.files has no sources for mixture key(s) {missing}; give "
                                f"{{key: [paths or URLs]}} for every key of data.mixture with a positive weight")
            unknown = sorted(k for k in self.files if k.rpartition(":")[2] not in READERS)
            _check(not unknown, f"TrainConfig.data.files: key(s) {unknown} name no format; a key ends in one of "
                                f"{', '.join(READERS)} (e.g. 'caption' or 'dfn:caption')")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Checkpoint cadence and retention; `resume=True` continues from the newest checkpoint in the run dir."""

    every: int = 250                        # steps between checkpoints (a final one is always written)
    keep: int = 3                           # keep the last N
    resume: bool = True

    def __post_init__(self) -> None:
        _check(self.every > 0 and self.keep > 0, "TrainConfig.checkpoint.every and keep must be positive")


@dataclass(kw_only=True)
class TrackConfig:
    """metrics.jsonl is always written; TensorBoard, W&B and the tqdm bar are switches."""

    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "mm1lab"
    wandb_mode: str = "offline"             # offline needs no network; `wandb sync` uploads later
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.log_every > 0, f"TrainConfig.track.log_every must be positive, got {self.log_every}")
        _check(self.wandb_mode in ("offline", "online", "disabled"),
               f"TrainConfig.track.wandb_mode must be offline, online or disabled, got {self.wandb_mode!r}")


@dataclass(kw_only=True)
class TrainConfig:
    """One training run. `batch_size` is the global batch (sequences per optimizer step over all ranks);
    `micro_batch_size` is what one rank runs per forward, the rest is gradient accumulation."""

    stage: str = "pretrain"
    name: str = "run"
    objective: str = "vlm"                  # vlm (MM1, also text-only LM training) | clip | aim (stage 0)
    model: str | dict[str, Any] = "tiny"    # a preset name or a config dict; vlm ignores it with init_from
    # vlm: a run or checkpoint dir whose weights (and model config) start SFT. clip: a clip run or an exported
    # CLIP folder whose weights start continued pre-training of `model` (which must have its shapes)
    init_from: str | None = None
    # Stage-0 parts a vlm run starts from: {"vision": HF CLIP/SigLIP folder or timm weights, "lm": HF Llama-family
    # folder}; their architectures replace `model`'s, which still gives the connector and vision.feature_layer.
    pretrained: dict[str, str] = field(default_factory=dict)
    out_dir: str | None = None              # None: runs/<name>
    steps: int = 1000
    batch_size: int = 64
    micro_batch_size: int | None = None     # None: batch_size / world size (no accumulation)
    seed: int = 0
    precision: str = "fp32"                 # bf16: autocast (weights and optimizer stay fp32)
    compile: bool = False
    device: str = "auto"                    # auto: cuda if available
    parallel: str = "auto"                  # auto: fsdp on GPUs, ddp on CPU, none for one process
    freeze: dict[str, bool] = field(default_factory=dict)
    max_bad_steps: int = 5                  # stop after this many non-finite steps in a row
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)   # r > 0: only LoRA adapters train (mm1lab/lora.py)

    def __post_init__(self) -> None:
        for attr, cls in (("optim", OptimConfig), ("data", DataConfig), ("checkpoint", CheckpointConfig),
                          ("track", TrackConfig), ("lora", LoRAConfig)):
            if isinstance(getattr(self, attr), dict):
                setattr(self, attr, build(cls, getattr(self, attr), f"TrainConfig.{attr}"))
        _check(self.stage in STAGES, f"TrainConfig.stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        _check(self.objective in OBJECTIVE_PARTS,
               f"TrainConfig.objective must be one of {', '.join(OBJECTIVE_PARTS)}, got {self.objective!r}")
        parts = OBJECTIVE_PARTS[self.objective]
        self.freeze = _parts(self.freeze, "freeze", False, parts)
        self.optim.lr_scale = _parts(self.optim.lr_scale, "optim.lr_scale", 1.0, parts)
        unknown = sorted(set(self.pretrained) - {"vision", "lm"})
        _check(not unknown, f"TrainConfig.pretrained: unknown part(s) {unknown}; give vision and/or lm folders")
        _check(not self.pretrained or (self.objective == "vlm" and self.init_from is None),
               "TrainConfig.pretrained starts a vlm run from stage-0 parts; it cannot go with init_from or "
               f"objective {self.objective!r}")
        _check(self.objective in ("vlm", "clip") or self.init_from is None,
               f"TrainConfig.init_from continues an MM1 model or a CLIP; objective {self.objective!r} starts fresh")
        _check(self.steps > 0 and self.batch_size > 0, "TrainConfig.steps and batch_size must be positive")
        _check(self.micro_batch_size is None or self.micro_batch_size > 0,
               f"TrainConfig.micro_batch_size must be positive or null, got {self.micro_batch_size}")
        _check(self.precision in PRECISIONS,
               f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.parallel in PARALLEL, f"TrainConfig.parallel must be one of {PARALLEL}, got {self.parallel!r}")
        _check(not all(self.freeze.values()), "TrainConfig.freeze: every part is frozen, nothing would train")
        _check(self.max_bad_steps > 0, "TrainConfig.max_bad_steps must be positive")
        if self.lora.enabled:
            _check(self.objective == "vlm", f"TrainConfig.lora adapts an MM1 model; objective {self.objective!r} "
                                            "trains in full (set lora.r to 0)")
            frozen = sorted(p for p in (*self.lora.parts, *self.lora.full) if self.freeze[p])
            _check(not frozen, f"TrainConfig.freeze: {frozen} frozen, but lora.parts / lora.full train them; with "
                               "LoRA only those parts learn, so drop them from lora instead (or unfreeze them)")
        if self.init_from is None or self.objective != "vlm":
            self.model_config()   # fail now, not after the data is built

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or Path("runs") / self.name)

    def model_config(self) -> Any:
        """The model config this run trains (MM1Config for vlm, else the stage-0 config), from `model`."""
        return parse_model(self.objective, self.model)

    def accumulation(self, world: int) -> tuple[int, int]:
        """(micro batch per rank, accumulation steps) for `world` ranks; the global batch must split evenly."""
        micro = self.micro_batch_size or self.batch_size // world
        _check(micro > 0 and self.batch_size % (micro * world) == 0,
               f"TrainConfig.batch_size={self.batch_size} must be a multiple of micro_batch_size x world size "
               f"= {micro} x {world}; change batch_size or micro_batch_size")
        return micro, self.batch_size // (micro * world)

    # ---- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The stage preset of `data["stage"]` (default pretrain), with `data` deep-merged over it."""
        _check(isinstance(data, dict) or data is None,
               f"TrainConfig: a config is a mapping of fields, got {type(data).__name__}")
        data = dict(data or {})
        stage = data.get("stage", "pretrain")
        _check(isinstance(stage, str) and stage in STAGES,
               f"TrainConfig.stage must be one of {', '.join(STAGES)}, got {stage!r}")
        return build(cls, _merge(STAGES[stage], data), "TrainConfig")   # unknown fields and types checked there

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """Read YAML (or JSON) and apply `key.sub=value` overrides (values parsed as YAML: 3, 1e-3, true, [1,2])."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no training config at {path}; see configs/ for examples")
        data = yamlio.load_file(path) or {}
        _check(isinstance(data, dict), f"{path}: a training config is a mapping `field: value`, got "
                                       f"{type(data).__name__}")
        for item in overrides or []:
            apply_override(data, item)
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict in place."""
    key, sep, raw = item.partition("=")
    _check(bool(sep) and bool(key), f"--set {item!r}: expected key=value, e.g. optim.lr=1e-3")
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        _check(isinstance(node, dict), f"--set {item!r}: {part!r} is not a section")
    node[leaf] = yamlio.load(raw)


_REPLACED = ("mixture", "model")   # dicts that a config states whole (a mixture is not merged with the stage's)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _REPLACED
        out[k] = _merge(out[k], v) if nested else v
    return out


# ---- stage presets ---------------------------------------------------------------------------------------
# pretrain: MM1 trains everything on the 45/45/10 caption/interleaved/text mix.
# sft: conversations, loss on assistant tokens only (the collator masks the rest); encoder and LM stay unfrozen.
# align: the LLaVA-style first stage, only the connector learns (on captions), for comparison with MM1.
STAGES: dict[str, dict[str, Any]] = {
    "pretrain": dict(freeze=dict(vision=False, connector=False, lm=False),
                     data=dict(mixture=dict(caption=0.45, interleaved=0.45, text=0.10))),
    "sft": dict(freeze=dict(vision=False, connector=False, lm=False), data=dict(mixture=dict(sft=1.0))),
    "align": dict(freeze=dict(vision=True, connector=False, lm=True), data=dict(mixture=dict(caption=1.0))),
    # Stage 0 (see mm1lab/stage0): the encoder on image-text pairs or pixels, the LM on text alone.
    "clip": dict(objective="clip", model="clip-tiny", data=dict(mixture=dict(caption=0.5, dense=0.5))),
    "aim": dict(objective="aim", model="aim-tiny", data=dict(mixture=dict(caption=1.0))),
    "text": dict(freeze=dict(vision=True, connector=True, lm=False), data=dict(mixture=dict(text=1.0))),
}
