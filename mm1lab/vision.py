"""ViT image encoder (CLIP-style), the first of MM1's three parts.

b - batch, c - channels, n - patches (+ CLS), h - heads, d - features, p1 p2 - pixels in a patch,
gh gw - patch grid

Pre-norm transformer blocks over patch tokens with a learned absolute position embedding that interpolates
(bicubic) to any resolution that is a multiple of the patch size, so an encoder built at 224 px runs at 336.
Parameter names follow CLIP so pretrained weights map onto them with a plain table (see `mm1lab.pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import pack, rearrange, repeat, unpack
from torch import Tensor, nn

from mm1lab.config import ConfigError, VisionConfig
from mm1lab.nn import MLP, attention


class Attention(nn.Module):
    """Multi-head self-attention through SDPA; `return_attention` computes the probabilities explicitly.

    mask: optional (n, n) or (b, 1, n, n) bool, True where query i may attend to key j (AIM's prefix-causal mask);
    causal: the plain causal mask (the CLIP text tower).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, *, mask: Tensor | None = None, causal: bool = False,
                return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = (rearrange(proj(x), 'b n (h d) -> b h n d', h=self.heads) for proj in (self.q, self.k, self.v))
        if return_attention:
            scores = torch.einsum('bhid,bhjd->bhij', q, k) * q.shape[-1] ** -0.5
            if causal:
                n = x.shape[1]
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            y = attn @ v
        else:
            attn, y = None, attention(q, k, v, mask=mask, causal=causal)
        return self.out(rearrange(y, 'b h n d -> b n (h d)')), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.ffn_dim, act=cfg.act)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, causal: bool = False,
                return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), mask=mask, causal=causal, return_attention=return_attention)
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


@dataclass
class VisionOutput:
    """features: (b, gh*gw, d) patch features from the chosen layer (CLS dropped); grid: (gh, gw);
    attentions: per block (b, h, n, n) when requested (n includes CLS first when the model has one);
    cls: (b, d) the CLS token after the final norm (the image embedding CLIP projects), at the last layer only."""

    features: Tensor
    grid: tuple[int, int]
    attentions: list[Tensor] | None = None
    cls: Tensor | None = None


class VisionEncoder(nn.Module):
    """ViT: patchify -> (+CLS) -> + position embedding -> [ln_pre] -> blocks -> patch-feature grid."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.channels * cfg.patch_size ** 2
        # A linear layer on flattened patches is the patch conv, written as a reshape a reader can follow.
        self.patch_embed = nn.Linear(patch_dim, cfg.width, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(cfg.width) * 0.02) if cfg.cls_token else None
        n_pos = cfg.num_patches + int(cfg.cls_token)
        self.pos_embed = nn.Parameter(torch.randn(n_pos, cfg.width) * 0.02)
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_post = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.post_norm else nn.Identity()

    def position_embedding(self, gh: int, gw: int) -> Tensor:
        """Position embeddings for a gh x gw grid; bicubic interpolation of the learned grid when it differs."""
        g = self.cfg.grid_size
        pos = self.pos_embed
        cls_pos, patch_pos = (pos[:1], pos[1:]) if self.cls_token is not None else (pos[:0], pos)
        if (gh, gw) != (g, g):
            grid = rearrange(patch_pos, '(h w) d -> 1 d h w', h=g)
            grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
            patch_pos = rearrange(grid, '1 d h w -> (h w) d').to(pos.dtype)
        return torch.cat([cls_pos, patch_pos])

    def forward(self, images: Tensor, *, layer: int | None = None, mask: Tensor | None = None,
                return_attention: bool = False) -> VisionOutput:
        """Encode (b, c, H, W) images; `layer` (negative, from the last block) overrides cfg.feature_layer.

        mask: an attention mask over the tokens (see `Attention`); AIM pre-trains the trunk prefix-causally.
        """
        self._check_images(images)
        cfg, layer = self.cfg, self.cfg.feature_layer if layer is None else layer
        gh, gw = images.shape[-2] // cfg.patch_size, images.shape[-1] // cfg.patch_size
        x = rearrange(images, 'b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)', p1=cfg.patch_size, p2=cfg.patch_size)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            cls = repeat(self.cls_token, 'd -> b 1 d', b=x.shape[0])
            x, packed = pack([cls, x], 'b * d')
        x = self.norm_pre(x + self.position_embedding(gh, gw))
        attentions = [] if return_attention else None
        stop = cfg.depth + layer + 1                      # run only the blocks the chosen layer needs
        for block in self.blocks[:stop]:
            x, attn = block(x, mask=mask, return_attention=return_attention)
            if attentions is not None:
                attentions.append(attn)
        if layer == -1:
            x = self.norm_post(x)
        cls = None
        if self.cls_token is not None:
            cls, x = unpack(x, packed, 'b * d')
            cls = rearrange(cls, 'b 1 d -> b d') if layer == -1 else None
        return VisionOutput(features=x, grid=(gh, gw), attentions=attentions, cls=cls)

    def _check_images(self, images: Tensor) -> None:
        cfg = self.cfg
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != cfg.channels:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (batch, {cfg.channels}, height, width) tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalised pixels), got {images.dtype}; "
                             "convert with mm1lab.data preprocessing or `images.float()`")
        h, w = images.shape[-2:]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ConfigError(f"image size {h}x{w} is not a multiple of the patch size {cfg.patch_size}; "
                              f"resize to e.g. {cfg.image_size}x{cfg.image_size}")
