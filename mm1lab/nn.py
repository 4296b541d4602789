"""Small building blocks shared by the encoder, connectors and LM (defined once, used everywhere).

b - batch, h - heads, n - queries, s - keys
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# On CPU, SDPA's flash kernel in bf16/fp16 is 2-3x slower than the math path (matmul + softmax) for short
# sequences, backward included; from ~200 keys on, flash wins. Measured with torch 2.13 on a 2-core Xeon (AMX),
# (b, h, n, 64) causal, forward + backward: n=129 flash 17.4 ms vs math 8.8 ms; n=256 flash 21 ms vs math 30 ms.
# fp32 flash is faster at every length measured. See docs/benchmarks.md ("Attention kernel on CPU").
CPU_LOW_PRECISION_MATH_BELOW = 160


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | BlockMask | None = None, causal: bool = False,
              enable_gqa: bool = False) -> Tensor:
    """`F.scaled_dot_product_attention` with the faster CPU kernel for low-precision short sequences, or
    FlexAttention when `mask` is a `BlockMask` (packed documents on CUDA, see `document_mask`)."""
    if isinstance(mask, BlockMask):
        if torch.is_autocast_enabled(q.device.type):   # flex does not autocast; SDPA would run in this dtype
            dtype = torch.get_autocast_dtype(q.device.type)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return _flex(q.device.type)(q, k, v, block_mask=mask, enable_gqa=enable_gqa)
    # Under autocast SDPA runs in the autocast dtype whatever q's dtype (fp32 after RoPE's fp32 tables).
    cpu = q.device.type == "cpu"
    dtype = torch.get_autocast_dtype("cpu") if cpu and torch.is_autocast_enabled("cpu") else q.dtype
    if cpu and dtype in (torch.bfloat16, torch.float16) and k.shape[-2] < CPU_LOW_PRECISION_MATH_BELOW:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=enable_gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=enable_gqa)


def document_mask(segment_ids: Tensor, *, flex: bool) -> Tensor | BlockMask:
    """Block-diagonal causal mask of packed documents: query i sees key j when j <= i and both lie in the same
    document (`segment_ids` (b, n): 1, 2, ... per document, 0 on padding, which sees only padding).

    flex: a FlexAttention `BlockMask` (CUDA: fully masked blocks are skipped, so attention costs the sum of the
    squared document lengths); otherwise a boolean (b, 1, n, n) mask for SDPA (CPU, and probing).
    """
    if not flex:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]           # (b, 1, n, s)
        n = segment_ids.shape[1]
        return same & torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()

    def same_document_causal(b, h, q, kv):
        return (segment_ids[b, q] == segment_ids[b, kv]) & (q >= kv)

    b, n = segment_ids.shape
    return create_block_mask(same_document_causal, b, None, n, n, device=segment_ids.device)


@functools.cache
def _flex(device_type: str):
    """FlexAttention, compiled on CUDA; eager elsewhere (it materialises the scores: right, not fast)."""
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): x / rms(x) * weight, computed in fp32 for stability."""

    def __init__(self, dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """Gated FFN (Llama): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, ffn_dim: int, *, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dim, ffn_dim, bias=bias)
        self.up = nn.Linear(dim, ffn_dim, bias=bias)
        self.down = nn.Linear(ffn_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Two-layer MLP: fc2(act(fc1(x)))."""

    def __init__(self, dim: int, ffn_dim: int, out: int | None = None, *, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, out or dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (b, c, h, w) map."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device: only shapes are read)."""
    return sum(p.numel() for p in module.parameters())
