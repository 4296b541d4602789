"""The peer: transformers' `LlavaForConditionalGeneration` built at the same dimensions as an MM1 config.

LLaVA-1.5 is CLIP ViT -> 2-layer GELU MLP projector -> Llama, which is MM1 with the `mlp` connector. The two
coincide parameter for parameter when the MM1 config uses CLIP's conventions (no patch bias, CLS token, `ln_pre`,
post-LayerNorm) and LLaVA's feature choice: the penultimate block's output (`vision_feature_layer=-2`) with the
CLS token dropped (`vision_feature_select_strategy="default"`). Each image then fills `num_patches` consecutive
image-token ids in `input_ids`, exactly as in mm1lab, so the same batch feeds both models.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from mm1lab.config import MM1Config
from mm1lab.nn import count_parameters


def matched_config(cfg: MM1Config) -> MM1Config:
    """`cfg` with LLaVA's choices: the `mlp` connector, penultimate-layer features, CLIP's CLS/ln_pre/no patch bias."""
    vision = dataclasses.replace(cfg.vision, feature_layer=-2, cls_token=True, pre_norm=True, post_norm=True,
                                 patch_bias=False)
    connector = dataclasses.replace(cfg.connector, kind="mlp", width=cfg.lm.width)
    lm = dataclasses.replace(cfg.lm, moe=None, qkv_bias=False, head_dim_override=None)
    return dataclasses.replace(cfg, vision=vision, connector=connector, lm=lm, name=f"{cfg.name}-llava")


def llava_config(cfg: MM1Config, *, attn_implementation: str = "sdpa"):
    """A `LlavaConfig` (CLIPVisionConfig + LlamaConfig) with the dimensions of `matched_config(cfg)`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    v, lm = cfg.vision, cfg.lm
    vision = CLIPVisionConfig(hidden_size=v.width, intermediate_size=v.ffn_dim, num_hidden_layers=v.depth,
                              num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                              num_channels=v.channels, hidden_act=v.act, layer_norm_eps=v.norm_eps)
    text = LlamaConfig(vocab_size=lm.vocab_size, hidden_size=lm.width, intermediate_size=lm.ffn_dim,
                       num_hidden_layers=lm.depth, num_attention_heads=lm.heads, num_key_value_heads=lm.n_kv_heads,
                       max_position_embeddings=lm.max_seq_len, rms_norm_eps=lm.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": lm.rope_theta},
                       tie_word_embeddings=lm.tie_embeddings, pad_token_id=cfg.pad_token_id,
                       bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=cfg.image_token_id,
                         image_seq_length=v.num_patches, projector_hidden_act="gelu",
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         multimodal_projector_bias=True, tie_word_embeddings=lm.tie_embeddings)
    config._attn_implementation = attn_implementation
    return config


def build_peer(cfg: MM1Config, *, seed: int = 0) -> nn.Module:
    """`LlavaForConditionalGeneration` at the dimensions of `matched_config(cfg)` (random init, SDPA attention)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava_config(cfg)).eval()


def peer_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The peer's vision tower, projector and language model, named like mm1lab's parts."""
    inner = model.model
    return {"vision": inner.vision_tower, "connector": inner.multi_modal_projector, "lm": inner.language_model,
            "lm_head": model.lm_head}


def parameter_counts(model: nn.Module, *, peer: bool) -> dict[str, int]:
    """Parameters per part (vision, connector, lm incl. head), counting tied weights once."""
    if not peer:
        return {part: count_parameters(getattr(model, part)) for part in ("vision", "connector", "lm")}
    parts = peer_parts(model)
    counts = {part: count_parameters(parts[part]) for part in ("vision", "connector", "lm")}
    head = parts["lm_head"].weight
    if head is not parts["lm"].embed_tokens.weight:
        counts["lm"] += head.numel()
    return counts
