"""MM1's learning-rate rule, the warmup + cosine schedule, and the AdamW parameter groups.

The rule (fitted on 9M..1.2B models): peak LR = exp(-0.4214 ln N - 0.5535), weight decay = 0.1 x peak LR.
The schedule: linear warmup from 0 to the peak, then cosine decay to `min_ratio` (MM1: 10%) of the peak.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mm1lab.config import PARTS


def mm1_peak_lr(num_params: int) -> float:
    """MM1's peak learning rate for a model of `num_params` parameters (~1.5e-3 at 1.4M, ~6e-5 at 3B)."""
    return math.exp(-0.4214 * math.log(num_params) - 0.5535)


def mm1_weight_decay(peak_lr: float) -> float:
    """MM1's decoupled weight decay: 0.1 x the peak learning rate."""
    return 0.1 * peak_lr


def default_warmup(steps: int) -> int:
    """MM1 warms up for 2000 of 200k steps; short runs warm up for 5% of their steps instead."""
    return max(1, min(2000, steps // 20))


class WarmupCosine:
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> `min_ratio` at `total` steps.

    Drives an optimizer whose param groups carry `peak_lr`; `step()` after each optimizer step.
    State is the step count, so a resumed run continues on the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup: int, total: int, min_ratio: float = 0.1):
        if warmup < 0 or total <= 0:
            raise ValueError(f"warmup ({warmup}) must be >= 0 and total ({total}) > 0 steps")
        self.optimizer, self.warmup, self.total, self.min_ratio = optimizer, warmup, total, min_ratio
        self.last_step = 0
        self._apply()

    def factor(self, step: int) -> float:
        """The multiplier of the peak LR at `step` (0-based: the LR used for the step-th update)."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)   # never exactly 0, so step 0 already learns a little
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * f

    def step(self) -> None:
        """Advance one step and set the new LR on every param group."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, int | float]:
        return dict(last_step=self.last_step, warmup=self.warmup, total=self.total, min_ratio=self.min_ratio)

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def part_of(name: str, parts: tuple[str, ...]) -> str:
    """The part a parameter belongs to: its name's first component, or "head" for what sits outside the parts."""
    first = name.split(".", 1)[0]
    return first if first in parts else "head"


def param_groups(model: nn.Module, *, peak_lr: float, weight_decay: float, lr_scale: dict[str, float],
                 parts: tuple[str, ...] = PARTS) -> list[dict]:
    """AdamW groups per part (MM1: vision, connector, lm) x (decayed, not decayed), trainable parameters only.

    A parameter's part is its name's first component, or "head" when that is not one of `parts` (a stage-0
    model's projections and temperature). Matrices and conv kernels decay; biases, norm gains, position and class
    embeddings do not (the usual practice: decaying them only pulls scales towards zero). Parts with lr_scale 0
    are left out.
    """
    by_part: dict[str, list[tuple[str, nn.Parameter]]] = {part: [] for part in parts}
    for name, p in model.named_parameters():
        by_part.setdefault(part_of(name, parts), []).append((name, p))
    groups = []
    for part, named in by_part.items():
        scale = lr_scale.get(part, 1.0)
        decay, no_decay = [], []
        for name, p in named:
            if not p.requires_grad or scale == 0:
                continue
            plain = p.ndim < 2 or "pos" in name or "cls" in name
            (no_decay if plain else decay).append(p)
        for params, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if params:
                groups.append(dict(params=params, weight_decay=wd, peak_lr=peak_lr * scale, lr=peak_lr * scale,
                                   name=f"{part}.{kind}"))
    if not groups:
        raise ValueError("no trainable parameters: every part is frozen or has lr_scale 0")
    return groups
