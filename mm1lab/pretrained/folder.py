"""Whole MM1 models built from pretrained parts: a public (or stage-0) encoder and LM plus a fresh connector.

mm1lab's own checkpoints are written and read by `MM1Model.save_pretrained` / `MM1Model.from_pretrained`, and
found in run folders by `mm1lab.load_model`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mm1lab.config import ConnectorConfig, MM1Config
from mm1lab.connectors import build_connector
from mm1lab.model import MM1Model
from mm1lab.pretrained.lm import load_hf_lm, read_hf_config
from mm1lab.pretrained.vision import HF_VISION_TYPES, load_hf_vision, load_timm_clip_vision
from mm1lab.safetensors_io import cast_parameters, check_no_meta


def load_vision(path: str | Path, *, feature_layer: int = -1, dtype: torch.dtype | None = None, **timm_options):
    """An encoder from an HF CLIP/SigLIP folder (config.json with such a model_type) or timm/OpenCLIP weights
    (`timm_options`: heads=, act= for `load_timm_clip_vision`)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists() and \
            read_hf_config(path).get("model_type") in HF_VISION_TYPES:
        return load_hf_vision(path, feature_layer=feature_layer, dtype=dtype)
    return load_timm_clip_vision(path, feature_layer=feature_layer, dtype=dtype, **timm_options)


def build_mm1_from_parts(vision: str | Path | None, lm: str | Path | None,
                         connector: ConnectorConfig | dict | None = None, *, base: MM1Config | None = None,
                         feature_layer: int = -1, max_images: int = 16, name: str = "mm1-from-parts",
                         dtype: torch.dtype | None = None, vision_options: dict | None = None):
    """One call to a full MM1Model: pretrained encoder + freshly initialised connector + pretrained LM.

    Args:
        vision: HF CLIP/SigLIP folder, or timm/OpenCLIP safetensors (file or folder).
        lm: HF Llama-family folder with tokenizer files; MM1's special tokens are added to the tokenizer.
        connector: ConnectorConfig or its fields as a dict (default: ConnectorConfig()).
        base: an MM1Config whose encoder or LM is built fresh where `vision` or `lm` is None (an ablation that
            pre-trains only one part); its token ids are kept when no LM is loaded.
        feature_layer: encoder block whose output feeds the connector (-1 last, -2 penultimate, ...).
        vision_options: for timm/OpenCLIP weights, `heads` / `act` (see `load_timm_clip_vision`).
    Returns:
        (model, tokenizer); model.cfg carries the tokenizer's image/pad/bos/eos ids (tokenizer None without `lm`).
    """
    if (vision is None or lm is None) and base is None:
        raise ValueError("build_mm1_from_parts: pass both a vision and an lm folder, or `base` (an MM1Config) for "
                         "the part that starts fresh")
    connector = ConnectorConfig(**connector) if isinstance(connector, dict) else connector or ConnectorConfig()
    encoder = load_vision(vision, feature_layer=feature_layer, dtype=dtype, **(vision_options or {})) \
        if vision is not None else None
    loaded = load_hf_lm(lm, dtype=dtype) if lm is not None else None
    ids = loaded.token_ids if loaded is not None else {k: getattr(base, k) for k in
                                                        ("image_token_id", "pad_token_id", "bos_token_id",
                                                         "eos_token_id")}
    cfg = MM1Config(vision=encoder.cfg if encoder is not None else base.vision, connector=connector,
                    lm=loaded.cfg if loaded is not None else base.lm, max_images=max_images, name=name, **ids)
    # With both parts loaded the shell is built on the meta device (no memory, no init) and filled; otherwise the
    # missing part is initialised as in a fresh model.
    whole = encoder is not None and loaded is not None
    with torch.device("meta") if whole else contextlib.nullcontext():
        model = MM1Model(cfg)
    if encoder is not None:
        model.vision = encoder
    if loaded is not None:
        model.lm = loaded.lm
    if whole:
        model.connector = build_connector(connector, d_vision=cfg.vision.width, d_lm=cfg.lm.width,
                                          grid=cfg.vision.grid_size)
    cast_parameters(model, dtype)
    check_no_meta(model, "build_mm1_from_parts")
    return model, loaded.tokenizer if loaded is not None else None

