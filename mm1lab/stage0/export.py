"""Stage-0 models as the public formats MM1 starts from, so they load the way a downloaded checkpoint does.

- CLIP (or SigLIP-loss) -> transformers' `CLIPModel` folder: `load_hf_vision` (and `build_mm1_from_parts`) read its
  vision tower, and transformers loads the whole model without remote code.
- A CLIP's vision tower alone -> a `CLIPVisionModel` folder (`export_clip_vision`), where the text tower is not
  needed and would not fit the shipped folder's size budget.
- AIM's trunk -> a `SiglipVisionModel` folder (no head). The trunk has SigLIP's vision layout: no CLS token, no
  pre-norm, a biased patch embedding, a final LayerNorm. `config.json` records `"mm1lab_objective": "aim"`.
- The LM -> a `LlamaForCausalLM` folder with mm1lab's tokenizer (`PreTrainedTokenizerFast` files).

Each folder also gets preprocessor_config.json with the pixel normalisation the encoder was trained with, and
`mm1lab_stage0.json` with the training run and the scores recorded for it. Folders are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mm1lab.pretrained.convert import export_mapped
from mm1lab.pretrained.maps import HF_CLIP_TEXT, HF_CLIP_VISION, HF_LLAMA, HF_SIGLIP_VISION
from mm1lab.safetensors_io import atomic_folder, save_state_dict

# mm1lab's activation names -> transformers'.
HF_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}
INFO = "mm1lab_stage0.json"


def _vision_config(v) -> dict[str, Any]:
    return dict(hidden_size=v.width, intermediate_size=v.ffn_dim, num_hidden_layers=v.depth,
                num_attention_heads=v.heads, num_channels=v.channels, image_size=v.image_size,
                patch_size=v.patch_size, hidden_act=HF_ACT[v.act], layer_norm_eps=v.norm_eps)


def _preprocessor(v) -> dict[str, Any]:
    return dict(image_mean=list(v.image_mean), image_std=list(v.image_std), size=v.image_size,
                crop_size=v.image_size, do_normalize=True)


def _write(folder: Path, config: dict, state: dict, preprocessor: dict | None, info: dict | None,
           tokenizer=None) -> Path:
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_state_dict(state, tmp / "model.safetensors")
        if preprocessor is not None:
            (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        if info is not None:
            (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp)
    return Path(folder)


def export_clip(model, folder: str | Path, *, info: dict | None = None) -> Path:
    """Write a `CLIP` (mm1lab.stage0.clip) as a transformers CLIPModel folder."""
    cfg, v, t = model.cfg, model.cfg.vision, model.cfg.text
    state = export_mapped(model.vision, HF_CLIP_VISION, depth=v.depth, patch_size=v.patch_size)
    state.update(export_mapped(model.text, HF_CLIP_TEXT, depth=t.depth))
    state["visual_projection.weight"] = model.visual_projection.weight.detach()
    state["text_projection.weight"] = model.text_projection.weight.detach()
    state["logit_scale"] = model.logit_scale.detach()
    text = dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.ffn_dim, num_hidden_layers=t.depth,
                num_attention_heads=t.heads, max_position_embeddings=t.max_len, hidden_act=HF_ACT[t.act],
                layer_norm_eps=t.norm_eps, eos_token_id=t.eot_token_id, pad_token_id=t.pad_token_id, bos_token_id=1)
    config = dict(model_type="clip", architectures=["CLIPModel"], projection_dim=cfg.embed_dim,
                  logit_scale_init_value=float(model.logit_scale.detach()), text_config=text,
                  vision_config=_vision_config(v), mm1lab_objective="clip", mm1lab_loss=cfg.loss)
    return _write(Path(folder), config, state, _preprocessor(v), info)


def export_clip_vision(model, folder: str | Path, *, info: dict | None = None) -> Path:
    """Write only the vision tower of a `CLIP` as a transformers CLIPVisionModel folder: what MM1 keeps of CLIP, at
    a fraction of the size (a shipped encoder that only the VLM reads needs no text tower)."""
    v = model.cfg.vision
    state = export_mapped(model.vision, HF_CLIP_VISION, depth=v.depth, patch_size=v.patch_size)
    config = dict(model_type="clip_vision_model", architectures=["CLIPVisionModel"], **_vision_config(v),
                  mm1lab_objective="clip", mm1lab_loss=model.cfg.loss)
    return _write(Path(folder), config, state, _preprocessor(v), info)


def export_aim(model, folder: str | Path, *, info: dict | None = None) -> Path:
    """Write an `AIM` trunk (mm1lab.stage0.aim) as a transformers SiglipVisionModel folder (no pooling head)."""
    v = model.cfg.vision
    state = export_mapped(model.vision, HF_SIGLIP_VISION, depth=v.depth, patch_size=v.patch_size)
    config = dict(model_type="siglip_vision_model", architectures=["SiglipVisionModel"], vision_use_head=False,
                  **_vision_config(v), mm1lab_objective="aim")
    return _write(Path(folder), config, state, _preprocessor(v), info)


def export_lm(lm, tokenizer, folder: str | Path, *, info: dict | None = None) -> Path:
    """Write a `DecoderLM` and mm1lab's tokenizer as a transformers LlamaForCausalLM folder."""
    c = lm.cfg
    if c.qkv_bias or c.moe is not None:
        raise ValueError("export_lm writes Llama folders: an LM with q/k/v biases or MoE layers has no Llama layout")
    skip = ("lm_head.weight",) if c.tie_embeddings else ()
    state = export_mapped(lm, HF_LLAMA, depth=c.depth, skip=skip)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=c.vocab_size,
                  hidden_size=c.width, intermediate_size=c.ffn_dim, num_hidden_layers=c.depth,
                  num_attention_heads=c.heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
                  max_position_embeddings=c.max_seq_len, rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps,
                  hidden_act="silu", tie_word_embeddings=c.tie_embeddings, attention_bias=False,
                  bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return _write(Path(folder), config, state, None, info, tokenizer=tokenizer)


