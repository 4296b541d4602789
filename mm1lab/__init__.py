"""mm1lab: a readable, notebook-driven workbench for MM1-style multimodal LLMs."""

from mm1lab.config import (
    PRESETS,
    ConfigError,
    ConnectorConfig,
    LMConfig,
    MM1Config,
    MoEConfig,
    VisionConfig,
)
from mm1lab.load import load_model
from mm1lab.model import MM1Model, MM1Output

__all__ = [
    "ConfigError", "ConnectorConfig", "LMConfig", "MM1Config", "MM1Model", "MM1Output", "MoEConfig",
    "PRESETS", "VisionConfig", "load_model",
]
__version__ = "0.1.0"
