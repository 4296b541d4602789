"""Head views: where one token looks in every layer and head, and each head's attention mapped onto the image.

L - LM layers, H - heads, s - key positions, k - image tokens per image, p - patches (gh * gw)

Works on any forward pass run with `return_attention=True` (or `run_with_cache(...).output`). The maps are on the
*share* scale: a patch's value is the share of the token's whole attention that reaches it through the connector,
so heads and layers compare directly (a head that hardly looks at the image stays dark). `share_of_image` gives the
head's total on each image; renormalising a map by it gives the distribution within the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from mm1lab.probe import image_spans


@dataclass
class HeadView:
    """rows: (L, H, s) attention of the query in every layer and head; image_share: (L, H) share on all images;
    share_of_image: (L, H, images) share on each image of the sample; maps: (L, H, images, gh, gw) share-scale
    patch maps; images: global indices of the sample's images; query_pos: the query's position."""

    rows: Tensor
    image_share: Tensor
    share_of_image: Tensor
    maps: Tensor
    images: list[int]
    query_pos: int

    def within_image(self, image: int = 0) -> Tensor:
        """The maps of one image (index within the sample) renormalised to sum to 1: (L, H, gh, gw)."""
        m = self.maps[:, :, image]
        return m / m.sum((-2, -1), keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def head_view(out, cfg, *, input_ids: Tensor, sample: int = 0, query_pos: int = -1) -> HeadView:
    """Every layer's and head's attention from `query_pos` of `sample`, on image tokens and mapped onto patches.

    out: an MM1Output with `lm_attentions`, `vision` and `connector` (a forward with return_attention=True).
    input_ids: (b, n) the ids of that pass (they say where the images sit).
    """
    if out.lm_attentions is None:
        raise ValueError("head_view needs a forward pass run with return_attention=True")
    attn = torch.stack([a[sample] for a in out.lm_attentions]).float()             # (L, H, n, s)
    n = input_ids.shape[1]
    query = query_pos % n
    past = attn.shape[-1] - n                       # keys also cover cached positions when a cache was used
    rows = attn[:, :, query]                                                          # (L, H, s)
    spans = image_spans(input_ids, cfg)[sample]
    if spans and (out.connector is None or out.vision is None):
        raise ValueError("head_view needs the connector's regions: run the forward with return_attention=True")
    gh, gw = out.vision.grid if out.vision is not None else (0, 0)
    shares, maps = [], []
    for index, positions in spans:
        token_attention = rows[:, :, positions + past]                                # (L, H, k)
        shares.append(token_attention.sum(-1))
        patch = token_attention @ out.connector.regions[index].float()                 # (L, H, p)
        maps.append(rearrange(patch, 'L H (gh gw) -> L H gh gw', gh=gh, gw=gw))
    L, H = rows.shape[:2]
    share = torch.stack(shares, -1) if shares else rows.new_zeros(L, H, 0)
    maps = torch.stack(maps, 2) if maps else rows.new_zeros(L, H, 0, gh, gw)
    return HeadView(rows=rows, image_share=share.sum(-1), share_of_image=share, maps=maps,
                    images=[index for index, _ in spans], query_pos=query)