def write_hf_tokenizer(tokenizer, folder: Path) -> None:
    """mm1lab's `MM1Tokenizer` as transformers' PreTrainedTokenizerFast files (tokenizer.json + config)."""
    tokenizer.save(folder / "tokenizer.json")
    config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<bos>", eos_token="<eos>",
                  pad_token="<pad>", model_max_length=1_000_000, clean_up_tokenization_spaces=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_clip(folder: str | Path):
    """A transformers CLIPModel folder (as `export_clip` writes) back into mm1lab's `CLIP`, for evaluation."""
    import torch

    from mm1lab.pretrained.convert import load_mapped
    from mm1lab.pretrained.vision import hf_vision_config
    from mm1lab.safetensors_io import SafetensorsReader, read_json
    from mm1lab.stage0.clip import CLIP
    from mm1lab.stage0.config import CLIPConfig, TextConfig

    folder = Path(folder)
    config = read_json(folder / "config.json")
    t = config["text_config"]
    act = {theirs: ours for ours, theirs in HF_ACT.items()}
    text = TextConfig(vocab_size=t["vocab_size"], width=t["hidden_size"], depth=t["num_hidden_layers"],
                      heads=t["num_attention_heads"], mlp_ratio=t["intermediate_size"] / t["hidden_size"],
                      act=act[t["hidden_act"]], max_len=t["max_position_embeddings"], norm_eps=t["layer_norm_eps"],
                      eot_token_id=t["eos_token_id"], pad_token_id=t.get("pad_token_id", 0))
    vision, _ = hf_vision_config(folder)
    model = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=config["projection_dim"],
                            loss=config.get("mm1lab_loss", "clip")))
    reader = SafetensorsReader(folder)
    load_mapped(model.vision, reader, HF_CLIP_VISION, depth=vision.depth, source=str(folder),
                ignore=("text_model.*",))
    load_mapped(model.text, reader, HF_CLIP_TEXT, depth=text.depth, source=str(folder),
                ignore=("vision_model.*", "visual_projection.*", "text_projection.*", "logit_scale"))
    with torch.no_grad():
        model.visual_projection.weight.copy_(reader.get("visual_projection.weight"))
        model.text_projection.weight.copy_(reader.get("text_projection.weight"))
        model.logit_scale.copy_(reader.get("logit_scale"))
    return model.eval()
