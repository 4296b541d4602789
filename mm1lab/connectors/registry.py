"""The connector registry: one name -> one class, no `if` chains in the model.

`mm1lab.config.CONNECTORS` is the table of connector kinds; each kind's file registers its class here with
`@register_connector(name)`, and `mm1lab/connectors/__init__.py` imports every file the table names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import CONNECTORS, ConfigError, ConnectorConfig, check_connector_fits

CONNECTOR_REGISTRY: dict[str, type[nn.Module]] = {}


@dataclass
class ConnectorInfo:
    """What a connector exposes for probing.

    regions: (b, k, n) weight of each input patch in each output token (rows sum to 1).
    extras: connector-specific tensors, e.g. attention-pool weights or D-Abstractor sampling points.
    """

    regions: Tensor
    extras: dict[str, Tensor]


def register_connector(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that adds a connector under `name` (a row of the table `mm1lab.config.CONNECTORS`)."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name not in CONNECTORS:
            raise ConfigError(f"connector {name!r} ({cls.__name__}) has no row in mm1lab.config.CONNECTORS; add "
                              f"`{name!r}: ConnectorKind(module=...)` there so configs accept it")
        CONNECTOR_REGISTRY[name] = cls
        return cls

    return add


def build_connector(cfg: ConnectorConfig, *, d_vision: int, d_lm: int, grid: int) -> nn.Module:
    """Instantiate the connector named by `cfg.kind`."""
    if cfg.kind not in CONNECTOR_REGISTRY:
        raise ConfigError(f"unknown connector {cfg.kind!r}; choose one of {', '.join(sorted(CONNECTOR_REGISTRY))}")
    check_connector_fits(cfg.kind, cfg.num_tokens, grid)
    return CONNECTOR_REGISTRY[cfg.kind](cfg, d_vision=d_vision, d_lm=d_lm, grid=grid)


def pooling_regions(grid: int, out: int, *, batch: int, device=None, dtype=None) -> Tensor:
    """(batch, out*out, grid*grid) weights of adaptive average pooling from a grid x grid map to out x out."""
    eye = torch.eye(grid * grid, device=device, dtype=dtype or torch.float32)
    eye = rearrange(eye, 'n (h w) -> n 1 h w', h=grid)
    pooled = F.adaptive_avg_pool2d(eye, out)                         # each patch's share of each cell
    regions = rearrange(pooled, 'n 1 i j -> (i j) n')
    regions = regions / regions.sum(-1, keepdim=True)
    return regions.expand(batch, -1, -1)
