"""Parameter counts per part, computed on the meta device (shapes only, no memory)."""

from __future__ import annotations

import torch

from mm1lab.config import PRESETS, MM1Config
from mm1lab.nn import count_parameters


def parameter_table(cfg: MM1Config) -> dict[str, int | str]:
    """Parameters of encoder, connector and LM, their total, and the parameters active per token (MoE:
    only top-k of the experts in each MoE layer run for a token)."""
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        model = MM1Model(cfg)
    vision, connector, lm = (count_parameters(getattr(model, part)) for part in ("vision", "connector", "lm"))
    total = vision + connector + lm
    inactive = 0
    moe = cfg.lm.moe
    if moe is not None:
        for layer in model.lm.layers:
            experts = getattr(layer.ffn, "experts", None)
            if experts is not None:
                inactive += (moe.num_experts - moe.top_k) * count_parameters(experts[0])
    return dict(name=cfg.name, params_vision=vision, params_connector=connector, params_lm=lm,
                params_total=total, params_active=total - inactive)


def preset_tables(names: list[str] | None = None) -> list[dict[str, int | str]]:
    """`parameter_table` for each named preset (all presets by default)."""
    return [parameter_table(MM1Config.preset(name)) for name in (names or list(PRESETS))]


def human(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def format_table(rows: list[dict[str, int | str]]) -> str:
    """A plain-text table of `preset_tables` rows."""
    cols = ("params_vision", "params_connector", "params_lm", "params_total", "params_active")
    heads = ("preset", "encoder", "connector", "LM", "total", "active/token")
    lines = [f"{heads[0]:<14}" + "".join(f"{h:>13}" for h in heads[1:])]
    for row in rows:
        lines.append(f"{row['name']:<14}" + "".join(f"{human(row[c]):>13}" for c in cols))
    return "\n".join(lines)
