"""Whole MM1 models: build one from pretrained parts, and save / load mm1lab checkpoints as HF-style folders.

A saved folder holds config.json (`MM1Config.to_dict()` plus `"model_type": "mm1lab"`), model.safetensors
(mm1lab's own parameter names; a tied LM head is stored once, as the embeddings) and, when given, the
tokenizer files. Folders are written to a temporary sibling and renamed into place, so an interrupted save
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mm1lab.config import ConnectorConfig, MM1Config
from mm1lab.connectors import build_connector
from mm1lab.model import MM1Model
from mm1lab.pretrained.lm import load_hf_lm, load_tokenizer, read_hf_config
from mm1lab.pretrained.safetensors_io import (
    CheckpointError,
    SafetensorsReader,
    atomic_folder,
    cast_parameters,
    check_no_meta,
    no_init,
    save_state_dict,
)
from mm1lab.pretrained.vision import HF_VISION_TYPES, load_hf_vision, load_timm_clip_vision

MODEL_TYPE = "mm1lab"
TIED_HEAD = "lm.lm_head.weight"


def load_vision(path: str | Path, *, feature_layer: int = -1, dtype: torch.dtype | None = None, **timm_options):
    """An encoder from an HF CLIP/SigLIP folder (config.json with such a model_type) or timm/OpenCLIP weights
    (`timm_options`: heads=, act= for `load_timm_clip_vision`)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists() and \
            read_hf_config(path).get("model_type") in HF_VISION_TYPES:
        return load_hf_vision(path, feature_layer=feature_layer, dtype=dtype)
    return load_timm_clip_vision(path, feature_layer=feature_layer, dtype=dtype, **timm_options)


def build_mm1_from_parts(vision: str | Path, lm: str | Path, connector: ConnectorConfig | dict | None = None, *,
                         feature_layer: int = -1, max_images: int = 16, name: str = "mm1-from-parts",
                         dtype: torch.dtype | None = None, vision_options: dict | None = None):
    """One call to a full MM1Model: pretrained encoder + freshly initialised connector + pretrained LM.

    Args:
        vision: HF CLIP/SigLIP folder, or timm/OpenCLIP safetensors (file or folder).
        lm: HF Llama-family folder with tokenizer files; MM1's special tokens are added to the tokenizer.
        connector: ConnectorConfig or its fields as a dict (default: ConnectorConfig()).
        feature_layer: encoder block whose output feeds the connector (-1 last, -2 penultimate, ...).
        vision_options: for timm/OpenCLIP weights, `heads` / `act` (see `load_timm_clip_vision`).
    Returns:
        (model, tokenizer); model.cfg carries the tokenizer's image/pad/bos/eos ids.
    """
    connector = ConnectorConfig(**connector) if isinstance(connector, dict) else connector or ConnectorConfig()
    encoder = load_vision(vision, feature_layer=feature_layer, dtype=dtype, **(vision_options or {}))
    loaded = load_hf_lm(lm, dtype=dtype)
    cfg = MM1Config(vision=encoder.cfg, connector=connector, lm=loaded.cfg, max_images=max_images, name=name,
                    **loaded.token_ids)
    # The shell is built on the meta device (no memory, no init); its three parts are then replaced.
    with torch.device("meta"):
        model = MM1Model(cfg)
    model.vision, model.lm = encoder, loaded.lm
    model.connector = build_connector(connector, d_vision=cfg.vision.width, d_lm=cfg.lm.width,
                                      grid=cfg.vision.grid_size)
    cast_parameters(model.connector, dtype)
    check_no_meta(model, "build_mm1_from_parts")
    return model, loaded.tokenizer


def save_pretrained(model: MM1Model, folder: str | Path, *, tokenizer=None) -> Path:
    """Write `model` (and `tokenizer`, a transformers tokenizer) to an HF-style folder; returns the folder."""
    folder = Path(folder)
    state = model.state_dict()
    if model.cfg.lm.tie_embeddings:
        state.pop(TIED_HEAD)                           # the same tensor as lm.embed.weight
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **model.cfg.to_dict()}, indent=2))
        save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt", "model_type": MODEL_TYPE})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder


def read_config(folder: str | Path) -> MM1Config:
    """The MM1Config of a saved mm1lab folder (checks the model_type marker)."""
    folder = Path(folder)
    data = read_hf_config(folder)
    model_type = data.pop("model_type", None)
    if model_type != MODEL_TYPE:
        raise CheckpointError(f"{folder}: config.json has model_type={model_type!r}, not {MODEL_TYPE!r}; load "
                              "pretrained parts with load_hf_lm / load_hf_vision / build_mm1_from_parts instead")
    data.pop("transformers_version", None)
    return MM1Config.from_dict(data)


def from_pretrained(folder: str | Path, *, dtype: torch.dtype | None = None) -> MM1Model:
    """Load a folder written by `save_pretrained`; every parameter must be present with its saved shape."""
    folder = Path(folder)
    cfg = read_config(folder)
    with no_init():
        model = cast_parameters(MM1Model(cfg), dtype)
    reader = SafetensorsReader(folder)
    target = model.state_dict()
    expected = set(target) - ({TIED_HEAD} if cfg.lm.tie_embeddings else set())
    missing, unexpected = sorted(expected - set(reader.keys())), sorted(set(reader.keys()) - expected)
    mismatched = [f"{k}: saved {tuple(reader.get(k).shape)}, config gives {tuple(target[k].shape)}"
                  for k in sorted(expected & set(reader.keys())) if reader.get(k).shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{folder}: checkpoint does not match its config.json:\n  missing: {missing}\n"
                              f"  unexpected: {unexpected}\n  shape mismatches: {mismatched}")
    with torch.no_grad():
        for key in expected:
            target[key].copy_(reader.get(key))
    return model.eval()


def load_folder_tokenizer(folder: str | Path):
    """The tokenizer saved next to an mm1lab checkpoint (None when the folder has none)."""
    folder = Path(folder)
    has_files = any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return load_tokenizer(folder) if has_files else None
