"""Average pooling connector (MM1 ablation): n x n average pool over the patch grid, then a linear layer.

b - batch, n - patches, k - output tokens, d - features, h w - patch grid
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, pooling_regions, register_connector


@register_connector("avgpool")
class AvgPoolConnector(nn.Module):
    """Pool the grid to sqrt(k) x sqrt(k) cells, project each cell to the LM width."""

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        self.grid, self.out = grid, cfg.token_grid
        self.proj = nn.Linear(d_vision, d_lm)

    def forward(self, x: Tensor, *, return_attention: bool = False):
        x = rearrange(x, 'b (h w) d -> b d h w', h=self.grid)
        x = F.adaptive_avg_pool2d(x, self.out)
        y = self.proj(rearrange(x, 'b d h w -> b (h w) d'))
        if not return_attention:
            return y
        regions = pooling_regions(self.grid, self.out, batch=y.shape[0], device=y.device)
        return y, ConnectorInfo(regions=regions, extras={})
