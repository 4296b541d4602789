"""AIM (El-Nouby et al., 2024): pre-train a ViT by predicting the next image patch, the reconstructive encoder MM1's
Table 1 compares with CLIP.

b - batch, n - patches in raster order, d - trunk width, p - pixels per patch (p1 p2 c)

    patches (raster order) -> ViT trunk with a prefix-causal mask -> MLP head -> next patch's pixels

Prefix-causal attention: each image draws a prefix length K; patches 0..K-1 attend to each other bidirectionally,
patch i >= K attends to patches 0..i. The loss is the mean squared error between the head's output at position i
and patch i + 1's pixels, normalised per patch (zero mean, unit variance, as MAE's `norm_pix_loss`), counted only
at the positions whose target lies past the prefix (i + 1 >= K). Downstream (in MM1) the trunk runs fully
bidirectionally: the prefix is what makes that switch cheap, since pre-training already saw bidirectional prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from mm1lab.stage0.clip import init_fan_in
from mm1lab.stage0.config import AIMConfig
from mm1lab.vision import VisionEncoder


def prefix_causal_mask(prefix: Tensor, n: int) -> Tensor:
    """(b,) prefix lengths -> (b, 1, n, n) bool, True where query i may attend to key j: j <= i, or both in the
    prefix (i < K and j < K)."""
    i = torch.arange(n, device=prefix.device)
    causal = i[None, :] <= i[:, None]                                   # (n, n): key j <= query i
    in_prefix = i[None, :] < prefix[:, None]                            # (b, n)
    both = rearrange(in_prefix, 'b i -> b i 1') & rearrange(in_prefix, 'b j -> b 1 j')
    return rearrange(causal[None] | both, 'b i j -> b 1 i j')


def patch_targets(pixels: Tensor, patch_size: int, *, eps: float = 1e-6) -> Tensor:
    """(b, c, H, W) pixels -> (b, n, p) patches in raster order, each normalised to zero mean and unit variance."""
    patches = rearrange(pixels, 'b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)', p1=patch_size, p2=patch_size)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class PixelHead(nn.Module):
    """The MLP head: `depth` residual MLP blocks, then a linear map to one patch's pixels."""

    def __init__(self, dim: int, width: int, depth: int, out: int):
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(),
                                                  nn.Linear(4 * width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out))

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


@dataclass
class AIMOutput:
    """loss; predictions (b, n, p) of the next patch at each position; targets (b, n, p); counted (b, n) bool."""

    loss: Tensor
    predictions: Tensor
    targets: Tensor
    counted: Tensor


class AIM(nn.Module):
    """ViT trunk + pixel head. `model(images)` -> AIMOutput; `model.vision` is the trunk MM1 keeps."""

    def __init__(self, cfg: AIMConfig):
        super().__init__()
        self.cfg = cfg
        v = cfg.vision
        self.vision = VisionEncoder(v)
        self.head = PixelHead(v.width, cfg.head_width, cfg.head_depth, v.channels * v.patch_size ** 2)
        init_fan_in(self)

    def sample_prefix(self, batch: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """(b,) prefix lengths drawn uniformly from [min_prefix, patches - 1] (AIM's uniform prefix)."""
        n = self.cfg.vision.num_patches
        return torch.randint(self.cfg.min_prefix, n, (batch,), generator=generator).to(device)

    def forward(self, images: Tensor, prefix: Tensor | None = None) -> AIMOutput:
        """Predict each next patch of `images` (normalised pixels, as the encoder takes them)."""
        v = self.cfg.vision
        n = (images.shape[-2] // v.patch_size) * (images.shape[-1] // v.patch_size)
        if prefix is None:
            prefix = self.sample_prefix(len(images), device=images.device)
        features = self.vision(images, layer=-1, mask=prefix_causal_mask(prefix, n)).features
        predictions = self.head(features)                                   # position i predicts patch i + 1
        targets = patch_targets(images, v.patch_size, eps=self.cfg.norm_eps)
        # Position i is counted when its target patch i + 1 lies outside the prefix, and the last position never is.
        position = repeat(torch.arange(n, device=images.device), 'n -> b n', b=len(images))
        counted = (position + 1 >= prefix[:, None]) & (position + 1 < n)
        errors = F.mse_loss(predictions[:, :-1], targets[:, 1:], reduction="none").mean(-1)   # (b, n - 1)
        errors = F.pad(errors, (0, 1))
        loss = (errors * counted).sum() / counted.sum().clamp(min=1)
        return AIMOutput(loss=loss, predictions=predictions, targets=targets, counted=counted)
