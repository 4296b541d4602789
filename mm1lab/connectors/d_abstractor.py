"""D-Abstractor (Honeybee, Cha et al. 2023): a deformable-attention decoder over the patch grid, in plain PyTorch.

Each of the k queries owns a learnable reference point on a sqrt(k) x sqrt(k) grid. In every layer a query
predicts, per head, a few sampling offsets around that point and a softmax weight per point, then reads the value
map there by bilinear interpolation. Cost grows with k * heads * points, not with the number of patches, and the
tokens stay anchored to places in the image (locality) while the offsets let them reach beyond their cell.

b - batch, n - patches, k - queries (output tokens), h - heads, p - sampling points per head,
c - features per head, d - features, y x - patch grid rows / columns, xy - a 2D point, x first (grid_sample order)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from mm1lab.config import ConfigError, ConnectorConfig
from mm1lab.connectors.registry import ConnectorInfo, register_connector
from mm1lab.nn import MLP, attention

# Ported from Honeybee's DAbstractor, https://github.com/kakaobrain/honeybee/blob/main/honeybee/projectors.py,
# which stacks transformers' DeformableDetrDecoderLayer (post-norm). Here: pre-norm layers plus a final norm,
# one feature level, and grid_sample in place of the CUDA kernel.


class DeformableCrossAttention(nn.Module):
    """Each query samples `points` locations per head around its reference point and mixes them by learned weights."""

    def __init__(self, dim: int, *, heads: int, points: int, grid: int):
        super().__init__()
        self.heads, self.points, self.grid = heads, points, grid
        self.to_v = nn.Linear(dim, dim)
        self.to_offsets = nn.Linear(dim, heads * points * 2)     # in patches, relative to the reference point
        self.to_weights = nn.Linear(dim, heads * points)
        self.to_out = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's init. Zero offset weights: every query starts from the same sampling pattern,
        centred on its reference point. The bias spreads head h's points along direction 2*pi*h/heads at
        1, 2, ..., points patches out; were it zero too, all points would sit on the reference point with
        identical gradients and could never separate."""
        nn.init.zeros_(self.to_offsets.weight)
        angle = torch.arange(self.heads) * (2 * math.pi / self.heads)
        direction = torch.stack([angle.cos(), angle.sin()], dim=-1)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)    # onto the unit square's rim
        ring = einsum(direction, torch.arange(1.0, self.points + 1), 'h xy, p -> h p xy')
        self.to_offsets.bias.copy_(rearrange(ring, 'h p xy -> (h p xy)'))
        nn.init.zeros_(self.to_weights.weight)                   # uniform mix over the points at the start
        nn.init.zeros_(self.to_weights.bias)
        for linear in (self.to_v, self.to_out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: Tensor, value: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """query (b, k, d), value (b, n, d), reference (k, 2) in [0, 1] ->
        output (b, k, d), sampling points (b, k, h, p, 2) in [0, 1], sampling weights (b, k, h, p)."""
        b = query.shape[0]
        value = rearrange(self.to_v(value), 'b (y x) (h c) -> (b h) c y x', y=self.grid, h=self.heads)
        offsets = rearrange(self.to_offsets(query), 'b k (h p xy) -> b k h p xy', h=self.heads, xy=2)
        points = rearrange(reference, 'k xy -> k 1 1 xy') + offsets / self.grid    # patches -> [0, 1] units
        weights = rearrange(self.to_weights(query), 'b k (h p) -> b k h p', h=self.heads).softmax(dim=-1)
        # grid_sample wants (x, y) in [-1, 1]; with align_corners=False, -1 and 1 are the map's outer edges, so
        # [0, 1] image coordinates map linearly. Points off the map read zeros.
        grid = rearrange(2 * points - 1, 'b k h p xy -> (b h) k p xy')
        sampled = F.grid_sample(value, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
        sampled = rearrange(sampled, '(b h) c k p -> b h c k p', b=b)
        out = einsum(sampled, weights, 'b h c k p, b k h p -> b k h c')
        return self.to_out(rearrange(out, 'b k h c -> b k (h c)')), points, weights


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention among the queries, deformable cross-attention, FFN."""

    def __init__(self, dim: int, *, heads: int, points: int, grid: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_qk = nn.Linear(dim, 2 * dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.cross = DeformableCrossAttention(dim, heads=heads, points=points, grid=grid)
        self.ffn = MLP(dim, 4 * dim, act="gelu")

    def forward(self, x: Tensor, pos: Tensor, value: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.norm1(x)
        # As in DETR, the query position goes into queries and keys (where to look), not into values (what is read).
        q, k = rearrange(self.to_qk(h + pos), 'b k (two h c) -> two b h k c', two=2, h=self.heads)
        v = rearrange(self.to_v(h), 'b k (h c) -> b h k c', h=self.heads)
        x = x + self.to_out(rearrange(attention(q, k, v), 'b h k c -> b k (h c)'))
        h, points, weights = self.cross(self.norm2(x) + pos, value, reference)
        x = x + h
        return x + self.ffn(self.norm3(x)), points, weights


def splat_regions(points: Tensor, weights: Tensor, grid: int) -> Tensor:
    """(b, k, n) patch weights of bilinear sampling at `points` (b, k, h, p, 2) in [0, 1] mixed by `weights`
    (b, k, h, p), averaged over heads.

    Uses the weights grid_sample(align_corners=False) applies: patch j's centre sits at (j + 0.5) / grid, and a
    point at u patches gives patch j the tent weight max(0, 1 - |u - j|). Weight that falls off the map (zero
    padding) is dropped and each row renormalised to sum to 1; a query whose every point is off the map gets zeros.
    """
    centres = torch.arange(grid, device=points.device, dtype=points.dtype)
    u = points * grid - 0.5                                              # patch units, patch centres at integers
    tent = (1 - (u[..., None] - centres).abs()).clamp(min=0)             # (b, k, h, p, xy, grid)
    splat = einsum(weights, tent[..., 1, :], tent[..., 0, :], 'b k h p, b k h p y, b k h p x -> b k y x')
    regions = rearrange(splat, 'b k y x -> b k (y x)')                   # sums over heads; normalising averages
    return regions / regions.sum(dim=-1, keepdim=True).clamp(min=1e-12)


@register_connector("d-abstractor")
class DAbstractorConnector(nn.Module):
    """Honeybee's deformable abstractor: k queries from the pooled map, `layers` deformable decoder layers, linear.

    Args:
        cfg: `num_tokens` (k, a perfect square), `width` (decoder width), `layers`, `heads` (must divide width),
            `points` (sampling points per head).
        d_vision: width of the patch features.
        d_lm: width of the LM the tokens are handed to.
        grid: patch grid side.
    """

    def __init__(self, cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ConfigError(f"ConnectorConfig.heads ({cfg.heads}) must divide ConnectorConfig.width "
                              f"({cfg.width}) for 'd-abstractor'")
        self.grid, self.out = grid, cfg.token_grid
        self.in_proj = nn.Linear(d_vision, cfg.width)
        self.value_pos = nn.Parameter(torch.zeros(1, grid * grid, cfg.width))
        self.query_pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.width))
        for pos in (self.value_pos, self.query_pos):
            nn.init.trunc_normal_(pos, std=0.02)
        # Reference points start at the centres of the sqrt(k) x sqrt(k) cells, stored as (x, y) in [0, 1].
        centres = (torch.arange(self.out) + 0.5) / self.out
        ys, xs = torch.meshgrid(centres, centres, indexing='ij')
        self.reference = nn.Parameter(rearrange(torch.stack([xs, ys], dim=-1), 'i j xy -> (i j) xy'))
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.width, heads=cfg.heads, points=cfg.points, grid=grid) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)     # pre-norm layers leave the residual stream unnormalised
        self.proj = nn.Linear(cfg.width, d_lm)

    def forward(self, x: Tensor, *, return_attention: bool = False):
        """(b, n, d_vision) -> (b, k, d_lm); with `return_attention`, also the last layer's sampling points."""
        value = self.in_proj(x) + self.value_pos
        # Queries start as the adaptively pooled map (Honeybee's pooled_v_target='tgt'), so layer 0 already
        # holds an avgpool-like summary of each cell and the decoder only has to refine it.
        pooled = F.adaptive_avg_pool2d(rearrange(value, 'b (y x) d -> b d y x', y=self.grid), self.out)
        queries = rearrange(pooled, 'b d i j -> b (i j) d')
        for layer in self.layers:
            queries, points, weights = layer(queries, self.query_pos, value, self.reference)
        y = self.proj(self.norm(queries))
        if not return_attention:
            return y
        regions = splat_regions(points, weights, self.grid)
        return y, ConnectorInfo(regions=regions, extras={"sampling_points": points, "sampling_weights": weights})
