"""Named stage-0 models for the CPU: CLIP and AIM encoders at 64 and 128 px, in two sizes.

The encoders' ViTs match the `tiny` MM1 preset's (width 64, depth 4, patch 8 at 64 px), so a stage-0 encoder drops
into the tiny MM1 unchanged; `small` doubles the depth and widens to 96 (the "two encoder sizes" of MM1's
Table 1). At 128 px the patch stays 8 px: 4x the tokens, as MM1's 224 -> 336 px keeps patch 14.
"""

from __future__ import annotations

from typing import Any

from mm1lab.config import VIT_L14_336, ConfigError, VisionConfig, plain
from mm1lab.stage0.config import AIMConfig, CLIPConfig

VISION = {   # encoder size -> ViT shape (resolution added per preset)
    "tiny": dict(patch_size=8, width=64, depth=4, heads=4, act="gelu"),
    "small": dict(patch_size=8, width=96, depth=8, heads=4, act="gelu"),
}
RESOLUTIONS = (64, 128)


def _vision(size: str, resolution: int, **fields: Any) -> dict[str, Any]:
    return dict(VISION[size], image_size=resolution, **fields)


def _presets() -> dict[str, dict[str, Any]]:
    presets = {}
    for size in VISION:
        for res in RESOLUTIONS:
            suffix = f"{size}" if res == 64 else f"{size}-{res}"
            presets[f"clip-{suffix}"] = dict(objective="clip", name=f"clip-{suffix}", vision=_vision(size, res))
            # AIM's trunk has no CLS token and no pre-norm, and a biased patch embedding (as in the paper).
            presets[f"aim-{suffix}"] = dict(objective="aim", name=f"aim-{suffix}", vision=_vision(
                size, res, cls_token=False, pre_norm=False, patch_bias=True))
    # For GPUs: the ablation base's encoder (ViT-L/14 at 336 px, MM1 section 3) with CLIP ViT-L/14's text tower
    # (768 wide, 12 layers, 77 tokens) and joint embedding; `python -m mm1lab.stage0.throughput` measures it.
    presets["clip-l14-336"] = dict(objective="clip", name="clip-l14-336", vision=dict(VIT_L14_336, act="quick_gelu"),
                                   text=dict(width=768, depth=12, heads=12, max_len=77), embed_dim=768)
    return presets


STAGE0_PRESETS: dict[str, dict[str, Any]] = _presets()
CONFIGS = {"clip": CLIPConfig, "aim": AIMConfig}


def stage0_config(objective: str, spec: str | dict[str, Any]) -> CLIPConfig | AIMConfig:
    """The config of a stage-0 `objective` ("clip" or "aim") from a preset name or a config dict. A dict with a
    `preset` key changes that preset's fields, e.g. {preset: clip-tiny, hard_negatives: true}."""
    if objective not in CONFIGS:
        raise ConfigError(f"no stage-0 objective {objective!r}; choose one of {', '.join(CONFIGS)}")
    if isinstance(spec, dict) and "preset" in spec:
        spec = {**_preset(objective, spec["preset"]), **{k: v for k, v in spec.items() if k != "preset"}}
    elif isinstance(spec, str):
        spec = _preset(objective, spec)
    return CONFIGS[objective].from_dict(spec)


def _preset(objective: str, name: str) -> dict[str, Any]:
    if name not in STAGE0_PRESETS or STAGE0_PRESETS[name]["objective"] != objective:
        names = [n for n, p in STAGE0_PRESETS.items() if p["objective"] == objective]
        raise ConfigError(f"unknown {objective} preset {name!r}; choose one of {', '.join(names)}")
    return {k: v for k, v in plain(STAGE0_PRESETS[name]).items() if k != "objective"}


def vision_of(preset: str) -> VisionConfig:
    """The encoder config of a stage-0 preset."""
    return stage0_config(STAGE0_PRESETS[preset]["objective"], preset).vision
