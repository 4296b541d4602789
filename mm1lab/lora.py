"""LoRA for MM1 through peft: low-rank adapters on chosen layers train while the base weights stay frozen.

    lora: {r: 8, alpha: 16, parts: [lm, connector]}      # a TrainConfig section (configs/sft-tiny-lora.yaml)

A LoRA layer computes W x + (alpha / r) B A x, with A (r x in) and B (out x r) the only trained weights; B starts at
zero, so training starts from the base model exactly (Hu et al. 2021, https://arxiv.org/abs/2106.09685).
`apply_lora` injects peft's LoRA layers into an MM1Model in place (`peft.inject_adapter_in_model`): the model keeps
its class, forward and probes, and parameter names gain `.base_layer.` (the frozen layer) and `.lora_A.default.`.

On disk a LoRA checkpoint keeps the two apart: model.safetensors holds the base weights under the plain MM1 names,
adapter_model.safetensors and adapter_config.json hold the adapters in peft's own format (so
`PeftModel.from_pretrained(MM1Model(cfg), checkpoint)` reads them too). `mm1lab.load_model` merges them into a plain
MM1Model for eval and the notebooks; `merge_lora` does the same in memory.

`quantize: nf4` is QLoRA (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314): the adapted linear layers keep
their base weights in 4-bit NormalFloat through bitsandbytes (an optional install, CPU included). A checkpoint
stores those weights dequantized, which quantize back to the same bits, so resume is exact; merging adds the
adapters to the dequantized weights, so the merged fp32 model computes what the 4-bit one did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mm1lab.config import PARTS, ConfigError
from mm1lab.folders import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from mm1lab.safetensors_io import CheckpointError, load_state_dict

# The kinds of layer `layers` may name. Grouped (depthwise) convs are left out: peft cannot merge LoRA into them.
LAYER_KINDS: dict[str, Callable[[nn.Module], bool]] = {
    "linear": lambda m: isinstance(m, nn.Linear),
    "conv": lambda m: isinstance(m, nn.Conv2d) and m.groups == 1,
}
QUANTIZE = ("nf4",)                  # QLoRA's 4-bit NormalFloat
ADAPTER_MARK = ".lora_"              # peft names adapter weights `<layer>.lora_A.<adapter>.weight`
PEFT_PREFIX = "base_model.model."    # what PeftModel puts before the wrapped model's names in adapter files


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(kw_only=True)
class LoRAConfig:
    """Which layers get adapters, their rank and scale, and what else trains; `r: 0` is off (full fine-tuning)."""

    r: int = 0                          # adapter rank; 0: no LoRA
    alpha: float = 16.0                 # the update is scaled by alpha / r
    dropout: float = 0.0                # dropout on the adapters' input
    parts: list[str] = field(default_factory=lambda: ["lm", "connector"])   # parts whose layers get adapters
    layers: list[str] = field(default_factory=lambda: ["linear"])           # kinds of layer adapted (LAYER_KINDS)
    targets: list[str] | None = None    # module-name suffixes, e.g. [q_proj, v_proj]; None: every layer of `layers`
    exclude: list[str] = field(default_factory=lambda: ["lm_head"])         # suffixes never adapted
    full: list[str] = field(default_factory=list)   # parts trained in full beside the adapters (LLaVA-1.5: connector)
    quantize: str | None = None         # "nf4": the adapted linear layers' base weights in 4 bits (QLoRA)

    def __post_init__(self) -> None:
        _check(isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 0,
               f"TrainConfig.lora.r must be an integer >= 0 (0: LoRA off), got {self.r!r}")
        _check(self.alpha > 0, f"TrainConfig.lora.alpha must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, f"TrainConfig.lora.dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("parts", PARTS), ("full", PARTS), ("layers", tuple(LAYER_KINDS))):
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            _check(not unknown, f"TrainConfig.lora.{name}: unknown {unknown}; choose from {', '.join(allowed)}")
        _check(bool(self.parts) and bool(self.layers), "TrainConfig.lora.parts and lora.layers must not be empty")
        both = sorted(set(self.parts) & set(self.full))
        _check(not both, f"TrainConfig.lora: {both} in both parts (adapters) and full (trained whole); pick one")
        _check(self.targets is None or bool(self.targets),
               "TrainConfig.lora.targets: give module-name suffixes such as [q_proj, v_proj], or null for all")
        _check(self.quantize in (None, *QUANTIZE),
               f"TrainConfig.lora.quantize must be null or one of {QUANTIZE}, got {self.quantize!r}")
        _check(self.quantize is None or self.layers == ["linear"],
               "TrainConfig.lora.quantize stores linear layers in 4 bits (bitsandbytes has no 4-bit conv); "
               "set lora.layers to [linear]")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def trains(self, name: str) -> bool:
        """Whether parameter `name` (of a model with adapters) trains: an adapter, or a part in `full`."""
        return is_adapter(name) or name.split(".", 1)[0] in self.full


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict key is a LoRA adapter weight."""
    return ADAPTER_MARK in name


