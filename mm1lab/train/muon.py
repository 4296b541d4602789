"""`optim.name: muon`: Muon (Jordan et al., 2024) on the hidden weight matrices, AdamW on everything else.

Muon orthogonalises each matrix's momentum (a few Newton-Schulz iterations) before the update, so every direction
of a matrix moves at the same rate, whatever its gradient's size. On ShapeWorld an object's shape explains 1-4% of
the image features' variance (docs/stage0.md). AdamW, which scales per weight and not per direction, learns it
slowly. With Muon the demo's SFT learns it much sooner (docs/stage0.md has the figures).

The updates are torch's own `torch.optim.Muon` and `torch.optim.AdamW`. Muon's step is matched to AdamW's update
size (`adjust_lr_fn="match_rms_adamw"`, Moonlight, Liu et al. 2025), so one LR, schedule and weight decay serve
both. We wrap them as one `Optimizer`, not two, because the trainer's checkpoints, exact resume, LR schedule and
the DDP state-dict helpers all expect one optimizer. Its param groups are the inner optimizers' groups (the same
dicts), and so is its state.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

MUON_SKIP = ("embed", "lm_head")    # embeddings and the LM head stay on AdamW, as in Muon's recipe


def is_hidden_matrix(name: str, param: nn.Parameter, parts: tuple[str, ...], conv: bool = False) -> bool:
    """A 2-D weight inside one of `parts` that is not an embedding or the LM head: what Muon updates. With `conv`,
    conv kernels (out, in, kh, kw) too, each as its (out, in * kh * kw) matrix, as Muon's CIFAR-10 recipe does."""
    shaped = param.ndim == 2 or (conv and param.ndim == 4)
    return shaped and name.split(".", 1)[0] in parts and not any(k in name for k in MUON_SKIP)


def split_for_muon(model: nn.Module, groups: list[dict], parts: tuple[str, ...], conv: bool = False) -> list[dict]:
    """`param_groups`' AdamW groups with every hidden matrix of `parts` (and, with `conv`, every conv kernel) moved
    into a Muon group beside its own group (same LR, scale and weight decay; named "<part>.muon")."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in groups:
        muon, rest = [], []
        for p in group["params"]:
            (muon if is_hidden_matrix(names[id(p)], p, parts, conv) else rest).append(p)
        settings = {k: v for k, v in group.items() if k != "params"}
        if rest:
            out.append(dict(settings, params=rest, use_muon=False))
        if muon:
            out.append(dict(settings, params=muon, use_muon=True, name=group["name"].split(".")[0] + ".muon"))
    return out


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: groups with `use_muon` step with torch's Muon, the others with torch's AdamW."""

    def __init__(self, groups: list[dict], *, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 fused: bool | None = None):
        super().__init__(groups, dict(lr=1e-3, weight_decay=0.0, use_muon=False))
        adamw = [g for g in self.param_groups if not g["use_muon"]]
        muon = [g for g in self.param_groups if g["use_muon"]]
        self._inner = []
        if adamw:
            self._inner.append(torch.optim.AdamW(adamw, betas=betas, eps=eps, fused=fused))
        if muon:
            with as_matrices(p for g in muon for p in g["params"]):
                self._inner.append(torch.optim.Muon(muon, momentum=momentum, adjust_lr_fn="match_rms_adamw"))
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (loading a state dict replaces both)."""
        for inner in self._inner:
            muon = isinstance(inner, torch.optim.Muon)
            inner.param_groups = [g for g in self.param_groups if g["use_muon"] == muon]
            inner.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner:
            if isinstance(inner, torch.optim.Muon):
                with as_matrices(p for g in inner.param_groups for p in g["params"]):
                    inner.step()
            else:
                inner.step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


@contextmanager
def as_matrices(params):
    """Show every conv kernel among `params` (and its gradient) as its (out, in * kh * kw) matrix while torch's Muon,
    which takes only 2-D parameters, builds or steps; then give each its shape back. The kernel's momentum buffer
    lives in that matrix shape. We reshape rather than write our own Newton-Schulz step, so that the update stays
    torch's."""
    kernels = [(p, p.shape) for p in params if p.ndim > 2]
    for p, _ in kernels:
        p.data = p.data.flatten(1)
        if p.grad is not None:
            p.grad = p.grad.flatten(1)
    try:
        yield
    finally:
        for p, shape in kernels:
            p.data = p.data.view(shape)
            if p.grad is not None:
                p.grad = p.grad.view(shape)
