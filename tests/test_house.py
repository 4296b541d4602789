"""House rules a refactoring must keep: no import circles, no oversized files, old config names still load."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from mm1lab.config import ConfigError, MM1Config

PACKAGE = Path(__file__).resolve().parents[1] / "mm1lab"
MAX_LINES = 400


def module_names() -> dict[str, Path]:
    """mm1lab's modules by dotted name (a package is named by its __init__.py)."""
    names = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the mm1lab modules it imports, lazy imports inside functions included.

    Importing `mm1lab.a.b` also runs `mm1lab/a/__init__.py`, so every package on the way counts as imported too
    (the root package excepted: everything is inside it, and it is fully imported before any submodule runs).
    """
    modules = module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target) if target.startswith("mm1lab") else None
                while found and found != "mm1lab":
                    if found != name and not name.startswith(found + "."):   # a module's own packages are loaded
                        graph[name].add(found)
                    found = found.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_lazy_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_file_over_the_limit():
    long = {str(f.relative_to(PACKAGE.parent)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_old_field_names_still_load_with_a_warning():
    data = MM1Config.preset("tiny").to_dict()
    data["connector"]["hidden"] = data["connector"].pop("width")
    data["lm"]["moe"] = dict(num_experts=4, expert_ffn_dim=96)
    with pytest.warns(FutureWarning, match="'width'"):
        cfg = MM1Config.from_dict(data)
    assert cfg.connector.width == 64 and cfg.lm.moe.ffn_dim == 96


def test_old_and_new_name_together_is_an_error():
    data = MM1Config.preset("tiny").to_dict()
    data["connector"]["hidden"] = 32
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="keep 'width'"):
        warnings.simplefilter("ignore")
        MM1Config.from_dict(data)
