"""Pretrained parts for MM1: public CLIP/SigLIP encoders and Llama-family LMs, loaded with numerical parity.

- `load_hf_lm(folder)`: HF Llama / SmolLM / Qwen2 / Mistral folder -> DecoderLM + tokenizer with MM1 tokens.
- `load_hf_vision(folder)`: HF CLIPVisionModel / CLIPModel / SigLIP folder -> VisionEncoder.
- `load_timm_clip_vision(path)`: timm or OpenCLIP CLIP ViT safetensors -> VisionEncoder (timm not needed).
- `build_mm1_from_parts(vision, lm, connector)`: one call to a full MM1Model (+ tokenizer).
- `save_pretrained(model, folder)` / `from_pretrained(folder)`: mm1lab checkpoints as HF-style folders.

Weight names are translated by the declared tables in `maps.py`; only safetensors are read (never pickle)
and no remote code is run.
"""

from mm1lab.pretrained.folder import (
    build_mm1_from_parts,
    from_pretrained,
    load_folder_tokenizer,
    load_vision,
    read_config,
    save_pretrained,
)
from mm1lab.pretrained.lm import LoadedLM, load_hf_lm
from mm1lab.pretrained.safetensors_io import CheckpointError, SafetensorsReader, read_state_dict
from mm1lab.pretrained.vision import load_hf_vision, load_timm_clip_vision

__all__ = [
    "CheckpointError", "LoadedLM", "SafetensorsReader", "build_mm1_from_parts", "from_pretrained",
    "load_folder_tokenizer", "load_hf_lm", "load_hf_vision", "load_timm_clip_vision", "load_vision",
    "read_config", "read_state_dict", "save_pretrained",
]
