"""Vision-language connectors, chosen by name.

Every connector maps patch features (b, n, d_vision) -> (b, k, d_lm), built as
`build_connector(cfg, d_vision=..., d_lm=..., grid=...)`, where `grid` is the patch grid side (n = grid**2).
`forward(x, return_attention=True)` also returns `ConnectorInfo.regions`: for each output token, its weights
over the input patches (b, k, n) -- what the attention explorer uses to map attention back onto the image.
"""

from __future__ import annotations

from importlib import import_module

from mm1lab.config import CONNECTORS
from mm1lab.connectors.registry import CONNECTOR_REGISTRY, ConnectorInfo, build_connector, register_connector

# Importing each file that the connector table names registers its class.
for _kind in CONNECTORS.values():
    import_module(f"mm1lab.connectors.{_kind.module}")

__all__ = ["CONNECTOR_REGISTRY", "ConnectorInfo", "build_connector", "register_connector"]
