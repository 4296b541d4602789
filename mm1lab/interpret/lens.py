"""Logit lens: what the LM's residual stream at each layer would predict, read through the final norm and LM head.

L - layers read (the embeddings, then after each block), b - batch, n - positions read, v - vocabulary

nostalgebraist's logit lens applies the model's own unembedding (final RMSNorm, then `lm_head`) to an intermediate
residual stream. Read after the last block it is exactly the model's logits. Image positions are read the same way:
the connector's tokens at `embed`, then what each layer has made of them, so one sees which words an image token
is closest to as it moves up the LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mm1lab.interpret.hooks import ActivationCache


def lens_names(cfg) -> list[str]:
    """The residual-stream hook names the lens reads: `lm.embed`, then `lm.i.resid` for every layer."""
    return ["lm.embed"] + [f"lm.{i}.resid" for i in range(cfg.lm.depth)]


@dataclass
class LogitLens:
    """logits: (L, b, n, v) float32 at `positions` (n,), one row per name in `layers` ('lm.embed', 'lm.0.resid', ...).
    The last row is the model's own prediction."""

    logits: Tensor
    layers: list[str]
    positions: Tensor

    def probs(self) -> Tensor:
        """Softmax over the vocabulary, (L, b, n, v)."""
        return self.logits.softmax(-1)

    def top(self, k: int = 1) -> tuple[Tensor, Tensor]:
        """The k most likely tokens at every layer and position: (probabilities, ids), each (L, b, n, k)."""
        return self.probs().topk(k, dim=-1)

    def token_prob(self, token: int) -> Tensor:
        """Probability of one token at every layer and position, (L, b, n)."""
        return self.probs()[..., token]

    def rank(self, token: int) -> Tensor:
        """Rank of one token (0: the top prediction) at every layer and position, (L, b, n)."""
        logits = self.logits
        return (logits > logits[..., token:token + 1]).sum(-1)


@torch.no_grad()
def logit_lens(model, cache: ActivationCache, *, positions=None) -> LogitLens:
    """Read every recorded residual stream of `cache` (from `run_with_cache`, recording at least `lens_names`)
    through the model's final norm and LM head, at `positions` (default: all)."""
    names = lens_names(model.cfg)
    missing = [name for name in names if name not in cache]
    if missing:
        raise KeyError(f"logit_lens needs the residual stream at {missing}; record them: "
                       "run_with_cache(model, ..., record=['lm.embed', 'lm.*.resid']) or record='*'")
    n = cache["lm.embed"].shape[1]
    positions = torch.arange(n) if positions is None else torch.as_tensor(positions).flatten() % n
    streams = torch.stack([cache[name][:, positions.to(cache[name].device)] for name in names])   # (L, b, n, d)
    logits = model.lm.lm_head(model.lm.norm(streams)).float()
    return LogitLens(logits=logits, layers=names, positions=positions)


def layer_label(name: str) -> str:
    """'lm.embed' -> 'embed', 'lm.3.resid' -> 'layer 3' (axis labels for plots)."""
    return "embed" if name == "lm.embed" else f"layer {name.split('.')[1]}"
