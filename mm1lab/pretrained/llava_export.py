"""Export an MM1 model as a transformers `LlavaForConditionalGeneration` folder, loadable offline without remote
code: `LlavaForConditionalGeneration.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)`.

Llava is encoder -> Linear-GELU-Linear on every patch -> decoder LM, so it holds the MM1 models whose connector is
`mlp`, whose encoder has CLIP's or SigLIP's layout and whose LM is dense (Llama; Qwen2 when q/k/v carry biases).
Anything else raises a ValueError naming the field, its value and what to do. What is exact:
- weights: the declared tables of `maps.py`, run backwards (`export_mapped`); names as llava-hf checkpoints on the
  Hub have them (`vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`).
- features: Llava reads `hidden_states[vision_feature_layer]`, a block's output before any final norm; that is
  mm1lab's `feature_layer` -2, -3, ... At -1 mm1lab applies the final LayerNorm to every token: SigLIP's
  `last_hidden_state` is that (picked by `tie_last_hidden_states`), CLIP's is not (it normalises only the CLS
  token), so a CLIP-shaped encoder read at -1 after its norm cannot be exported exactly and is refused.
- pixels: CLIPImageProcessor (PIL backend) resizes the shorter side (bicubic), centre-crops and normalises, as
  `mm1lab.data.collate.preprocess_image` does; the processor expands `<image>` to `image_seq_length` placeholders.
- generation: generation_config.json stops at eos and suppresses the image placeholder and padding, as
  `mm1lab.generate` does; the chat template renders `mm1lab.data.prompts.chat_prompt` (mm1lab's tokenizer only).
docs/export.md lists what is not carried over (sub-image views, spaces around `<image>`, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mm1lab.config import MM1Config, VisionConfig
from mm1lab.data.tokenizer import ASSISTANT, BOS, END, EOS, IMAGE, PAD, USER, MM1Tokenizer, as_mm1_tokenizer
from mm1lab.pretrained.convert import export_mapped
from mm1lab.pretrained.maps import HF_CLIP_VISION, HF_LLAMA, HF_LLAVA_PROJECTOR, HF_SIGLIP_VISION, KeyMap
from mm1lab.safetensors_io import atomic_folder, save_state_dict
from mm1lab.stage0.export import HF_ACT

PREFIXES = {"vision": "vision_tower.", "connector": "", "lm": "language_model."}   # each part's place in Llava
INFO = "mm1lab_export.json"     # the source MM1Config, for provenance
SAVE_HINT = "keep the model in mm1lab's own format (MM1Model.save_pretrained / mm1lab.load_model)"


@dataclass(frozen=True)
class Tower:
    """A vision tower Llava can load, and the encoder layout it computes (mm1lab's VisionConfig fields)."""

    model_type: str
    keymap: KeyMap
    cls_token: bool             # Llava's "default" strategy drops it; "full" keeps every token
    pre_norm: bool              # the tower always applies it, so ours must have it (and vice versa)
    patch_bias: bool            # an encoder without one exports a zero bias
    normalises_patches: bool    # last_hidden_state is post-normed for every token (feature_layer=-1 is exact)
    extra: dict[str, Any] = field(default_factory=dict)


TOWERS = (
    Tower("clip_vision_model", HF_CLIP_VISION, cls_token=True, pre_norm=True, patch_bias=False,
          normalises_patches=False),
    Tower("siglip_vision_model", HF_SIGLIP_VISION, cls_token=False, pre_norm=False, patch_bias=True,
          normalises_patches=True, extra={"vision_use_head": False}),
)

# Connectors that Llava's one projector (Linear -> GELU -> Linear on every patch) cannot compute.
NOT_IN_LLAVA = {
    "avgpool": "average-pools the patch grid, then applies one linear layer",
    "attnpool": "pools the patches with learned queries (attention pooling), then one linear layer",
    "c-abstractor": "runs RegNet convolution stages around an adaptive pool (Honeybee's C-Abstractor)",
    "d-abstractor": "samples the patch grid with deformable attention (Honeybee's D-Abstractor)",
    "pixel-shuffle": "folds patch blocks into channels before one linear layer (transformers has it only inside "
                     "Idefics3 / SmolVLM, not Llava)",
}

# mm1lab.data.prompts.chat_prompt as a Jinja chat template: `<bos><|user|> {images}\n{text}<|end|><|assistant|>`.
# A list content renders its images as markers, a newline before the text that follows them (`user_content`);
# the replace filters drop a space beside `<image>` as mm1lab's tokenizer does (`normalize_markers`).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] | trim %}"
    "{% else %}{% set ns = namespace(text='', image=false) %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{% set ns.text = ns.text + '" + IMAGE + "' %}{% set ns.image = true %}"
    "{% elif item['type'] == 'text' %}{% if ns.image %}{% set ns.text = ns.text + '\\n' %}{% endif %}"
    "{% set ns.image = false %}{% set ns.text = ns.text + (item['text'] | trim) %}{% endif %}"
    "{% endfor %}{% set content = ns.text | trim %}{% endif %}"
    "{% if message['role'] == 'user' %}{% set turn = '" + USER + " ' + content + '" + END + "' %}"
    "{% elif message['role'] == 'assistant' %}{% set turn = '" + ASSISTANT + " ' + content + '" + END + "' %}"
    "{% else %}{{ raise_exception('mm1lab chats have user and assistant turns only') }}{% endif %}"
    "{{ turn | replace(' " + IMAGE + "', '" + IMAGE + "') | replace('" + IMAGE + " ', '" + IMAGE + "') }}"
    "{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% else %}{{ eos_token }}{% endif %}"
)


