"""The LM's one-token decode step with packed weights: what `generate` runs after the prompt.

Decoding is a chain of small matrix-vector products. On a CPU at batch 1-8, the overhead around them (module calls,
reshapes, casts, a separate matmul per projection) costs as much as the products on a small model: the tiny preset
spends ~1.0 ms per token through `DecoderLM.forward` and ~0.6 ms here. `PackedDecoder` stacks q/k/v into one
matrix and gate/up into another (4 matmuls per layer instead of 7) and runs the step as plain tensor code over
(b, features) rows. Its logits equal `DecoderLM.forward` on one token with the same KV cache (tests: `test_model.py`).

The stacked q/k/v and gate/up copies cost extra memory (about two thirds of the LM's block weights); `generate(...,
packed=False)` runs the module path instead. The packed copy is rebuilt when any LM weight changed since it was
made (tracked by the tensors' version counters, which every in-place update such as an optimizer step bumps).

b - batch, h - query heads, g - kv heads, d - head features, s - cached positions
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mm1lab.lm import DecoderLM, KVCache, rotate_half
from mm1lab.nn import SwiGLU


def _stack(*linears) -> tuple[Tensor, Tensor | None]:
    weight = torch.cat([m.weight for m in linears])
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    return weight, bias


class PackedDecoder:
    """`PackedDecoder.of(lm)(tokens, positions, cache)` -> logits (b, v) of the next token, cache advanced by one."""

    def __init__(self, lm: DecoderLM):
        cfg = lm.cfg
        self.lm = lm
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.n_kv_heads, cfg.head_dim
        self.layers = []
        for block in lm.layers:
            attn, ffn = block.attn, block.ffn
            layer = {"qkv": _stack(attn.q_proj, attn.k_proj, attn.v_proj), "attn": attn, "block": block}
            layer["gate_up"] = _stack(ffn.gate, ffn.up) if isinstance(ffn, SwiGLU) else None   # MoE: module call
            self.layers.append(layer)
        self.version = self._version(lm)

    @staticmethod
    def _version(lm: DecoderLM) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in lm.parameters())

    @classmethod
    def of(cls, lm: DecoderLM) -> PackedDecoder:
        """The packed decoder cached on `lm`, rebuilt when a weight changed since it was packed."""
        packed = lm.__dict__.get("_packed_decoder")
        if packed is None or packed.version != cls._version(lm):
            with torch.no_grad():
                packed = cls(lm)
            lm.__dict__["_packed_decoder"] = packed   # a plain attribute: not a submodule, not in the state dict
        return packed

    def __call__(self, tokens: Tensor, positions: Tensor, cache: KVCache, *,
                 key_mask: Tensor | None = None) -> Tensor:
        """tokens, positions: (b,); key_mask: (b, s) bool over cached + new positions (left padding) or None."""
        lm, h, g, d = self.lm, self.heads, self.kv_heads, self.head_dim
        x = lm.embed(tokens)                                               # (b, width)
        b, t = x.shape[0], cache.length
        if t + 1 > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; writing up to {t + 1}")
        cos, sin = (t[:, :, 0] for t in lm.rotary(positions[:, None], x.dtype))   # (b, 1, d): 1 broadcasts heads
        mask = None if key_mask is None else key_mask[:, None, None, :t + 1]   # (b, 1, 1, s)
        for i, layer in enumerate(self.layers):
            block = layer["block"]
            qkv = F.linear(block.attn_norm(x), *layer["qkv"])
            qk = qkv[:, :(h + g) * d].view(b, h + g, d)                   # queries and keys share the rotation
            qk = qk * cos + rotate_half(qk) * sin
            cache.keys[i][:, :, t] = qk[:, h:]
            cache.values[i][:, :, t] = qkv[:, (h + g) * d:].view(b, g, d)
            y = F.scaled_dot_product_attention(qk[:, :h, None], cache.keys[i][:, :, :t + 1],
                                               cache.values[i][:, :, :t + 1], attn_mask=mask, enable_gqa=g != h)
            x = x + layer["attn"].o_proj(y.view(b, h * d))
            z = block.ffn_norm(x)
            if layer["gate_up"] is not None:
                gate, up = F.linear(z, *layer["gate_up"]).chunk(2, -1)
                x = x + block.ffn.down(F.silu(gate) * up)
            else:
                y = block.ffn(z[:, None])
                x = x + (y[0] if isinstance(y, tuple) else y)[:, 0]
        cache.length += 1
        return lm.lm_head(lm.norm(x))
