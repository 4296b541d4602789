"""Decoder-only LM (Llama family): RMSNorm, rotary positions, SwiGLU (or MoE), grouped-query attention.

b - batch, n - new tokens, s - cached + new tokens, h - query heads, g - kv heads, d - head features,
v - vocabulary

Parameter names follow Hugging Face Llama (`q_proj`, `gate`/`up`/`down` ...) closely enough that a declared
table maps checkpoints onto them (see `mm1lab.pretrained`). Rotary embeddings use the rotate-half convention
of HF Llama, so loaded weights need no permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import LMConfig
from mm1lab.moe import MoE, RouterInfo
from mm1lab.nn import RMSNorm, SwiGLU, attention, document_mask


class KVCache:
    """Pre-allocated keys/values for every layer: (b, g, max_len, d). `length` counts filled positions."""

    def __init__(self, cfg: LMConfig, *, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new keys/values after the cached ones; return everything cached so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for integer positions (b, n), computed on the fly in fp32 (no length limit baked in)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq                 # (b, n, d/2)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]                   # (b, 1, n, d)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class Attention(nn.Module):
    """Grouped-query attention through SDPA, with an optional KV cache."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.heads, self.kv_heads, hd = cfg.heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.width, cfg.heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.width, self.kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.width, self.kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.heads * hd, cfg.width, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], *, mask: Tensor | None, causal: bool,
                cache: KVCache | None = None, layer: int = 0,
                return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q = rearrange(self.q_proj(x), 'b n (h d) -> b h n d', h=self.heads)
        k = rearrange(self.k_proj(x), 'b n (g d) -> b g n d', g=self.kv_heads)
        v = rearrange(self.v_proj(x), 'b n (g d) -> b g n d', g=self.kv_heads)
        cos, sin = rope
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if return_attention:
            y, attn = self._explicit(q, k, v, mask, causal)
        else:
            attn = None
            y = attention(q, k, v, mask=mask, causal=causal, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(rearrange(y, 'b h n d -> b n (h d)')), attn

    def _explicit(self, q, k, v, mask, causal) -> tuple[Tensor, Tensor]:
        """Attention with its probabilities (b, h, n, s) materialised, for probing."""
        k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        scores = torch.einsum('bhnd,bhsd->bhns', q, k) * q.shape[-1] ** -0.5
        if causal:
            n, s = scores.shape[-2:]
            mask = torch.ones(n, s, dtype=torch.bool, device=q.device).tril(s - n)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = scores.float().softmax(-1).to(q.dtype)
        return attn @ v, attn


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + ffn(norm(x)). The FFN is dense SwiGLU or an MoE module."""

    def __init__(self, cfg: LMConfig, ffn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.ffn = ffn

    def forward(self, x: Tensor, rope, **attn_kwargs) -> tuple[Tensor, Tensor | None, RouterInfo | None]:
        y, attn = self.attn(self.attn_norm(x), rope, **attn_kwargs)
        x = x + y
        y = self.ffn(self.ffn_norm(x))
        y, router = y if isinstance(y, tuple) else (y, None)
        return x + y, attn, router


@dataclass
class LMOutput:
    """logits: (b, n, v) (or the last `logits_to_keep` positions); attentions per layer (b, h, n, s) when
    requested; routers: one RouterInfo per MoE layer."""

    logits: Tensor
    hidden: Tensor
    attentions: list[Tensor] | None
    routers: list[RouterInfo]


class DecoderLM(nn.Module):
    """Token embeddings -> decoder blocks -> RMSNorm -> LM head (tied to the embeddings by default)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        self.layers = nn.ModuleList(
            DecoderBlock(cfg, MoE(cfg.width, cfg.ffn_dim, cfg.moe) if cfg.is_moe_layer(i)
                         else SwiGLU(cfg.width, cfg.ffn_dim))
            for i in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, embeds: Tensor, positions: Tensor, *, cache: KVCache | None = None,
                key_mask: Tensor | None = None, segment_ids: Tensor | None = None, logits_to_keep: int = 0,
                head: bool = True, return_attention: bool = False) -> LMOutput:
        """Run the decoder on input embeddings (b, n, d) at integer `positions` (b, n).

        key_mask: (b, s) bool over cached + new positions, False for padding (left-padded prompts).
        segment_ids: (b, n) packed documents (1, 2, ... per document, 0 on padding): each attends only to itself
            (`document_mask`); training only, not with a cache. Positions are the caller's (`document_positions`).
        head: False skips the LM head (logits stay empty); the caller applies `lm_head` to the rows it needs.
        """
        n = embeds.shape[1]
        past = cache.length if cache is not None else 0
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed documents) are for training forwards; generation with a KV cache "
                             "takes one document per row")
        if segment_ids is not None and not _one_document_per_row(segment_ids):
            mask, causal = document_mask(segment_ids, flex=embeds.is_cuda and not return_attention), False
        else:   # one document per row, right-padded: plain causal attention is exact for every real token
            mask, causal = self._mask(n, past, key_mask if segment_ids is None else None, embeds.device)
        rope = self.rotary(positions, embeds.dtype)
        x, attentions, routers = embeds, [] if return_attention else None, []
        for i, layer in enumerate(self.layers):
            x, attn, router = layer(x, rope, mask=mask, causal=causal, cache=cache, layer=i,
                                    return_attention=return_attention)
            if attentions is not None:
                attentions.append(attn)
            if router is not None:
                routers.append(router)
        if cache is not None:
            cache.length += n
        x = self.norm(x)
        if not head:
            logits = x.new_empty(0)
        else:
            logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        return LMOutput(logits=logits, hidden=x, attentions=attentions, routers=routers)

    @staticmethod
    def _mask(n: int, past: int, key_mask: Tensor | None, device) -> tuple[Tensor | None, bool]:
        """SDPA mask: plain causal when nothing is padded (the fast path), else an explicit boolean mask."""
        if key_mask is None or bool(key_mask.all()):
            if past == 0:
                return None, True
            if n == 1:
                return None, False                           # one new token sees the whole cache
            key_mask = None
        s = past + n
        causal = torch.ones(n, s, dtype=torch.bool, device=device).tril(past)
        mask = causal[None, None]
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :s]
            # A fully masked row (a left-pad query) would give NaN; let it attend anywhere (its output is unused).
            mask = mask | ~mask.any(-1, keepdim=True)
        return mask, False


def _one_document_per_row(segment_ids: Tensor) -> bool:
    """True when every row is one document, then padding (ids 1 ... 1 0 ... 0): no document mask needed."""
    return bool((segment_ids <= 1).all() and (segment_ids[:, 1:] <= segment_ids[:, :-1]).all())


def document_positions(segment_ids: Tensor) -> Tensor:
    """Position ids (b, n) that restart at 0 at the first token of every packed document (and of the padding)."""
    b, n = segment_ids.shape
    index = torch.arange(n, device=segment_ids.device).expand(b, n)
    first = torch.ones_like(segment_ids, dtype=torch.bool)
    first[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return index - torch.where(first, index, 0).cummax(-1).values


def positions_from_mask(attention_mask: Tensor | None, input_ids: Tensor, *, past: int = 0) -> Tensor:
    """Position ids of the new tokens, counted over real tokens only (left-padded prompts start at 0).

    attention_mask covers cached + new positions (b, past + n); without it positions run past .. past + n - 1.
    """
    b, n = input_ids.shape
    if attention_mask is None:
        return torch.arange(past, past + n, device=input_ids.device).expand(b, n)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