def _refuse(field_name: str, value: Any, why: str, fix: str) -> ValueError:
    return ValueError(f"cannot export to LlavaForConditionalGeneration: {field_name}={value!r} {why}; {fix}")


def vision_tower(v: VisionConfig) -> Tower:
    """The tower that computes this encoder exactly; a ValueError says why none does."""
    layout = dict(cls_token=v.cls_token, pre_norm=v.pre_norm, patch_bias=v.patch_bias)
    for tower in TOWERS:
        if tower.cls_token == v.cls_token and tower.pre_norm == v.pre_norm and (tower.patch_bias or not v.patch_bias):
            break
    else:
        raise _refuse("VisionConfig", layout, "matches no vision tower Llava loads",
                      "CLIP needs cls_token=True, pre_norm=True, patch_bias=False; SigLIP needs cls_token=False, "
                      f"pre_norm=False; {SAVE_HINT}")
    if v.feature_layer == -1 and v.post_norm and not tower.normalises_patches:
        raise _refuse("VisionConfig.feature_layer", -1, "with post_norm=True feeds the connector LayerNorm-ed patch "
                      "features, but transformers' CLIP tower normalises only the CLS token, so no Llava "
                      "vision_feature_layer yields them", "fine-tune with feature_layer=-2 (LLaVA-1.5's choice) "
                      f"or post_norm=False before exporting, or {SAVE_HINT}")
    return tower


