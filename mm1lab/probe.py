"""Probing a model's outputs: where a text token looks in each image, and how MoE routers spread the load.

b - batch, n - sequence (query positions), s - key positions, h - LM heads, N - images in the batch,
k - image tokens per image, p - image patches (gh * gw), t - routed tokens (b * n), e - experts

Text-to-image attention lives on the k image tokens the connector made. To put it back on the picture, each
token's attention is spread over the patches it read, using the connector's `regions` (k, p) (rows sum to 1):

    patch_map = token_attention @ regions

For avg-pool and the C-Abstractor a region is the token's pooled cell; for attention pooling it is the pooling
attention (mean over heads); for the D-Abstractor it is the bilinear footprint of its sampling points; for the
MLP connector it is the identity (one token per patch). All functions here are plain tensors in, tensors out,
so notebooks, widgets and tests share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from mm1lab.config import CONNECTORS
from mm1lab.model import MM1Output


def image_spans(input_ids: Tensor, cfg) -> list[list[tuple[int, Tensor]]]:
    """Per sample, the images it holds as (global image index, placeholder positions (k,)), in reading order.

    Images are numbered across the batch the way the model scatters them: sample 0 first, left to right.
    """
    k, index, spans = cfg.image_tokens, 0, []
    for i, row in enumerate(input_ids):
        positions = (row == cfg.image_token_id).nonzero().flatten()
        if len(positions) % k:
            raise ValueError(f"sample {i}: {len(positions)} image placeholders (id {cfg.image_token_id}) is not a "
                             f"multiple of the {k} tokens per image; were the ids built for another config?")
        runs = rearrange(positions, '(N k) -> N k', k=k) if len(positions) else positions.new_empty(0, k)
        spans.append([(index + j, run) for j, run in enumerate(runs)])
        index += len(runs)
    return spans


def _check_index(name: str, value: int, size: int, what: str) -> None:
    if not -size <= value < size:
        raise IndexError(f"{name}={value} is out of range: the model has {size} {what} (0 .. {size - 1})")


@torch.no_grad()
def image_attention(out: MM1Output, cfg, *, input_ids: Tensor, sample: int, query_pos: int, layer: int,
                    head: int | None = None, normalise: bool = True) -> list[dict]:
    """Attention from one text position to each image of one sample, on tokens and mapped onto patches.

    Args:
        out: a forward pass with `return_attention=True` (for `lm_attentions`, `vision` and `connector`).
        cfg: the model's MM1Config.
        input_ids: (b, n) the ids of that forward pass (they say where the images sit).
        sample, query_pos, layer: which row of which sample in which LM layer.
        head: an LM head, or None for the mean over heads.
        normalise: scale each patch map to sum to 1 (a map with no attention at all stays zero).

    Returns one dict per image of the sample, in reading order, with
        image: global image index (into the batch's images and `out.connector.regions`);
        positions: (k,) sequence positions of its tokens; token_attention: (k,) raw attention to them;
        mass: their total (the share of this query's attention that went to the image);
        patch_map: (gh, gw) = token_attention @ regions (normalised); mapping: how the regions were made;
        for the D-Abstractor also points (k*heads*points, 2) in [0, 1] (x, y) and point_weights (same length),
        each point's share of the token attention.
    """
    if out.lm_attentions is None or out.connector is None or out.vision is None:
        raise ValueError("image_attention needs a forward pass run with return_attention=True and images")
    _check_index("layer", layer, len(out.lm_attentions), "LM layers")
    attn = out.lm_attentions[layer]
    _check_index("sample", sample, attn.shape[0], "samples in this batch")
    _check_index("query_pos", query_pos, attn.shape[2], "query positions")
    if head is not None:
        _check_index("head", head, attn.shape[1], "attention heads")
    rows = attn[sample, :, query_pos].float()                                   # (h, s)
    row = rows.mean(0) if head is None else rows[head]
    past = attn.shape[-1] - input_ids.shape[1]          # keys also cover cached positions when a cache was used
    gh, gw = out.vision.grid
    kind = cfg.connector.kind
    result = []
    for index, positions in image_spans(input_ids, cfg)[sample]:
        token_attention = row[positions + past]                                 # (k,)
        regions = out.connector.regions[index].float()                          # (k, p)
        patch = token_attention @ regions                                       # (p,)
        mass = token_attention.sum()
        if normalise:
            patch = patch / patch.sum().clamp(min=1e-12)
        entry = dict(image=index, positions=positions, token_attention=token_attention, mass=float(mass),
                     patch_map=rearrange(patch, '(gh gw) -> gh gw', gh=gh, gw=gw),
                     mapping=CONNECTORS[kind].regions)
        extras = out.connector.extras
        if "sampling_points" in extras:
            points = extras["sampling_points"][index].float()                   # (k, h, p, 2)
            weights = extras["sampling_weights"][index].float()                 # (k, h, p)
            # A token's attention is shared by its heads equally, then by each head's point weights.
            shares = weights * rearrange(token_attention, 'k -> k 1 1') / weights.shape[1]
            entry["points"] = rearrange(points, 'k h p xy -> (k h p) xy')
            entry["point_weights"] = rearrange(shares, 'k h p -> (k h p)')
        result.append(entry)
    return result


@dataclass
class GenerationProbe:
    """One forward pass over prompt + generated tokens, with attention, and where each new token came from.

    input_ids: (b, n + t) prompt then new tokens; prompt_len: n; new_tokens: (b, t);
    query_positions: (b, t) the position whose output predicted each new token (n - 1 + j for token j: that
        row of the attention is what the model looked at when it chose the token);
    token_positions: (b, t) where each new token itself sits (n + j);
    valid: (b, t) False for the padding generate() emits after a stop token.
    """

    out: MM1Output
    input_ids: Tensor
    attention_mask: Tensor
    prompt_len: int
    new_tokens: Tensor
    query_positions: Tensor
    token_positions: Tensor
    valid: Tensor


@torch.no_grad()
def attention_for_generation(model, input_ids: Tensor, images, new_tokens: Tensor, *,
                             attention_mask: Tensor | None = None) -> GenerationProbe:
    """Re-run prompt + `new_tokens` (from `model.generate`) once with return_attention=True.

    One full forward gives every generated token's attention rows at once (the KV-cached generation never
    materialises them); causal masking makes them the rows generation used.
    """
    cfg = model.cfg
    b, n = input_ids.shape
    if new_tokens.dim() != 2 or new_tokens.shape[0] != b:
        raise ValueError(f"new_tokens must be (batch={b}, t) as returned by model.generate, "
                         f"got {tuple(new_tokens.shape)}")
    t = new_tokens.shape[1]
    ids = torch.cat([input_ids, new_tokens.to(input_ids)], dim=1)
    prompt_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    mask = torch.cat([prompt_mask, torch.ones_like(new_tokens, dtype=torch.bool)], dim=1)
    was_training = model.training
    model.eval()
    try:
        out = model(ids, images, attention_mask=mask, return_attention=True)
    finally:
        model.train(was_training)
    # Everything after the first stop token is padding that generate() kept feeding.
    stops = torch.isin(new_tokens, torch.tensor([cfg.eos_token_id], device=new_tokens.device))
    after_stop = (stops.long().cumsum(1) - stops.long()) > 0
    valid = ~after_stop & (new_tokens != cfg.pad_token_id)
    steps = torch.arange(t, device=ids.device).expand(b, t)
    return GenerationProbe(out=out, input_ids=ids, attention_mask=mask, prompt_len=n, new_tokens=new_tokens,
                           query_positions=n - 1 + steps, token_positions=n + steps, valid=valid)


@dataclass
class RouterLoad:
    """Share of routed token slots per expert, per MoE layer, and per-layer summaries.

    load: (layers, e), rows sum to 1; layers: LM layer index of each row; uniform: 1 / e (perfect balance);
    max_share / min_share: (layers,); cv: coefficient of variation of the shares (0 when balanced);
    entropy: (layers,) normalised entropy of the shares (1 when balanced); dead: (layers,) experts given no token;
    counts: (layers, e) routed slots (tokens x top-k).
    """

    load: Tensor
    layers: list[int]
    uniform: float
    max_share: Tensor
    min_share: Tensor
    cv: Tensor
    entropy: Tensor
    dead: Tensor
    counts: Tensor


@torch.no_grad()
def router_load(out: MM1Output, cfg=None, *, tokens: Tensor | None = None) -> RouterLoad:
    """Token share per expert in every MoE layer of a forward pass.

    Args:
        out: any forward pass of an MoE model (routers are always returned).
        cfg: the MM1Config, to label rows with their LM layer index (else 0, 1, ... over MoE layers).
        tokens: optional (b, n) bool mask of the tokens to count (e.g. image placeholders only); default all.
    """
    if not out.routers:
        raise ValueError("router_load: this forward pass has no routers; is the model an MoE "
                         "(cfg.lm.moe set)? Dense models have nothing to route")
    counts = []
    for r in out.routers:
        if tokens is None:
            counts.append(r.counts.float())
        else:
            chosen = r.experts[rearrange(tokens.bool(), 'b n -> (b n)')]                 # (t', top_k)
            counts.append(torch.bincount(chosen.flatten(), minlength=r.probs.shape[-1]).float())
    counts = torch.stack(counts)                                                         # (layers, e)
    load = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    e = load.shape[-1]
    entropy = -(load * load.clamp(min=1e-12).log()).sum(-1) / torch.log(torch.tensor(float(e))).clamp(min=1e-12)
    if cfg is not None:
        layers = [i for i in range(cfg.lm.depth) if cfg.lm.is_moe_layer(i)]
    else:
        layers = list(range(len(out.routers)))
    return RouterLoad(load=load, layers=layers, uniform=1.0 / e, max_share=load.amax(-1), min_share=load.amin(-1),
                      cv=load.std(-1, unbiased=False) / load.mean(-1), entropy=entropy,
                      dead=(counts == 0).sum(-1), counts=counts)
