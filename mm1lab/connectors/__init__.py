"""Vision-language connectors, chosen by name.

Every connector maps patch features (b, n, d_vision) -> (b, k, d_lm), built as
`build_connector(cfg, d_vision=..., d_lm=..., grid=...)`, where `grid` is the patch grid side (n = grid**2).
`forward(x, return_info=True)` also returns `ConnectorInfo.regions`: for each output token, its weights
over the input patches (b, k, n) -- what the attention explorer uses to map attention back onto the image.
"""

from __future__ import annotations

# Importing the modules registers them.
from mm1lab.connectors import attnpool, avgpool, c_abstractor, d_abstractor, mlp, pixel_shuffle  # noqa: E402,F401,I001  # noqa: E402,F401,I001
from mm1lab.connectors.registry import CONNECTOR_REGISTRY, ConnectorInfo, build_connector, register_connector

__all__ = ["CONNECTOR_REGISTRY", "ConnectorInfo", "build_connector", "register_connector"]
