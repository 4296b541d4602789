"""Load pretrained CLIP-style image encoders into mm1lab's VisionEncoder.

Two routes:
- `load_hf_vision(folder)`: a Hugging Face CLIPVisionModel / CLIPModel / SiglipVisionModel / SiglipModel folder.
- `load_timm_clip_vision(path)`: a timm CLIP ViT (e.g. `vit_huge_patch14_clip_378.dfn5b`, MM1's encoder
  family) or an OpenCLIP state dict, read through a declared table; timm itself is never imported. The
  architecture is read off the tensor shapes; only the head count is not in them (see `heads`).

Features at `layer=-k` equal the source's hidden state after block `depth - k + 1`. At the last layer mm1lab
applies the final LayerNorm to every token: SigLIP's and timm's `forward_features` do the same; HF CLIP
applies `post_layernorm` to the pooled CLS only (so compare with `post_layernorm(last_hidden_state)`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from mm1lab.config import ACTIVATIONS, VisionConfig
from mm1lab.pretrained.convert import load_mapped
from mm1lab.pretrained.lm import read_hf_config
from mm1lab.pretrained.maps import HF_CLIP_VISION, HF_SIGLIP_VISION, OPEN_CLIP_VIT, TIMM_CLIP_VIT, KeyMap
from mm1lab.safetensors_io import CheckpointError, SafetensorsReader, cast_parameters, no_init, read_json
from mm1lab.vision import VisionEncoder

# model_type -> (transformers config class, weight table, has CLS + ln_pre, default pixel mean/std)
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HF_VISION_TYPES = {
    "clip": ("CLIPVisionConfig", HF_CLIP_VISION, True, CLIP_MEAN_STD),
    "clip_vision_model": ("CLIPVisionConfig", HF_CLIP_VISION, True, CLIP_MEAN_STD),
    "siglip": ("SiglipVisionConfig", HF_SIGLIP_VISION, False, HALF_MEAN_STD),
    "siglip_vision_model": ("SiglipVisionConfig", HF_SIGLIP_VISION, False, HALF_MEAN_STD),
}
# transformers' activation names -> mm1lab's (gelu_new is the tanh approximation written out by hand).
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh"}
# Head count by width for the CLIP towers that exist (B, L, SO400M, H, g, bigG); shapes cannot tell it.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1664: 16}


def _activation(name: str, where: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"{where}: hidden_act={name!r} is not supported; supported: "
                              f"{', '.join(HF_ACTIVATIONS)} (mm1lab's {', '.join(ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def _mean_std(folder: Path, default: tuple) -> tuple:
    """Pixel normalisation from preprocessor_config.json when the folder has one."""
    path = folder / "preprocessor_config.json"
    if path.exists():
        pre = read_json(path)
        if "image_mean" in pre and "image_std" in pre:
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return default


def hf_vision_config(folder: str | Path, *, feature_layer: int = -1) -> tuple[VisionConfig, KeyMap]:
    """Map an HF CLIP/SigLIP config.json (vision-only or full contrastive model) onto VisionConfig."""
    folder = Path(folder)
    model_type = read_hf_config(folder).get("model_type")
    if model_type not in HF_VISION_TYPES:
        raise CheckpointError(f"{folder}: unsupported vision architecture model_type={model_type!r}; mm1lab loads "
                              f"{', '.join(HF_VISION_TYPES)} here and timm/OpenCLIP CLIP ViTs with "
                              "load_timm_clip_vision. Remote code is never run.")
    config_class, keymap, clip_like, mean_std = HF_VISION_TYPES[model_type]
    # from_pretrained picks `vision_config` out of a full CLIPModel/SiglipModel config.
    hf = getattr(transformers, config_class).from_pretrained(folder, local_files_only=True)
    mean, std = _mean_std(folder, mean_std)
    cfg = VisionConfig(
        image_size=hf.image_size, patch_size=hf.patch_size, channels=hf.num_channels, width=hf.hidden_size,
        depth=hf.num_hidden_layers, heads=hf.num_attention_heads, mlp_ratio=hf.intermediate_size / hf.hidden_size,
        act=_activation(hf.hidden_act, f"{folder}/config.json"), cls_token=clip_like, patch_bias=not clip_like,
        pre_norm=clip_like, post_norm=True, feature_layer=feature_layer, norm_eps=hf.layer_norm_eps,
        image_mean=mean, image_std=std)
    if cfg.ffn_dim != hf.intermediate_size:
        raise CheckpointError(f"{folder}: intermediate_size={hf.intermediate_size} is not representable as "
                              f"mlp_ratio * hidden_size ({cfg.ffn_dim})")
    return cfg, keymap


def load_hf_vision(folder: str | Path, *, feature_layer: int = -1, dtype: torch.dtype | None = None) -> VisionEncoder:
    """Load an HF CLIP or SigLIP vision tower (vision-only or full model folder) as a VisionEncoder.

    feature_layer: which block's output `forward` returns by default (-1 last, -2 penultimate, ...).
    """
    cfg, keymap = hf_vision_config(folder, feature_layer=feature_layer)
    return _load(cfg, SafetensorsReader(folder), keymap, source=str(folder), dtype=dtype)


def _load(cfg: VisionConfig, reader, keymap: KeyMap, *, source: str, dtype) -> VisionEncoder:
    with no_init():
        encoder = cast_parameters(VisionEncoder(cfg), dtype)
    load_mapped(encoder, reader, keymap, depth=cfg.depth, source=source)
    return encoder.eval()


def _timm_settings(path: Path) -> dict:
    """What a timm (config.json) or OpenCLIP (open_clip_config.json) hub folder says beyond the weights."""
    folder = path if path.is_dir() else path.parent
    out: dict = {}
    if (folder / "config.json").exists():
        timm_cfg = read_json(folder / "config.json")
        arch = timm_cfg.get("architecture", "")
        out["act"] = "quick_gelu" if "quickgelu" in arch else "gelu"    # timm's naming of its CLIP towers
        pre = timm_cfg.get("pretrained_cfg", {})
        if "mean" in pre and "std" in pre:
            out["image_mean"], out["image_std"] = tuple(pre["mean"]), tuple(pre["std"])
    if (folder / "open_clip_config.json").exists():
        oc = read_json(folder / "open_clip_config.json")
        model_cfg, vision_cfg = oc.get("model_cfg", {}), oc.get("model_cfg", {}).get("vision_cfg", {})
        out["act"] = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
        if "width" in vision_cfg:
            out["heads"] = vision_cfg["width"] // vision_cfg.get("head_width", 64)
        pre = oc.get("preprocess_cfg", {})
        if "mean" in pre and "std" in pre:
            out["image_mean"], out["image_std"] = tuple(pre["mean"]), tuple(pre["std"])
    return out


def timm_vision_config(reader, keymap: KeyMap, *, heads: int | None = None, act: str | None = None,
                       feature_layer: int = -1, settings: dict | None = None) -> VisionConfig:
    """Read a CLIP ViT's architecture off its tensor shapes, naming tensors through the format's table."""
    keys, settings = keymap.keys, settings or {}
    o, c, p, _ = reader.get(keys["patch_embed.weight"]).shape
    has_cls = keys["cls_token"] in reader
    n_pos = reader.get(keys["pos_embed"]).shape[-2] - int(has_cls)
    grid = round(n_pos ** 0.5)
    depth = 0
    while keys["blocks.{i}.norm1.weight"].format(i=depth) in reader:
        depth += 1
    hidden = reader.get(keys["blocks.{i}.mlp.fc1.weight"].format(i=0)).shape[0]
    heads = heads or settings.get("heads") or HEADS_BY_WIDTH.get(o)
    if heads is None:
        raise CheckpointError(f"width {o}: the number of attention heads is not stored in the weights and this "
                              f"width is not a known CLIP tower ({sorted(HEADS_BY_WIDTH)}); pass heads=...")
    mean, std = settings.get("image_mean", CLIP_MEAN_STD[0]), settings.get("image_std", CLIP_MEAN_STD[1])
    return VisionConfig(
        image_size=grid * p, patch_size=p, channels=c, width=o, depth=depth, heads=heads, mlp_ratio=hidden / o,
        act=act or settings.get("act", "gelu"), cls_token=has_cls,
        patch_bias=keys.get("patch_embed.bias") in reader, pre_norm=keys["norm_pre.weight"] in reader,
        post_norm=keys["norm_post.weight"] in reader, feature_layer=feature_layer, norm_eps=1e-5,
        image_mean=mean, image_std=std)


def detect_clip_format(reader) -> KeyMap:
    """timm or OpenCLIP, told apart by the patch-embedding key each uses."""
    for keymap in (TIMM_CLIP_VIT, OPEN_CLIP_VIT):
        if keymap.keys["patch_embed.weight"] in reader:
            return keymap
    raise CheckpointError(f"{getattr(reader, 'path', 'state dict')}: not a timm or OpenCLIP CLIP ViT (no "
                          f"'{TIMM_CLIP_VIT.keys['patch_embed.weight']}' or "
                          f"'{OPEN_CLIP_VIT.keys['patch_embed.weight']}' tensor); supported formats: timm_clip_vit, "
                          f"open_clip_vit, and HF folders via load_hf_vision")


def load_timm_clip_vision(path: str | Path | dict[str, torch.Tensor], *, heads: int | None = None,
                          act: str | None = None, feature_layer: int = -1,
                          dtype: torch.dtype | None = None) -> VisionEncoder:
    """Load a timm or OpenCLIP CLIP ViT (safetensors file or hub folder) without importing timm.

    Args:
        path: a .safetensors file, or a folder with model.safetensors / open_clip_model.safetensors
            (+ timm's config.json or open_clip_config.json, read for activation, heads and pixel stats),
            or an in-memory state dict with timm's or OpenCLIP's names.
        heads: attention heads; default from open_clip_config.json or the width (known CLIP towers).
        act: 'gelu' / 'quick_gelu'; default from the timm architecture name ('quickgelu' variants) or
            open_clip_config.json. Note: timm's `vit_huge_patch14_clip_378` runs the DFN5B weights with exact
            GELU although they were trained with QuickGELU; pass act='quick_gelu' for the original model.
        feature_layer: which block's output `forward` returns by default.
    """
    in_memory = isinstance(path, dict)
    reader = path if in_memory else SafetensorsReader(path)
    keymap = detect_clip_format(reader)
    cfg = timm_vision_config(reader, keymap, heads=heads, act=act, feature_layer=feature_layer,
                             settings={} if in_memory else _timm_settings(Path(path)))
    return _load(cfg, reader, keymap, source="state dict" if in_memory else str(path), dtype=dtype)
