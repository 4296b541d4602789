"""Training FLOPs of MM1: the one FLOP model behind every MFU figure (`python -m mm1lab.train.flops`, `mm1lab bench`).

PaLM's convention: matmul FLOPs only (norms, activations, softmax and the embedding lookup cost ~nothing), a
multiply-accumulate is 2 FLOPs and backward costs 2x forward, so training costs 6 FLOPs per matmul weight per
position it runs at, plus attention scores and values. For `images` images and `T_lm` LM tokens in rows of n_lm:

    6 * (P_patch * n_patch + P_vit * n_vit) * images + 3 * F_conn * images + 6 * P_lm * T_lm
    + 12 * (L_vit * d_vit * n_vit^2 * images + L_lm * h_lm * d_head * n_lm * T_lm)

P_patch: patch-embedding weights, run on the n_patch patches (the CLS token is not a patch).
P_vit:   ViT block matmul weights of the L_vit = depth + feature_layer + 1 blocks that run (all but the last for
         penultimate features: later blocks never run); n_vit = n_patch + CLS tokens go through them.
F_conn:  forward matmul FLOPs of the connector per image, its weights and its own attention alike, counted by
         torch's FlopCounterMode on meta patch features (no memory, no compute): the positions a connector's layers
         run at differ within one connector (the c-abstractor's first stage runs on every patch, its second stage
         and MLP on the k pooled cells), so they are read off the module rather than restated per kind.
P_lm:    LM matmul weights: attention, the FFN with only top_k of num_experts experts per MoE layer (plus its
         router), and the LM head on every position (tied or not it is a matmul; the embedding lookup is not).
The attention terms count QK^T and AV (d_vit: ViT width; h_lm x d_head: LM heads x head dim) and ignore the causal
mask, an upper bound as in PaLM's appendix. Matmul weights are those of nn.Linear and nn.Conv2d (`matmul_weights`).
tests/test_flops.py checks the count against torch's FlopCounterMode on a real forward pass.

MFU divides this by the matmul peak measured on the same machine, `mm1lab.bench.machine.matmul_peak`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mm1lab.config import MM1Config

MATMUL_LAYERS = (nn.Linear, nn.Conv2d)


def matmul_weights(module: nn.Module) -> int:
    """Weights of the matrix-multiply layers (Linear, Conv2d) in `module`; each costs one multiply-add per position."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, MATMUL_LAYERS))


def _meta_model(cfg: MM1Config) -> nn.Module:
    # Imported here: the model pulls in much of the package, and this module stays light to import.
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        return MM1Model(cfg)


def active_lm_weights(lm: nn.Module, cfg: MM1Config) -> int:
    """Matmul weights of the LM a token runs through: every MoE layer counts top_k of its num_experts experts."""
    weights = matmul_weights(lm)
    moe = cfg.lm.moe
    if moe is None:
        return weights
    for layer in lm.layers:
        experts = getattr(layer.ffn, "experts", None)
        if experts is not None:   # an MoE layer; dense layers hold a plain SwiGLU
            weights -= (moe.num_experts - moe.top_k) * matmul_weights(experts[0])
    return weights


def connector_flops(connector: nn.Module, cfg: MM1Config) -> int:
    """Forward matmul FLOPs of `connector` on one image's patch features, counted by torch on meta tensors."""
    features = torch.empty(1, cfg.vision.num_patches, cfg.vision.width, device="meta")
    # The math SDPA backend is plain matmuls, which the counter sees whatever kernel a real run would pick.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        connector(features)
    return counter.get_total_flops()


def flops_per_token(cfg: MM1Config, seq_len: int) -> float:
    """Training FLOPs of the LM per token in rows of `seq_len`: 6 x active matmul weights + attention."""
    lm = _meta_model(cfg).lm
    attention = 12 * cfg.lm.depth * cfg.lm.heads * cfg.lm.head_dim * seq_len
    return float(6 * active_lm_weights(lm, cfg) + attention)


def flops_per_image(cfg: MM1Config) -> float:
    """Training FLOPs per image of the ViT blocks that run (+ their attention) and of the connector."""
    model = _meta_model(cfg)
    v = cfg.vision
    blocks_run = v.depth + v.feature_layer + 1
    n_vit = v.num_patches + int(v.cls_token)
    patch = matmul_weights(model.vision.patch_embed) * v.num_patches
    blocks = sum(map(matmul_weights, model.vision.blocks[:blocks_run])) * n_vit
    attention = 12 * blocks_run * v.width * n_vit * n_vit
    return float(6 * (patch + blocks) + attention + 3 * connector_flops(model.connector, cfg))


def step_flops(cfg: MM1Config, tokens: float, images: float, seq_len: int) -> float:
    """Training FLOPs of `tokens` LM tokens (in rows of `seq_len`) and `images` images."""
    return flops_per_token(cfg, seq_len) * tokens + flops_per_image(cfg) * images


def batch_flops(cfg: MM1Config, batch: dict[str, Tensor]) -> float:
    """Training FLOPs of one step on `batch` (input_ids (b, n), images (N, c, H, W)), padding counted as tokens."""
    b, n = batch["input_ids"].shape
    return step_flops(cfg, b * n, batch["images"].shape[0], n)
