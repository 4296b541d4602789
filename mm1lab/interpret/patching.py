"""Activation patching between two inputs: which layers and positions carry the difference in the answer.

L - layers (rows), n - positions, H - heads, b - patched runs in one batch, d - LM width

Run a *clean* input (say, an image with 3 shapes) and a *corrupt* one (the same image with one shape removed) that
differ only in their pixels or tokens, so positions line up. Then rerun the corrupt input once per (layer, position)
with the clean activation written in at that one place, and measure the answer's logit (or a logit difference):

    effect = (patched - corrupt) / (clean - corrupt)      1: this activation alone restores the clean answer

Patched runs start from the corrupt input's LM embeddings (the encoder and connector run once per input) and go
through the LM in batches, each row patching its own (layer, position). Image positions are marked, so the effect
over one image's tokens maps back onto its patches through the connector's regions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from mm1lab.interpret.hooks import HookContext, hooked, run_with_cache
from mm1lab.lm import positions_from_mask

POINTS = {                       # what=... -> the hook names patched, one row each
    "resid": lambda cfg: ["lm.embed"] + [f"lm.{i}.resid" for i in range(cfg.lm.depth)],
    "attn": lambda cfg: [f"lm.{i}.attn" for i in range(cfg.lm.depth)],
    "ffn": lambda cfg: [f"lm.{i}.ffn" for i in range(cfg.lm.depth)],
    "heads": lambda cfg: [f"lm.{i}.heads" for i in range(cfg.lm.depth)],
}


@dataclass
class PatchingResult:
    """effect: (L, n) normalised effect, or (L, H) for what='heads' (each head patched at every position);
    metric: the raw metric of every patched run, same shape; clean / corrupt: the unpatched metrics;
    layers: the hook name of each row; positions: (n,) the patched positions (for 'heads': all of them);
    is_image: (n,) True at image placeholders; what: 'resid', 'attn', 'ffn' or 'heads'; metric_name: in words;
    cache: the clean run (`output` has the connector's regions, for mapping image positions onto patches)."""

    effect: Tensor
    metric: Tensor
    clean: float
    corrupt: float
    layers: list[str]
    positions: Tensor
    is_image: Tensor
    what: str
    metric_name: str
    cache: object = None


def _as_input(sample) -> tuple[Tensor, object]:
    if isinstance(sample, dict):
        ids, images = sample["input_ids"], sample.get("images")
    else:
        ids, images = sample
    ids = torch.as_tensor(ids, dtype=torch.long)
    return (ids[None] if ids.dim() == 1 else ids), images


@torch.no_grad()
def activation_patching(model, clean, corrupt, *, answer: int, wrong: int | None = None, what: str = "resid",
                        positions=None, query_pos: int = -1, batch_size: int = 64) -> PatchingResult:
    """Patch clean activations into the corrupt run at every layer x position (or layer x head) and measure.

    Args:
        clean, corrupt: dicts with `input_ids` (n,) or (1, n) and `images`, or (input_ids, images) tuples; the ids
            must have the same length and the same image placeholders (same prompt, different pictures or words).
        answer, wrong: the metric is logit(answer) - logit(wrong) at `query_pos` (just logit(answer) without wrong).
        what: 'resid' (the residual stream, embeddings first), 'attn' or 'ffn' (a layer's attention or FFN output),
            or 'heads' (one head's output at every position: a layers x heads grid).
        positions: positions to patch (default all); batch_size: patched runs per LM forward.
    """
    if what not in POINTS:
        raise ValueError(f"what={what!r}; choose one of {', '.join(POINTS)}")
    cfg = model.cfg
    (clean_ids, clean_images), (bad_ids, bad_images) = _as_input(clean), _as_input(corrupt)
    if clean_ids.shape != bad_ids.shape or clean_ids.shape[0] != 1:
        raise ValueError(f"clean and corrupt must be one sequence each, of the same length; got "
                         f"{tuple(clean_ids.shape)} and {tuple(bad_ids.shape)}")
    is_image = clean_ids[0] == cfg.image_token_id
    if not torch.equal(is_image, bad_ids[0] == cfg.image_token_id):
        raise ValueError("clean and corrupt place their image tokens differently; patching needs aligned positions")
    names = POINTS[what](cfg)
    n = clean_ids.shape[1]
    query = query_pos % n

    def metric(logits: Tensor) -> Tensor:                     # (b, v) -> (b,)
        logits = logits.float()
        return logits[:, answer] - (logits[:, wrong] if wrong is not None else 0)

    clean_cache = run_with_cache(model, clean_ids, clean_images, record=["lm.embed", *names], return_attention=True)
    bad_cache = run_with_cache(model, bad_ids, bad_images, record=["lm.embed"])
    m_clean = float(metric(clean_cache.output.logits[:, query]))
    m_bad = float(metric(bad_cache.output.logits[:, query]))

    rows = [(r, j) for r in range(len(names))
            for j in (range(cfg.lm.heads) if what == "heads" else _positions(positions, n))]
    embeds = bad_cache["lm.embed"]
    pos_ids = positions_from_mask(None, bad_ids)
    values = torch.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        edits = {name: _patch_rows(clean_cache[name], [j for r, j in chunk], [r == i for r, _ in chunk], what)
                 for i, name in enumerate(names)}
        with hooked(model, edits=edits):
            out = model.lm(embeds.expand(len(chunk), -1, -1), pos_ids.expand(len(chunk), -1), head=False)
        values[start:start + len(chunk)] = metric(model.lm.lm_head(out.hidden[:, query]))
    cols = cfg.lm.heads if what == "heads" else len(_positions(positions, n))
    raw = values.view(len(names), cols)
    span = m_clean - m_bad
    if abs(span) < 1e-6:
        warnings.warn(f"clean and corrupt give the same metric ({m_clean:.4g}); there is no difference to recover, "
                      "so the normalised effect is left at 0 (see .metric for the raw values)", stacklevel=2)
        effect = torch.zeros_like(raw)
    else:
        effect = (raw - m_bad) / span
    name = f"logit[{answer}]" + (f" - logit[{wrong}]" if wrong is not None else "") + f" at position {query}"
    kept = torch.arange(n) if what == "heads" else torch.as_tensor(_positions(positions, n))
    return PatchingResult(effect=effect, metric=raw, clean=m_clean, corrupt=m_bad, layers=names, positions=kept,
                          is_image=is_image[kept] if what != "heads" else is_image, what=what, metric_name=name,
                          cache=clean_cache)


def _positions(positions, n: int) -> list[int]:
    return list(range(n)) if positions is None else [int(p) % n for p in torch.as_tensor(positions).flatten()]


def _patch_rows(source: Tensor, where: list[int], active: list[bool], what: str):
    """An edit for one hook: row r takes the clean `source` at position where[r] (or head where[r]) when active[r]."""
    rows = torch.tensor([i for i, a in enumerate(active) if a], dtype=torch.long)
    at = torch.tensor([w for w, a in zip(where, active) if a], dtype=torch.long)

    def edit(x: Tensor, ctx: HookContext) -> Tensor | None:
        if not len(rows):
            return None
        x = x.clone()
        if what == "heads":                                   # (b, n, h, dh): head at[r] at every position
            x[rows, :, at] = source[0, :, at].transpose(0, 1)
        else:                                                 # (b, n, d): position at[r]
            x[rows, at] = source[0, at]
        return x
    return edit
