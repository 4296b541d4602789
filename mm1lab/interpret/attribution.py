"""Attribution of one predicted token onto image patches, through the connector, by four methods side by side.

L - LM layers, H - heads, s - positions (keys), k - image tokens per image, p - patches (gh * gw), d - LM width

- `attention`: the query's attention to the image tokens in one layer (mean over heads), as `probe` shows it.
- `rollout`: attention rollout (Abnar & Zuidema, 2020): R = prod_l (A_l + I) / 2 over layers, mean over heads, so
  attention that reaches an image token indirectly, through other positions, counts too.
- `grad_attention`: gradient-weighted attention relevance (Chefer et al., 2021, "Generic Attention-model
  Explainability"; the rule LVLM-Interpret applies to LLaVA): R = I, then R += mean_h (dy/dA * A)^+ @ R per layer.
- `grad_input`: gradient x input on the LM's input embeddings at the image positions, summed over features.

Each gives a score per image token; scores map onto patches through the connector's `regions`, as attention does in
`mm1lab.probe`. Maps use the scores' magnitude (gradient x input is signed), normalised to sum to 1 within each
image, so the methods compare by where they point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from mm1lab.interpret.hooks import run_with_cache
from mm1lab.lm import positions_from_mask
from mm1lab.probe import image_spans

METHODS = ("attention", "rollout", "grad_attention", "grad_input")


@dataclass
class Attribution:
    """One method's relevance for one prediction: scores (s,) over every position of the sample (signed for
    grad_input), token_scores per image (k,), patch_maps per image (gh, gw) (magnitudes, sum to 1), images:
    global image indices, and target / query_pos: the token explained and the position that predicts it."""

    method: str
    scores: Tensor
    token_scores: list[Tensor]
    patch_maps: list[Tensor]
    images: list[int]
    target: int
    query_pos: int


def attribute(model, input_ids: Tensor, images=None, *, target: int, query_pos: int = -1, layer: int = -1,
              methods=METHODS) -> dict[str, Attribution]:
    """Relevance of every image token (and patch) for predicting `target` at `query_pos`, by each of `methods`.

    input_ids: (1, n) one sequence (prompt, or prompt + generated tokens); images as for the model.
    layer: the LM layer `attention` reads (default the last).
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    input_ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if input_ids.shape[0] != 1:
        raise ValueError(f"attribute explains one sequence; got a batch of {input_ids.shape[0]}")
    cfg, n = model.cfg, input_ids.shape[1]
    query = query_pos % n
    with torch.no_grad():                               # the encoder and connector once, without a graph
        cache = run_with_cache(model, input_ids, images, record=["lm.embed"], return_attention=True)
    embeds = cache["lm.embed"].detach().requires_grad_(True)
    with torch.enable_grad():
        lm_out = model.lm(embeds, positions_from_mask(None, input_ids), return_attention=True, head=False)
        logit = model.lm.lm_head(lm_out.hidden[0, query])[target]
        needs_grad = {"grad_attention", "grad_input"} & set(methods)
        grads = torch.autograd.grad(logit, [embeds, *lm_out.attentions]) if needs_grad else None
    attns = [a.detach()[0].float() for a in lm_out.attentions]                       # L x (H, s, s)
    scores = {}
    if "attention" in methods:
        scores["attention"] = attns[layer].mean(0)[query]
    if "rollout" in methods:
        eye = torch.eye(n)
        rollout = eye
        for a in attns:
            step = (a.mean(0) + eye) / 2
            rollout = (step / step.sum(-1, keepdim=True)) @ rollout
        scores["rollout"] = rollout[query]
    if "grad_attention" in methods:
        relevance = torch.eye(n)
        for a, g in zip(attns, grads[1:]):
            cam = (g[0].float() * a).clamp(min=0).mean(0)
            relevance = relevance + cam @ relevance
        scores["grad_attention"] = relevance[query]
    if "grad_input" in methods:
        scores["grad_input"] = (grads[0][0] * embeds.detach()[0]).sum(-1).float()
    return {method: _through_connector(method, row, cache.output, input_ids, cfg, target, query)
            for method, row in scores.items()}


def _through_connector(method, row: Tensor, out, input_ids, cfg, target, query) -> Attribution:
    spans = image_spans(input_ids, cfg)[0]
    gh, gw = out.vision.grid if out.vision is not None else (0, 0)
    tokens, maps = [], []
    for index, positions in spans:
        score = row[positions]
        patch = score.abs() @ out.connector.regions[index].float()
        patch = patch / patch.sum().clamp(min=1e-12)
        tokens.append(score)
        maps.append(rearrange(patch, '(gh gw) -> gh gw', gh=gh, gw=gw))
    return Attribution(method=method, scores=row, token_scores=tokens, patch_maps=maps,
                       images=[index for index, _ in spans], target=target, query_pos=query)
