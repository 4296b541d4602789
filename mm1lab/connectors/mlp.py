"""LLaVA-1.5 connector: every patch becomes one LM token through a 2-layer MLP (k = number of patches).

b - batch, n - patches, d - features
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mm1lab.config import ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, register_connector
from mm1lab.nn import MLP


@register_connector("mlp")
class MLPConnector(nn.Module):
    """Linear -> GELU -> Linear on each patch feature."""

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        self.mlp = MLP(d_vision, d_lm, d_lm, act="gelu")

    def forward(self, x: Tensor, *, return_attention: bool = False):
        y = self.mlp(x)
        if not return_attention:
            return y
        regions = torch.eye(x.shape[1], device=x.device).expand(x.shape[0], -1, -1)
        return y, ConnectorInfo(regions=regions, extras={})
