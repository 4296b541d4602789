"""C-Abstractor (Honeybee, Cha et al. 2023), MM1's final connector.

Convolutions mix each patch with its neighbours before and after an adaptive average pool, so the k output tokens
keep the image's layout (locality) while still seeing context -- the trade-off Honeybee argues for.

    patches + pos-emb -> 2D grid -> RegNet stage (d_vision -> width) -> adaptive avg pool to sqrt(k) x sqrt(k)
    -> RegNet stage (width -> width) -> MLP (Linear, SiLU, Linear) -> LM width

b - batch, n - patches, k - output tokens, c - channels, d - features, h w - patch grid, i j - pooled grid
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, pooling_regions, register_connector
from mm1lab.nn import MLP, LayerNorm2d

# Ported from Honeybee's CAbstractor: https://github.com/kakaobrain/honeybee/blob/main/honeybee/projectors.py
# (it builds its stages with timm's `regnet.RegStage`, written out below so the file stands alone).
SE_RATIO = 0.25     # squeeze-excite bottleneck, relative to the block's input width (timm's convention)
NORM_EPS = 1e-6     # timm's LayerNorm2d default, so Honeybee weights behave the same here


def conv_norm(c_in: int, c_out: int, kernel: int = 1, *, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias: the norm that follows has one) -> LayerNorm2d -> optional SiLU."""
    layers = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
              LayerNorm2d(c_out, eps=NORM_EPS)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """RegNet bottleneck: 1x1 conv -> 3x3 depthwise conv -> squeeze-excite -> 1x1 conv, plus a residual.

    Equals timm's `regnet.Bottleneck` as Honeybee configures it: bottle_ratio 1, group_size 1 (depthwise),
    se_ratio 0.25, LayerNorm2d, SiLU, and SiLU after the residual sum.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = conv_norm(c_in, c_out, 1)
        self.conv2 = conv_norm(c_out, c_out, 3, groups=c_out)       # depthwise: mixes space, not channels
        squeeze = max(1, round(c_in * SE_RATIO))
        self.se = nn.Sequential(                                      # per-image channel gate from global context
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_out, squeeze, 1), nn.SiLU(), nn.Conv2d(squeeze, c_out, 1),
            nn.Sigmoid())
        self.conv3 = conv_norm(c_out, c_out, 1, act=False)
        # The first block of a stage changes the width, so its shortcut needs a 1x1 projection too.
        self.shortcut = nn.Identity() if c_in == c_out else conv_norm(c_in, c_out, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.conv1(x))
        h = h * self.se(h)
        return F.silu(self.conv3(h) + self.shortcut(x))


def regnet_stage(depth: int, c_in: int, c_out: int) -> nn.Sequential:
    """`depth` bottleneck blocks at stride 1; only the first changes the width."""
    return nn.Sequential(*[Bottleneck(c_in if i == 0 else c_out, c_out) for i in range(depth)])


@register_connector("c-abstractor")
class CAbstractorConnector(nn.Module):
    """Honeybee's convolutional abstractor: RegNet stage, adaptive pool to sqrt(k) x sqrt(k), RegNet stage, MLP.

    Args:
        cfg: `num_tokens` (k, a perfect square), `width` (stage width), `depth` (blocks per stage).
        d_vision: width of the patch features (CLS already dropped).
        d_lm: width of the LM the tokens are handed to.
        grid: patch grid side; the positional embedding is sized for grid * grid patches.
    """

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        self.grid, self.out = grid, cfg.token_grid
        # Honeybee adds its own positional embedding even though the ViT features carry one already.
        self.pos_emb = nn.Parameter(torch.zeros(1, grid * grid, d_vision))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.stage1 = regnet_stage(cfg.depth, d_vision, cfg.width)
        self.pool = nn.AdaptiveAvgPool2d(self.out)
        self.stage2 = regnet_stage(cfg.depth, cfg.width, cfg.width)
        self.readout = MLP(cfg.width, d_lm, d_lm, act="silu")     # Honeybee's mlp_depth=2 readout

    def forward(self, x: Tensor, *, return_attention: bool = False):
        """(b, n, d_vision) -> (b, k, d_lm); with `return_attention`, also the pooling regions."""
        x = rearrange(x + self.pos_emb, 'b (h w) d -> b d h w', h=self.grid)
        x = self.stage2(self.pool(self.stage1(x)))
        y = self.readout(rearrange(x, 'b d i j -> b (i j) d'))
        if not return_attention:
            return y
        # The pool decides which patches feed a token. The 3x3 depthwise convolutions around it also blur in
        # neighbours (each widens the receptive field by one cell on every side); these regions leave that out.
        regions = pooling_regions(self.grid, self.out, batch=y.shape[0], device=y.device)
        return y, ConnectorInfo(regions=regions, extras={})