def llava_config(cfg: MM1Config) -> dict[str, Any]:
    """The LlavaConfig fields (vision_config and text_config nested) of `cfg`; a ValueError for what Llava lacks."""
    if cfg.connector.kind != "mlp":
        why = NOT_IN_LLAVA.get(cfg.connector.kind, "has no counterpart in transformers")
        raise _refuse("ConnectorConfig.kind", cfg.connector.kind, f"{why}; Llava's only projector is "
                      "LlavaMultiModalProjector (Linear -> GELU -> Linear on every patch = mm1lab's 'mlp')",
                      f"train with connector kind 'mlp' to export to Llava, or {SAVE_HINT}")
    v, lm = cfg.vision, cfg.lm
    if lm.moe is not None:
        raise _refuse("LMConfig.moe", lm.moe,
                      "makes the LM a mixture of experts; Llava's LM is a dense Llama/Qwen2 decoder and "
                      "transformers has no class for MM1's interleaved MoE layers", SAVE_HINT)
    tower = vision_tower(v)
    vision = dict(model_type=tower.model_type, hidden_size=v.width, intermediate_size=v.ffn_dim,
                  num_hidden_layers=v.depth, num_attention_heads=v.heads, num_channels=v.channels,
                  image_size=v.image_size, patch_size=v.patch_size, hidden_act=HF_ACT[v.act],
                  layer_norm_eps=v.norm_eps, **tower.extra)
    if v.feature_layer == -1 and v.post_norm:
        vision["tie_last_hidden_states"] = True      # hidden_states[-1] := the post-normed last_hidden_state
    # Qwen2 is Llama with biases on q, k and v (none on o_proj), which is what LMConfig.qkv_bias means.
    text = dict(model_type="qwen2" if lm.qkv_bias else "llama", vocab_size=lm.vocab_size, hidden_size=lm.width,
                intermediate_size=lm.ffn_dim, num_hidden_layers=lm.depth, num_attention_heads=lm.heads,
                num_key_value_heads=lm.n_kv_heads, head_dim=lm.head_dim, max_position_embeddings=lm.max_seq_len,
                rope_parameters=dict(rope_type="default", rope_theta=float(lm.rope_theta)), rms_norm_eps=lm.norm_eps,
                hidden_act="silu", tie_word_embeddings=lm.tie_embeddings, bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    text.update(dict(use_sliding_window=False, sliding_window=None) if lm.qkv_bias else
                dict(attention_bias=False, mlp_bias=False))
    return dict(vision_config=vision, text_config=text, image_token_index=cfg.image_token_id,
                image_seq_length=cfg.image_tokens, projector_hidden_act="gelu", multimodal_projector_bias=True,
                vision_feature_layer=v.feature_layer,
                vision_feature_select_strategy="default" if tower.cls_token else "full",
                tie_word_embeddings=lm.tie_embeddings)


def llava_state_dict(model, *, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The model's weights under Llava's names (llava-hf's checkpoint layout), through the declared tables."""
    cfg = model.cfg
    v, lm, tower = cfg.vision, cfg.lm, vision_tower(cfg.vision)
    vision = export_mapped(model.vision, tower.keymap, depth=v.depth, patch_size=v.patch_size)
    prefix = tower.keymap.prefixes[0]
    like = model.vision.pos_embed
    # Parts the tower always has and our encoder may lack, filled so that they compute what ours does (nothing).
    if not v.post_norm:   # unused by Llava's features (CLIP: pooled CLS only; SigLIP: -1 is then not tied)
        vision[prefix + tower.keymap.keys["norm_post.weight"]] = torch.ones_like(like[0])
        vision[prefix + tower.keymap.keys["norm_post.bias"]] = torch.zeros_like(like[0])
    if tower.patch_bias and not v.patch_bias:
        vision[prefix + tower.keymap.keys["patch_embed.bias"]] = torch.zeros_like(like[0])
    parts = {
        "vision": vision,
        "connector": export_mapped(model.connector, HF_LLAVA_PROJECTOR, depth=0),
        # A tied head is the embedding; transformers ties it again from tie_word_embeddings.
        "lm": export_mapped(model.lm, HF_LLAMA, depth=lm.depth, skip=("lm_head.weight",) if lm.tie_embeddings else ()),
    }
    state = {PREFIXES[part] + name: t for part, tensors in parts.items() for name, t in tensors.items()}
    return {k: t.detach().to(dtype or t.dtype).contiguous() for k, t in state.items()}


def _hf_tokenizer(tokenizer, cfg: MM1Config):
    """A transformers tokenizer for the processor: mm1lab's MM1Tokenizer is wrapped, a transformers one kept;
    its `<image>` id must be the model's image_token_id and its vocabulary must fit the LM's."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, MM1Tokenizer):
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tokenizer, bos_token=BOS, eos_token=EOS,
                                            pad_token=PAD, model_max_length=cfg.lm.max_seq_len,
                                            clean_up_tokenization_spaces=False)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    if image_id != cfg.image_token_id:
        raise _refuse("tokenizer's <image> id", image_id, f"differs from MM1Config.image_token_id="
                      f"{cfg.image_token_id}", "pass the tokenizer the model was trained with")
    if len(tokenizer) > cfg.lm.vocab_size:
        raise _refuse("tokenizer size", len(tokenizer), f"exceeds LMConfig.vocab_size={cfg.lm.vocab_size}",
                      "pass the tokenizer the model was trained with")
    return tokenizer


def _mm1_layout(tokenizer) -> bool:
    """True when the tokenizer has mm1lab's special tokens at ids 0..6 (the chat template's tokens)."""
    try:
        as_mm1_tokenizer(tokenizer)
    except ValueError:
        return False
    return True


def llava_processor(cfg: MM1Config, tokenizer):
    """A LlavaProcessor: mm1lab's preprocessing as a CLIPImageProcessor, the tokenizer, and the chat template
    when the tokenizer has mm1lab's chat tokens."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    v, tower = cfg.vision, vision_tower(cfg.vision)
    # PIL bicubic resize of the shorter side + centre crop: the steps (and pixels) of mm1lab.data.collate.
    images = CLIPImageProcessorPil(size={"shortest_edge": v.image_size}, resample=3, do_center_crop=True,
                                   crop_size={"height": v.image_size, "width": v.image_size}, do_rescale=True,
                                   rescale_factor=1 / 255, do_normalize=True, image_mean=list(v.image_mean),
                                   image_std=list(v.image_std), do_convert_rgb=True)
    return LlavaProcessor(image_processor=images, tokenizer=_hf_tokenizer(tokenizer, cfg), patch_size=v.patch_size,
                          vision_feature_select_strategy="default" if tower.cls_token else "full",
                          num_additional_image_tokens=int(tower.cls_token), image_token=IMAGE,
                          chat_template=CHAT_TEMPLATE if _mm1_layout(tokenizer) else None)


def export_llava(model, folder: str | Path, tokenizer=None, *, dtype: torch.dtype | None = None) -> Path:
    """Write `model` (an MM1Model, or a path `mm1lab.load_model` reads) as a Llava folder: config.json,
    model.safetensors, generation_config.json, and with a tokenizer the processor files (tokenizer, image
    processor, chat template). Written atomically; nothing but safetensors holds weights.

    Args:
        model: an MM1Model, or a run / checkpoint / exported folder (its tokenizer is used unless one is given).
        tokenizer: mm1lab's MM1Tokenizer or a transformers tokenizer; None writes no processor files.
        dtype: cast the weights (default: as they are).
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:   # v5's config fields, processor classes, output capture
        raise ValueError(f"export_llava writes transformers 5 folders; transformers {transformers.__version__} is "
                         "installed: pip install 'transformers>=5.24'")
    source = None
    if isinstance(model, (str, Path)):
        from mm1lab.load import load_model

        loaded = load_model(model)
        source, model, tokenizer = str(loaded.path), loaded.model, tokenizer or loaded.tokenizer
    from transformers import GenerationConfig, LlavaConfig

    cfg: MM1Config = model.cfg
    fields = llava_config(cfg)          # refuses what Llava cannot express, before anything is written
    processor = llava_processor(cfg, tokenizer) if tokenizer is not None else None
    state = llava_state_dict(model, dtype=dtype)
    weights_dtype = next(iter(state.values())).dtype
    config = LlavaConfig(**fields, architectures=["LlavaForConditionalGeneration"], dtype=weights_dtype)
    generation = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                  pad_token_id=cfg.pad_token_id, suppress_tokens=[cfg.image_token_id, cfg.pad_token_id])
    with atomic_folder(folder) as tmp:
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        save_state_dict(state, tmp / "model.safetensors")
        if processor is not None:
            processor.save_pretrained(tmp)
        info = dict(source=source, mm1lab_config=cfg.to_dict(), processor=processor is not None)
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return Path(folder)
