"""Read and write safetensors checkpoints: one file, or a folder sharded with a `*.safetensors.index.json`.

Only safetensors is read, through `safe_open`, so tensors come one at a time from memory-mapped files and
nothing is ever unpickled (a `.bin`/`.pt` checkpoint could run arbitrary code when loaded).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

# Weight files we look for in a folder, in order of preference (HF, then timm/OpenCLIP hub names).
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
INDEX_FILES = ("model.safetensors.index.json",)
PICKLE_FILES = ("pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pt", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: missing or damaged files, missing/unexpected keys or shape mismatches (all
    listed); the message names the file."""


def read_json(path: str | Path) -> Any:
    """A checkpoint's JSON file (config, index, metadata); unreadable or malformed: `CheckpointError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc}); the file is damaged or "
                              "missing") from None


def open_safetensors(file: str | Path):
    """`safe_open(file)`; a truncated or overwritten file raises `CheckpointError` naming it (safetensors' own error
    does not say which file it was reading)."""
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc}); it is truncated, overwritten or "
                              "missing. Re-download or re-save it, or load an earlier checkpoint") from None


class SafetensorsReader:
    """Lazy access to every tensor of a single-file or sharded safetensors checkpoint.

    `reader.keys()` lists the tensor names; `reader.get(name)` reads one tensor (fp32 copies are made later,
    by the caller, so a 7B checkpoint is never held twice in memory).
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path
        self._where: dict[str, Path] = {}            # tensor name -> file that holds it
        for file in self._files(path):
            with open_safetensors(file) as f:
                for key in f.keys():
                    self._where[key] = file
        self._handles: dict[Path, object] = {}

    @staticmethod
    def _files(path: Path) -> list[Path]:
        if path.is_file():
            if path.suffix != ".safetensors":
                raise CheckpointError(f"{path}: only .safetensors files are read (mm1lab never unpickles "
                                      "checkpoints); convert it with safetensors.torch.save_file")
            return [path]
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such file or folder")
        for name in INDEX_FILES:
            if (path / name).exists():
                return SafetensorsReader._shards(path, path / name)
        for name in WEIGHT_FILES:
            if (path / name).exists():
                return [path / name]
        pickled = [name for name in PICKLE_FILES if (path / name).exists()]
        hint = (f" It holds pickled weights ({', '.join(pickled)}), which mm1lab never loads; download the "
                "safetensors files instead or convert them with safetensors.torch.save_file.") if pickled else ""
        looked = ", ".join(INDEX_FILES + WEIGHT_FILES)
        raise CheckpointError(f"{path}: no safetensors weights found (looked for {looked}).{hint}")

    @staticmethod
    def _shards(folder: Path, index: Path) -> list[Path]:
        """The shard files an index names: plain file names inside `folder`, each present."""
        try:
            shards = set(read_json(index)["weight_map"].values())
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): "
                                  f"{type(exc).__name__}: {exc}") from None
        for shard in sorted(map(str, shards)):
            if Path(shard).name != shard or shard in (".", ".."):
                raise CheckpointError(f"{index}: shard {shard!r} is not a file name in {folder}")
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard!r}, which is missing from {folder}")
        return sorted(folder / shard for shard in map(str, shards))

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> Tensor:
        file = self._where[key]
        if file not in self._handles:
            self._handles[file] = open_safetensors(file)
        try:
            return self._handles[file].get_tensor(key)
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({exc})") from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file or (sharded) folder, as a plain dict."""
    reader = SafetensorsReader(path)
    return {key: reader.get(key) for key in reader.keys()}


def save_state_dict(state: dict[str, Tensor], file: str | Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to one safetensors file. Tensors sharing storage (a tied LM head) are stored once and their
    other names listed under the metadata key "aliases", which `load_state_dict` restores."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tensors, aliases = {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen and t.numel():
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    meta = {"format": "pt", **(metadata or {})}
    if aliases:
        meta["aliases"] = json.dumps(aliases)
    save_file(tensors, str(file), metadata=meta)


def load_state_dict(file: str | Path) -> dict[str, Tensor]:
    """Every tensor of one safetensors file (no pickle involved), with the names of tied tensors restored."""
    with open_safetensors(file) as f:
        try:
            state = {name: f.get_tensor(name) for name in f.keys()}
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            for name, target in aliases.items():
                state[name] = state[target]
        except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{file}: damaged safetensors file ({type(exc).__name__}: {exc})") from None
    return state


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `folder`; on success it replaces `folder`, on error it is removed.

    A crash mid-save therefore never leaves a half-written checkpoint under the final name.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# torch.nn.init functions that module constructors call; skipped while a module is built only to be loaded.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def no_init() -> Iterator[None]:
    """Build modules without random initialisation (their weights are loaded right after).

    Initialising a 7B model only to overwrite it costs minutes on CPU. Buffers computed in constructors
    (e.g. rotary frequencies) are unaffected. Not thread-safe: it patches `torch.nn.init` for the duration.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def check_no_meta(module: nn.Module, what: str) -> None:
    """Fail loudly if any tensor was left on the meta device (a part that was never loaded)."""
    left = [name for name, t in module.state_dict().items() if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: tensors were never loaded: {left[:10]}{' ...' if len(left) > 10 else ''}")


def cast_parameters(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Cast parameters only: buffers such as rotary frequencies stay fp32 (bf16 frequencies drift)."""
    if dtype is not None:
        for param in module.parameters():
            param.data = param.data.to(dtype)
    return module
