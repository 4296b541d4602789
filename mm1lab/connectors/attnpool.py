"""Attention-pooling connector (MM1 ablation): k learnable queries cross-attend to the patches, then a linear.

Unlike the pooling connectors, nothing ties an output token to a place on the grid: each query learns from the
content which patches to read, so `regions` can be spread over the whole image.

b - batch, n - patches, k - output tokens (queries), h - heads, c - features per head, d - features
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange, repeat
from torch import Tensor, nn

from mm1lab.config import ConfigError, ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, register_connector
from mm1lab.nn import attention


@register_connector("attnpool")
class AttnPoolConnector(nn.Module):
    """k learned queries, multi-head cross-attention over the patch features, projection to the LM width.

    Args:
        cfg: `num_tokens` is the number of queries (k), `heads` the attention heads (must divide d_vision).
        d_vision: width of the patch features; queries, keys and values all keep this width.
        d_lm: width of the LM the tokens are handed to.
        grid: patch grid side (unused: attention needs no grid, kept for the common signature).
    """

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        if d_vision % cfg.heads:
            divisors = [h for h in range(1, min(d_vision, 64) + 1) if d_vision % h == 0]
            raise ConfigError(f"ConnectorConfig.heads ({cfg.heads}) must divide the vision width d_vision "
                              f"({d_vision}) for 'attnpool'; choose one of {divisors}")
        self.heads = cfg.heads
        # No query projection: a linear map of a learned constant is just another learned constant.
        # Small init keeps the first attention maps near uniform, so training starts close to average pooling.
        self.queries = nn.Parameter(torch.empty(cfg.num_tokens, d_vision))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.to_k = nn.Linear(d_vision, d_vision)
        self.to_v = nn.Linear(d_vision, d_vision)
        self.proj = nn.Linear(d_vision, d_lm)     # doubles as the attention's output projection

    def forward(self, x: Tensor, *, return_attention: bool = False):
        """(b, n, d_vision) -> (b, k, d_lm); with `return_attention`, also the attention maps."""
        q = repeat(self.queries, 'k (h c) -> b h k c', b=x.shape[0], h=self.heads)
        k = rearrange(self.to_k(x), 'b n (h c) -> b h n c', h=self.heads)
        v = rearrange(self.to_v(x), 'b n (h c) -> b h n c', h=self.heads)
        if not return_attention:
            out = attention(q, k, v)
            return self.proj(rearrange(out, 'b h k c -> b k (h c)'))

        # SDPA never materialises the weights, so compute the same softmax by hand when they are asked for.
        scores = einsum(q, k, 'b h k c, b h n c -> b h k n') * q.shape[-1] ** -0.5
        weights = scores.softmax(dim=-1)
        out = einsum(weights, v, 'b h k n, b h n c -> b h k c')
        y = self.proj(rearrange(out, 'b h k c -> b k (h c)'))
        # Each head's weights sum to 1 over patches, so their mean does too.
        regions = weights.mean(dim=1)
        return y, ConnectorInfo(regions=regions, extras={"attention": weights})
