"""Pretrained parts for MM1: public CLIP/SigLIP encoders and Llama-family LMs, loaded with numerical parity.

- `load_hf_lm(folder)`: HF Llama / SmolLM / Qwen2 / Mistral folder -> DecoderLM + tokenizer with MM1 tokens.
- `load_hf_vision(folder)`: HF CLIPVisionModel / CLIPModel / SigLIP folder -> VisionEncoder.
- `load_timm_clip_vision(path)`: timm or OpenCLIP CLIP ViT safetensors -> VisionEncoder (timm not needed).
- `build_mm1_from_parts(vision, lm, connector)`: one call to a full MM1Model (+ tokenizer).
- `llava_export.export_llava(model, folder, tokenizer)`: the other way, a whole MM1 model (MLP connector) as a
  transformers LlavaForConditionalGeneration folder (`mm1lab export llava`, docs/export.md).

mm1lab's own checkpoints: `MM1Model.save_pretrained` / `from_pretrained`, and `mm1lab.load_model` for runs.
Weight names are translated by the declared tables in `maps.py`; only safetensors are read (never pickle)
and no remote code is run.
"""

from mm1lab.pretrained.folder import build_mm1_from_parts, load_vision
from mm1lab.pretrained.lm import LoadedLM, load_hf_lm
from mm1lab.pretrained.vision import load_hf_vision, load_timm_clip_vision
from mm1lab.safetensors_io import CheckpointError

__all__ = [
    "CheckpointError", "LoadedLM", "build_mm1_from_parts", "load_hf_lm", "load_hf_vision", "load_timm_clip_vision",
    "load_vision",
]
