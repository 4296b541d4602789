"""Reading YAML the way researchers write numbers: one loader for configs, parameters and sweep grids.

PyYAML implements YAML 1.1, where `1e-3` (no dot) and `1E5` are strings; YAML 1.2 and every researcher read
them as floats. `load` uses a SafeLoader whose float rule is YAML 1.2's, so `lr: 1e-3` in a config file, a
`-p LR 1e-3` on the command line and a `--set optim.lr=1e-3` all give the float 0.001.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# YAML 1.2 core schema floats (plus 1.1's `.inf`/`.nan` spellings, which SafeLoader already reads).
_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class Loader(yaml.SafeLoader):
    """SafeLoader (no Python objects, no code) with YAML 1.2's float syntax."""


# Replace SafeLoader's float resolver for this subclass only; integers keep theirs (resolvers are tried in
# order, and `int` is registered before `float` for the digits both could match).
Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse YAML text (safely) with YAML 1.2 floats."""
    return yaml.load(text, Loader=Loader)   # noqa: S506 - Loader is a SafeLoader


def load_file(path: str | Path) -> Any:
    """Parse a YAML file; errors name the file."""
    path = Path(path)
    try:
        return load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def load_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: {}); `what` describes it in the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    data = load_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping `name: value` per line ({what}), got a {type(data).__name__}")
    return data
