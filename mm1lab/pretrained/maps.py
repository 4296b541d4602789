"""Declared weight-name tables, one per source format: our parameter name -> the checkpoint's name.

`{i}` stands for the block index. An entry whose parameter our module does not have (e.g. `cls_token` on
an encoder built without one) is skipped, and the checkpoint key it names is then reported as unexpected,
so a table may list optional parameters without hiding a mismatch. Tensors are copied as they are unless
the format's `transforms` table names a reshaping, given below as a (load, export) pair of functions.

Sources:
- HF Llama / Qwen2 / Mistral: transformers `modeling_llama.py`, `modeling_qwen2.py`.
- HF CLIP / SigLIP vision towers: transformers `modeling_clip.py`, `modeling_siglip.py`.
- timm CLIP ViT: timm `vision_transformer.py` (`vit_*_clip_*`: pre_norm=True, fused qkv, no patch bias).
- OpenCLIP ViT: open_clip `transformer.py` (`VisionTransformer`, `nn.MultiheadAttention` in_proj).
- HF Llava projector: transformers `modeling_llava.py` (`LlavaMultiModalProjector`), our `mlp` connector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from einops import rearrange
from torch import Tensor


@dataclass(frozen=True)
class Transform:
    """How a checkpoint tensor becomes ours (`load`) and back (`export`). `part` >= 0 marks one of `parts`
    equal slices of a fused tensor (q, k, v of a fused qkv), concatenated again on export."""

    load: Callable[[Tensor], Tensor]
    export: Callable[[Tensor, int], Tensor]     # (our tensor, patch size) -> checkpoint tensor
    part: int = -1
    parts: int = 1


def _fused(part: int) -> Transform:
    return Transform(load=lambda t: t.chunk(3, dim=0)[part], export=lambda t, p: t, part=part, parts=3)


TRANSFORMS: dict[str, Transform] = {
    # Patch conv (o, c, p1, p2) == our linear over patches flattened as '(p1 p2 c)'.
    "conv_to_linear": Transform(load=lambda t: rearrange(t, 'o c p1 p2 -> o (p1 p2 c)'),
                                export=lambda t, p: rearrange(t, 'o (p1 p2 c) -> o c p1 p2', p1=p, p2=p)),
    # timm keeps batch-shaped tokens: cls (1, 1, d) and positions (1, n, d).
    "drop_batch_token": Transform(load=lambda t: rearrange(t, '1 1 d -> d'),
                                  export=lambda t, p: rearrange(t, 'd -> 1 1 d')),
    "drop_batch": Transform(load=lambda t: rearrange(t, '1 n d -> n d'),
                            export=lambda t, p: rearrange(t, 'n d -> 1 n d')),
    # A fused (3 d, d) projection holds q, k, v stacked along its output axis.
    "fused_q": _fused(0),
    "fused_k": _fused(1),
    "fused_v": _fused(2),
}


@dataclass(frozen=True)
class KeyMap:
    """One source format: `keys` (ours -> theirs), `transforms` (ours -> TRANSFORMS name), and `ignored`
    checkpoint keys (fnmatch patterns) that are known to exist but have no place in our module.
    `prefixes`: alternatives put before every name in `keys`; the first one the checkpoint uses is taken."""

    name: str
    keys: dict[str, str]
    transforms: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ("",)


HF_LLAMA = KeyMap(
    name="hf_llama",
    keys={
        "embed.weight": "model.embed_tokens.weight",
        "layers.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
        "layers.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
        "layers.{i}.attn.q_proj.bias": "model.layers.{i}.self_attn.q_proj.bias",      # Qwen2
        "layers.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
        "layers.{i}.attn.k_proj.bias": "model.layers.{i}.self_attn.k_proj.bias",      # Qwen2
        "layers.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
        "layers.{i}.attn.v_proj.bias": "model.layers.{i}.self_attn.v_proj.bias",      # Qwen2
        "layers.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "layers.{i}.ffn.gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
        "layers.{i}.ffn.up.weight": "model.layers.{i}.mlp.up_proj.weight",
        "layers.{i}.ffn.down.weight": "model.layers.{i}.mlp.down_proj.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    },
    # Old Llama checkpoints saved the rotary table; it is recomputed, never loaded.
    ignored=("model.layers.*.self_attn.rotary_emb.inv_freq",),
)

# HF vision towers: a full CLIPModel/SiglipModel and transformers 4's CLIPVisionModel put the tower under
# `vision_model.`; transformers 5 saves a CLIPVisionModel/SiglipVisionModel without that prefix.
HF_VISION_PREFIXES = ("vision_model.", "")

# The transformer blocks of HF's CLIP and SigLIP vision towers (and CLIP's text tower) share names.
_HF_VIT_BLOCKS = {
    "blocks.{i}.norm1.weight": "encoder.layers.{i}.layer_norm1.weight",
    "blocks.{i}.norm1.bias": "encoder.layers.{i}.layer_norm1.bias",
    "blocks.{i}.attn.q.weight": "encoder.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.q.bias": "encoder.layers.{i}.self_attn.q_proj.bias",
    "blocks.{i}.attn.k.weight": "encoder.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.k.bias": "encoder.layers.{i}.self_attn.k_proj.bias",
    "blocks.{i}.attn.v.weight": "encoder.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.v.bias": "encoder.layers.{i}.self_attn.v_proj.bias",
    "blocks.{i}.attn.out.weight": "encoder.layers.{i}.self_attn.out_proj.weight",
    "blocks.{i}.attn.out.bias": "encoder.layers.{i}.self_attn.out_proj.bias",
    "blocks.{i}.norm2.weight": "encoder.layers.{i}.layer_norm2.weight",
    "blocks.{i}.norm2.bias": "encoder.layers.{i}.layer_norm2.bias",
    "blocks.{i}.mlp.fc1.weight": "encoder.layers.{i}.mlp.fc1.weight",
    "blocks.{i}.mlp.fc1.bias": "encoder.layers.{i}.mlp.fc1.bias",
    "blocks.{i}.mlp.fc2.weight": "encoder.layers.{i}.mlp.fc2.weight",
    "blocks.{i}.mlp.fc2.bias": "encoder.layers.{i}.mlp.fc2.bias",
}
_HF_VIT_POST_NORM = {"norm_post.weight": "post_layernorm.weight", "norm_post.bias": "post_layernorm.bias"}

HF_CLIP_VISION = KeyMap(
    name="hf_clip_vision",
    keys={
        "patch_embed.weight": "embeddings.patch_embedding.weight",
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding.weight",
        "norm_pre.weight": "pre_layrnorm.weight",     # sic: HF's spelling
        "norm_pre.bias": "pre_layrnorm.bias",
        **_HF_VIT_BLOCKS,
        **_HF_VIT_POST_NORM,
    },
    transforms={"patch_embed.weight": "conv_to_linear"},
    # A full CLIPModel folder also holds the text tower and the contrastive projections.
    ignored=("text_model.*", "visual_projection.*", "text_projection.*", "logit_scale",
             "*embeddings.position_ids"),
    prefixes=HF_VISION_PREFIXES,
)

HF_CLIP_TEXT = KeyMap(
    name="hf_clip_text",
    keys={
        "token_embed.weight": "embeddings.token_embedding.weight",
        "pos_embed": "embeddings.position_embedding.weight",
        **_HF_VIT_BLOCKS,
        "norm.weight": "final_layer_norm.weight",
        "norm.bias": "final_layer_norm.bias",
    },
    ignored=("*embeddings.position_ids",),
    prefixes=("text_model.",),
)

HF_SIGLIP_VISION = KeyMap(
    name="hf_siglip_vision",
    keys={
        "patch_embed.weight": "embeddings.patch_embedding.weight",
        "patch_embed.bias": "embeddings.patch_embedding.bias",
        "pos_embed": "embeddings.position_embedding.weight",
        **_HF_VIT_BLOCKS,
        **_HF_VIT_POST_NORM,
    },
    transforms={"patch_embed.weight": "conv_to_linear"},
    # `head` is SigLIP's attention-pooling head (image embedding for the contrastive loss), not patch features.
    ignored=("text_model.*", "logit_scale", "logit_bias", "vision_model.head.*", "head.*",
             "*embeddings.position_ids"),
    prefixes=HF_VISION_PREFIXES,
)

TIMM_CLIP_VIT = KeyMap(
    name="timm_clip_vit",
    keys={
        "patch_embed.weight": "patch_embed.proj.weight",
        "patch_embed.bias": "patch_embed.proj.bias",
        "cls_token": "cls_token",
        "pos_embed": "pos_embed",
        "norm_pre.weight": "norm_pre.weight",
        "norm_pre.bias": "norm_pre.bias",
        "blocks.{i}.norm1.weight": "blocks.{i}.norm1.weight",
        "blocks.{i}.norm1.bias": "blocks.{i}.norm1.bias",
        "blocks.{i}.attn.q.weight": "blocks.{i}.attn.qkv.weight",
        "blocks.{i}.attn.q.bias": "blocks.{i}.attn.qkv.bias",
        "blocks.{i}.attn.k.weight": "blocks.{i}.attn.qkv.weight",
        "blocks.{i}.attn.k.bias": "blocks.{i}.attn.qkv.bias",
        "blocks.{i}.attn.v.weight": "blocks.{i}.attn.qkv.weight",
        "blocks.{i}.attn.v.bias": "blocks.{i}.attn.qkv.bias",
        "blocks.{i}.attn.out.weight": "blocks.{i}.attn.proj.weight",
        "blocks.{i}.attn.out.bias": "blocks.{i}.attn.proj.bias",
        "blocks.{i}.norm2.weight": "blocks.{i}.norm2.weight",
        "blocks.{i}.norm2.bias": "blocks.{i}.norm2.bias",
        "blocks.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
        "blocks.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
        "blocks.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
        "blocks.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
        "norm_post.weight": "norm.weight",
        "norm_post.bias": "norm.bias",
    },
    transforms={
        "patch_embed.weight": "conv_to_linear", "cls_token": "drop_batch_token", "pos_embed": "drop_batch",
        "blocks.{i}.attn.q.weight": "fused_q", "blocks.{i}.attn.k.weight": "fused_k",
        "blocks.{i}.attn.v.weight": "fused_v", "blocks.{i}.attn.q.bias": "fused_q",
        "blocks.{i}.attn.k.bias": "fused_k", "blocks.{i}.attn.v.bias": "fused_v",
    },
    # `head` projects the pooled CLS into CLIP's joint embedding space; MM1 reads patch features instead.
    ignored=("head.weight", "head.bias"),
)

OPEN_CLIP_VIT = KeyMap(
    name="open_clip_vit",
    keys={
        "patch_embed.weight": "visual.conv1.weight",
        "cls_token": "visual.class_embedding",
        "pos_embed": "visual.positional_embedding",
        "norm_pre.weight": "visual.ln_pre.weight",
        "norm_pre.bias": "visual.ln_pre.bias",
        "blocks.{i}.norm1.weight": "visual.transformer.resblocks.{i}.ln_1.weight",
        "blocks.{i}.norm1.bias": "visual.transformer.resblocks.{i}.ln_1.bias",
        "blocks.{i}.attn.q.weight": "visual.transformer.resblocks.{i}.attn.in_proj_weight",
        "blocks.{i}.attn.q.bias": "visual.transformer.resblocks.{i}.attn.in_proj_bias",
        "blocks.{i}.attn.k.weight": "visual.transformer.resblocks.{i}.attn.in_proj_weight",
        "blocks.{i}.attn.k.bias": "visual.transformer.resblocks.{i}.attn.in_proj_bias",
        "blocks.{i}.attn.v.weight": "visual.transformer.resblocks.{i}.attn.in_proj_weight",
        "blocks.{i}.attn.v.bias": "visual.transformer.resblocks.{i}.attn.in_proj_bias",
        "blocks.{i}.attn.out.weight": "visual.transformer.resblocks.{i}.attn.out_proj.weight",
        "blocks.{i}.attn.out.bias": "visual.transformer.resblocks.{i}.attn.out_proj.bias",
        "blocks.{i}.norm2.weight": "visual.transformer.resblocks.{i}.ln_2.weight",
        "blocks.{i}.norm2.bias": "visual.transformer.resblocks.{i}.ln_2.bias",
        "blocks.{i}.mlp.fc1.weight": "visual.transformer.resblocks.{i}.mlp.c_fc.weight",
        "blocks.{i}.mlp.fc1.bias": "visual.transformer.resblocks.{i}.mlp.c_fc.bias",
        "blocks.{i}.mlp.fc2.weight": "visual.transformer.resblocks.{i}.mlp.c_proj.weight",
        "blocks.{i}.mlp.fc2.bias": "visual.transformer.resblocks.{i}.mlp.c_proj.bias",
        "norm_post.weight": "visual.ln_post.weight",
        "norm_post.bias": "visual.ln_post.bias",
    },
    transforms={
        "patch_embed.weight": "conv_to_linear",
        "blocks.{i}.attn.q.weight": "fused_q", "blocks.{i}.attn.k.weight": "fused_k",
        "blocks.{i}.attn.v.weight": "fused_v", "blocks.{i}.attn.q.bias": "fused_q",
        "blocks.{i}.attn.k.bias": "fused_k", "blocks.{i}.attn.v.bias": "fused_v",
    },
    # The text tower, the contrastive projection `visual.proj` (x @ proj) and logit scale are not used.
    ignored=("visual.proj", "transformer.*", "token_embedding.*", "positional_embedding", "ln_final.*",
             "text_projection", "logit_scale", "logit_bias", "attn_mask"),
)

# LLaVA-1.5's projector (Linear -> GELU -> Linear on every patch) is our `mlp` connector, weight for weight.
HF_LLAVA_PROJECTOR = KeyMap(
    name="hf_llava_projector",
    keys={
        "mlp.fc1.weight": "multi_modal_projector.linear_1.weight",
        "mlp.fc1.bias": "multi_modal_projector.linear_1.bias",
        "mlp.fc2.weight": "multi_modal_projector.linear_2.weight",
        "mlp.fc2.bias": "multi_modal_projector.linear_2.bias",
    },
)

KEYMAPS = {m.name: m for m in (HF_LLAMA, HF_CLIP_VISION, HF_SIGLIP_VISION, TIMM_CLIP_VIT, OPEN_CLIP_VIT,
                               HF_LLAVA_PROJECTOR)}