def base_param_count(model: nn.Module) -> int:
    """The parameters of the model without its adapters; a 4-bit weight counts at its original shape."""
    return sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
               for name, p in model.named_parameters() if not is_adapter(name))


def _matches(name: str, suffixes: list[str]) -> bool:
    # peft's rule for a list of target names: the whole name, or its tail after a dot
    return any(name == s or name.endswith("." + s) for s in suffixes)


def lora_targets(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """The full names of the layers `cfg` adapts in `model`; a ConfigError when there are none."""
    kinds = [LAYER_KINDS[k] for k in cfg.layers]
    found = [name for name, m in model.named_modules()
             if name.split(".", 1)[0] in cfg.parts and any(kind(m) for kind in kinds)]
    chosen = [n for n in found if (cfg.targets is None or _matches(n, cfg.targets)) and not _matches(n, cfg.exclude)]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in found})
    _check(bool(chosen), f"TrainConfig.lora: no {'/'.join(cfg.layers)} layer of {cfg.parts} matches targets "
                         f"{cfg.targets} (exclude {cfg.exclude}); their layers end in {suffixes}")
    tied = getattr(getattr(getattr(model, "cfg", None), "lm", None), "tie_embeddings", False)
    _check(not (tied and "lm.lm_head" in chosen),
           "TrainConfig.lora: lm.lm_head shares its weight with the embeddings (lm.tie_embeddings), so merging an "
           "adapter into it would change the embeddings too; keep lm_head in lora.exclude")
    return chosen


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Inject LoRA layers into `model` in place (peft) on `lora_targets`; with `quantize`, quantize their base
    weights first. Returns `model`. Only the adapters require grad afterwards (peft's rule)."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_targets(model, cfg)
    if cfg.quantize:
        quantize_layers(model, names)
    inject_adapter_in_model(LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                       target_modules=names), model)
    return model


# ---- adapters on disk ----------------------------------------------------------------------------------
def split_state(model: nn.Module, weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], str]:
    """A LoRA model's full state dict `weights` as (base weights under the plain MM1 names, adapters in peft's
    file format, peft's adapter_config.json text): what a checkpoint writes. 4-bit layers come out dequantized."""
    from peft import get_peft_model_state_dict

    adapters = {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(model, state_dict=weights).items()}
    base = {k.replace(".base_layer.", "."): v for k, v in weights.items() if not is_adapter(k)}
    for name, layer in quantized_layers(model):
        plain = name.replace(".base_layer", "")
        base = {k: v for k, v in base.items() if not k.startswith(f"{plain}.weight.")}   # bitsandbytes' stats
        base[f"{plain}.weight"] = dequantize(layer)
    config = model.peft_config["default"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}   # as peft's save_pretrained
    return base, adapters, json.dumps(config, indent=2, sort_keys=True)


