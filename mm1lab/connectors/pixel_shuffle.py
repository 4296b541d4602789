"""Pixel-shuffle connector (Idefics3, nanoVLM): fold each s x s block of patches into one token's channels.

Where avgpool averages a block into one vector (losing detail), pixel shuffle stacks the block's s*s patch vectors
side by side (space-to-depth), so nothing is thrown away before the linear layer: k = n / s**2 tokens of width
s*s*d_vision. The price is a projection s*s times wider.

b - batch, n - patches, k - output tokens, d - features, h w - output grid, s1 s2 - position inside a block
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, pooling_regions, register_connector

# Ported from nanoVLM's ModalityProjector: https://github.com/huggingface/nanoVLM/blob/main/models/modality_projector.py
# (the same operation as Idefics3's `pixel_shuffle` in transformers' modeling_idefics3.py).


def space_to_depth(x: Tensor, *, grid: int, scale: int) -> Tensor:
    """(b, grid*grid, d) -> (b, (grid/scale)**2, scale*scale*d): each s x s block becomes one token.

    Channels are ordered (row in block, column in block, feature), tokens in row-major order of the blocks.
    """
    return rearrange(x, 'b (h s1 w s2) d -> b (h w) (s1 s2 d)', h=grid // scale, s1=scale, s2=scale)


@register_connector("pixel-shuffle")
class PixelShuffleConnector(nn.Module):
    """Space-to-depth by s = grid // sqrt(k), then one linear layer from d_vision * s * s to the LM width.

    Args:
        cfg: `num_tokens` (k); sqrt(k) must divide the patch grid side.
        d_vision: width of the patch features.
        d_lm: width of the LM the tokens are handed to.
        grid: patch grid side.
    """

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        self.grid, self.out = grid, cfg.token_grid
        self.scale = grid // cfg.token_grid
        self.proj = nn.Linear(d_vision * self.scale ** 2, d_lm, bias=False)    # no bias, as in Idefics3 / nanoVLM

    def forward(self, x: Tensor, *, return_attention: bool = False):
        """(b, n, d_vision) -> (b, k, d_lm); with `return_attention`, also each token's s x s block."""
        y = self.proj(space_to_depth(x, grid=self.grid, scale=self.scale))
        if not return_attention:
            return y
        # The linear layer can weigh the s*s patches differently; lacking a better summary, each counts equally.
        regions = pooling_regions(self.grid, self.out, batch=y.shape[0], device=y.device)
        return y, ConnectorInfo(regions=regions, extras={})
