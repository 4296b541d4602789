"""Apply a declared `KeyMap` (see `maps.py`): checkpoint -> our module, and our module -> checkpoint.

Loading is strict: every parameter of our module must come from the checkpoint and every checkpoint tensor
must land somewhere (or be declared `ignored`); shapes must agree after the transform. All problems are
collected and reported together, so one error message shows everything that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import Tensor, nn

from mm1lab.pretrained.maps import TRANSFORMS, KeyMap
from mm1lab.safetensors_io import CheckpointError, SafetensorsReader

_SHOWN = 20   # names listed per problem kind; the count says how many more there are


@dataclass(frozen=True)
class Entry:
    """One table row with the layer index filled in."""

    ours: str
    theirs: str
    transform: str | None


def expand(keymap: KeyMap, depth: int, prefix: str = "") -> list[Entry]:
    """Table rows for a model with `depth` blocks (rows with `{i}` repeat once per block), checkpoint names
    under `prefix`."""
    entries = []
    for ours, theirs in keymap.keys.items():
        transform = keymap.transforms.get(ours)
        for i in range(depth) if "{i}" in ours else (0,):
            entries.append(Entry(ours.format(i=i), prefix + theirs.format(i=i), transform))
    return entries


def find_prefix(reader, keymap: KeyMap) -> str:
    """The first of the table's `prefixes` under which the checkpoint holds any table key."""
    names = [theirs.format(i=0) for theirs in keymap.keys.values()]
    for prefix in keymap.prefixes:
        if any(prefix + name in reader for name in names):
            return prefix
    return keymap.prefixes[0]


def _listing(title: str, why: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}), {why}:\n    " + "\n    ".join(items[:_SHOWN]) + more


def load_mapped(module: nn.Module, reader: SafetensorsReader | dict[str, Tensor], keymap: KeyMap, *, depth: int,
                skip: tuple[str, ...] = (), ignore: tuple[str, ...] = (), source: str = "checkpoint") -> None:
    """Copy checkpoint tensors into `module` through `keymap`; raise CheckpointError listing every problem.

    skip: our parameter names not loaded (a tied LM head shares the embedding). ignore: extra checkpoint key
    patterns to accept unused, on top of the table's own `ignored`.
    """
    get = reader.get if isinstance(reader, SafetensorsReader) else reader.__getitem__
    target = module.state_dict()
    entries = [e for e in expand(keymap, depth, find_prefix(reader, keymap)) if e.ours in target and e.ours not in skip]
    unmapped = sorted(set(target) - {e.ours for e in entries} - set(skip))
    missing, mismatched, used = [], [], set()
    with torch.no_grad():
        for e in entries:
            if e.theirs not in reader:
                missing.append(f"{e.theirs}  (for {e.ours})")
                continue
            used.add(e.theirs)
            raw = get(e.theirs)
            tensor = TRANSFORMS[e.transform].load(raw) if e.transform else raw
            if tensor.shape != target[e.ours].shape:
                mismatched.append(f"{e.theirs} {tuple(raw.shape)} -> {e.ours}: expected {tuple(target[e.ours].shape)}"
                                  f"{'' if not e.transform else f', got {tuple(tensor.shape)} after {e.transform}'}")
                continue
            target[e.ours].copy_(tensor)
    patterns = keymap.ignored + ignore
    unexpected = sorted(k for k in reader.keys() if k not in used and not any(fnmatch(k, p) for p in patterns))
    if missing or unexpected or mismatched or unmapped:
        parts = [f"{source}: cannot load into mm1lab's {type(module).__name__} with the '{keymap.name}' table:"]
        if mismatched:
            parts.append(_listing("shape mismatches", "the checkpoint and the config disagree", mismatched))
        if missing:
            parts.append(_listing("missing keys", "in the table but not in the checkpoint", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", "in the checkpoint but used nowhere", unexpected))
        if unmapped:
            parts.append(_listing("unmapped parameters", f"no row in the '{keymap.name}' table", unmapped))
        raise CheckpointError("\n".join(parts))


def export_mapped(module: nn.Module, keymap: KeyMap, *, depth: int, patch_size: int = 0,
                  skip: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The inverse of `load_mapped`: our module's weights under the checkpoint's names and shapes.

    Slices of a fused tensor (q, k, v) are concatenated back in order; names take the table's first prefix.
    """
    state = module.state_dict()
    entries = [e for e in expand(keymap, depth, keymap.prefixes[0]) if e.ours in state and e.ours not in skip]
    unmapped = sorted(set(state) - {e.ours for e in entries} - set(skip))
    if unmapped:
        raise CheckpointError(f"parameters with no row in the '{keymap.name}' table: {unmapped}")
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[int, Tensor]] = {}
    for e in entries:
        transform = TRANSFORMS[e.transform] if e.transform else None
        tensor = state[e.ours].detach()
        if transform is not None and transform.parts > 1:
            fused.setdefault(e.theirs, {})[transform.part] = tensor
        else:
            out[e.theirs] = (transform.export(tensor, patch_size) if transform else tensor).contiguous()
    for theirs, parts in fused.items():
        out[theirs] = torch.cat([parts[j] for j in sorted(parts)])
    return out
