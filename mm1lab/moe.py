"""Mixture-of-experts FFN: a drop-in replacement for the dense SwiGLU in chosen LM layers (MM1-MoE).

t - tokens (batch x sequence flattened), d - features, e - experts, k - experts per token (top-k)

Dropless dispatch: every token reaches its k experts (no capacity, nothing dropped). Tokens are sorted by
expert once, then each expert runs on its contiguous slice (a loop over experts, never over tokens).
Auxiliary losses as in Switch/ST-MoE: load balance  E * sum_e f_e * P_e  (f_e: share of routed slots, P_e: mean
router probability; it is 1 for a uniform router, its minimum), and router z-loss  mean(logsumexp(logits)^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import MoEConfig
from mm1lab.nn import SwiGLU


@dataclass
class RouterInfo:
    """One MoE layer's routing: probabilities (t, e), chosen experts and weights (t, k), tokens per expert (e),
    and the unscaled auxiliary losses (coefficients are applied by the model)."""

    probs: Tensor
    experts: Tensor
    weights: Tensor
    counts: Tensor
    balance_loss: Tensor
    z_loss: Tensor


class MoE(nn.Module):
    """Top-k routed SwiGLU experts."""

    def __init__(self, dim: int, ffn_dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, cfg.ffn_dim or ffn_dim) for _ in range(cfg.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, RouterInfo]:
        shape, cfg = x.shape, self.cfg
        tokens = rearrange(x, '... d -> (...) d')
        logits = self.router(tokens).float()                        # route in fp32 (stable under bf16)
        probs = logits.softmax(-1)
        weights, experts = probs.topk(cfg.top_k, dim=-1)           # (t, k)
        weights = weights / weights.sum(-1, keepdim=True)           # renormalise over the chosen k (Mixtral)

        slots = rearrange(experts, 't k -> (t k)')
        order = slots.argsort(stable=True)                          # slots grouped by expert
        counts = torch.bincount(slots, minlength=cfg.num_experts)
        token_of_slot = order // cfg.top_k
        slot_weight = rearrange(weights, 't k -> (t k)')[order].to(x.dtype)

        out = torch.zeros_like(tokens)
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):   # one host sync, then a loop over experts
            if count:
                idx = token_of_slot[start:start + count]
                out.index_add_(0, idx, expert(tokens[idx]) * slot_weight[start:start + count, None])
            start += count

        share = counts.float() / slots.numel()                      # f_e
        balance = cfg.num_experts * (share * probs.mean(0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        info = RouterInfo(probs=probs, experts=experts, weights=weights, counts=counts,
                          balance_loss=balance, z_loss=z_loss)
        return out.reshape(shape), info