def set_adapters(model: nn.Module, adapters: dict[str, Tensor], where: str | Path) -> nn.Module:
    """Load adapter weights in peft's file format into a model with adapters; every adapter must be given."""
    from peft import set_peft_model_state_dict

    state = {k.removeprefix(PEFT_PREFIX): v for k, v in adapters.items()}
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:   # shape mismatches
        raise CheckpointError(f"{where}: the adapters do not fit this model ({exc}); was it written with "
                              "another lora.r or lora.targets?") from None
    missing = [k for k in result.missing_keys if is_adapter(k)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{where}: adapters do not match the LoRA layers: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}; was it written with another lora.targets?")
    return model


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Inject and load the adapters saved in `folder` (adapter_config.json, adapter_model.safetensors) into
    `model`, which holds the base weights already. Returns `model`."""
    from peft import LoraConfig, inject_adapter_in_model

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).exists():
        raise CheckpointError(f"{folder} has {ADAPTER_WEIGHTS} but no {ADAPTER_CONFIG}, which says where the "
                              "adapters go; the checkpoint is incomplete")
    inject_adapter_in_model(LoraConfig.from_pretrained(str(folder)), model)
    return set_adapters(model, load_state_dict(folder / ADAPTER_WEIGHTS), folder / ADAPTER_WEIGHTS)


def restore_lora(model: nn.Module, cfg: LoRAConfig, base: dict[str, Tensor],
                 adapters: dict[str, Tensor] | None, where: str | Path) -> nn.Module:
    """A LoRA run's model from a checkpoint: `base` into the plain model, then `apply_lora`, then `adapters`."""
    if adapters is None:
        raise CheckpointError(f"{where} holds no adapters ({ADAPTER_WEIGHTS}): it was written by a full "
                              "fine-tuning run; resume it without lora, or start this LoRA run in a new out_dir")
    model.load_state_dict(base)
    return set_adapters(apply_lora(model, cfg), adapters, Path(where) / ADAPTER_WEIGHTS)


# ---- merging -------------------------------------------------------------------------------------------
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W + alpha/r B A, in the base weight's dtype) and put the plain layer back,
    so `model` is an MM1Model as built, every parameter trainable again; 4-bit layers become fp32 linear layers.
    Returns `model`."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        if _is_4bit(module.get_base_layer()):
            plain = _dequantized_linear(module)
        else:
            module.merge(safe_merge=True)   # safe: refuses non-finite merged weights
            plain = module.get_base_layer()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain)
    if hasattr(model, "peft_config"):
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _dequantized_linear(module: Any) -> nn.Linear:
    """An nn.Linear holding a 4-bit layer's dequantized weight plus its adapters' update."""
    base = module.get_base_layer()
    with torch.no_grad():
        weight = dequantize(base)
        for adapter in module.active_adapters:
            weight += module.get_delta_weight(adapter).to(weight.dtype)
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=weight.device,
                           dtype=weight.dtype)
        linear.weight.copy_(weight)
        if base.bias is not None:
            linear.bias.copy_(base.bias)
    return linear


# ---- 4-bit base weights (QLoRA) ------------------------------------------------------------------------
def quantize_layers(model: nn.Module, names: list[str]) -> None:
    """Replace the nn.Linear layers `names` by bitsandbytes' 4-bit NF4 layers (frozen, fp32 compute). Absmax
    statistics stay fp32 (no double quantization), so dequantized weights quantize back to the same bits."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("TrainConfig.lora.quantize needs bitsandbytes (pip install 'bitsandbytes>=0.50'; it runs "
                          "on CPU too); or set lora.quantize to null") from None
    for name in names:
        linear = model.get_submodule(name)
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=linear.weight.dtype, compress_statistics=False, quant_type="nf4",
                              device="meta")
        q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, compress_statistics=False,
                                     quant_type="nf4")
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        # On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks the 4-bit weight in place at the first eval-mode
        # forward. The repacking needs in_features to be a multiple of the 64-value block, which the tiny presets'
        # layers are not (it raises), and it changes `weight.data`, which `dequantize` and the checkpoint read. One
        # layout on every CPU instead.
        q.support_avx512bf16_for_cpu = False
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q.to(linear.weight.device))   # .to() quantizes


def _is_4bit(module: nn.Module) -> bool:
    # the layer's own parameter: peft's LoRA wrapper forwards `.weight` to the layer it wraps
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return getattr(weight, "quant_state", None) is not None


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every 4-bit layer in `model`."""
    return [(name, m) for name, m in model.named_modules() if _is_4bit(m)]


def dequantize(layer: nn.Module) -> Tensor:
    """The weight a 4-bit layer computes with, in its original dtype."""
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
