"""Checkpoints: written atomically, the last N kept, weights in safetensors, nothing loaded through pickle.

Layout of `<run_dir>/checkpoints/`:

    step_00000500/
        model.safetensors   full fp32 weights (gathered on rank 0 under FSDP); tied weights stored once,
                            their other names listed in the metadata under "aliases"
        model_config.json   the MM1Config (MM1Config.from_json reads it)
        train_config.yaml   the resolved TrainConfig
        optimizer.pt        AdamW state (torch.save; read back with torch.load(weights_only=True))
        state.pt            step, scheduler, data-sampler state, every RNG, fault counters
        meta.json           step, wall time and the last logged metrics
        adapter_model.safetensors, adapter_config.json
                            LoRA runs only (mm1lab.lora): the adapters, in peft's format; model.safetensors then
                            holds the base weights, and `mm1lab.load_model` merges the two
    latest                  name of the newest complete checkpoint

A checkpoint is written into a temporary directory, every file fsynced, then renamed into place; `latest` is
replaced the same way. A crash at any point leaves the previous checkpoint complete and `latest` pointing at it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm1lab.config import plain
from mm1lab.folders import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    COMPLETE_MARKER,
    LATEST,
    STEP_PREFIX,
    WEIGHTS,
    checkpoint_name,
    find_checkpoint,
    list_checkpoints,
)
from mm1lab.safetensors_io import CheckpointError, load_state_dict, read_json, save_state_dict


# ---- RNG -----------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG a step can touch, in weights_only-loadable types (tensors, ints, lists)."""
    np_state = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=plain(random.getstate()),
                 numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                            has_gauss=int(np_state[3]), gauss=float(np_state[4])))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- whole checkpoints ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """What `load_checkpoint` returns; `optimizer` and `state` are None for weights-only loads. `adapters` holds a
    LoRA run's adapter weights (peft's file format) and is None for any other run."""

    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    adapters: dict[str, torch.Tensor] | None = None


def save_checkpoint(root: str | Path, step: int, *, weights: dict[str, torch.Tensor], model_config_json: str,
                    train_config_yaml: str, optimizer: dict[str, Any], state: dict[str, Any],
                    meta: dict[str, Any] | None = None, keep: int = 3, adapters: dict[str, torch.Tensor] | None = None,
                    adapter_config: str | None = None) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, drop all but the newest `keep`.
    A LoRA run passes its `adapters` and peft's `adapter_config` (JSON text) as well (mm1lab.lora.split_state)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_state_dict(weights, tmp / WEIGHTS, metadata={"step": str(step)})
        (tmp / "model_config.json").write_text(model_config_json)
        (tmp / "train_config.yaml").write_text(train_config_yaml)
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(state, tmp / "state.pt")
        if adapters is not None:
            save_state_dict(adapters, tmp / ADAPTER_WEIGHTS, metadata={"step": str(step)})
            (tmp / ADAPTER_CONFIG).write_text(adapter_config)   # without it the adapters cannot be placed
        (tmp / COMPLETE_MARKER).write_text(json.dumps(dict(step=step, **(meta or {})), indent=2))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        fault_point("checkpoint", step)   # tests kill the process here: the rename below must not happen
        if final.exists():                # re-saving a step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(root / LATEST, final.name)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, weights_only: bool = False) -> Checkpoint:
    """Load a checkpoint (dir, run dir or checkpoints dir). Weights via safetensors, the rest via
    torch.load(weights_only=True): a checkpoint cannot run code on load. A damaged or missing file raises
    `CheckpointError` naming it."""
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path} (looked for model.safetensors, checkpoints/latest and "
                                f"{STEP_PREFIX}* directories)")
    meta = read_json(found / COMPLETE_MARKER) if (found / COMPLETE_MARKER).exists() else {}
    ckpt = Checkpoint(path=found, step=int(meta.get("step", 0)), weights=load_state_dict(found / WEIGHTS),
                      model_config=read_json(found / "model_config.json"))
    if (found / ADAPTER_WEIGHTS).exists():
        ckpt.adapters = load_state_dict(found / ADAPTER_WEIGHTS)
    if not weights_only:
        ckpt.optimizer, ckpt.state = _torch_load(found / "optimizer.pt"), _torch_load(found / "state.pt")
    return ckpt


def resume_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest checkpoint under `root` that loads, or None when there is none. A damaged one is reported on
    stderr and the one before it is tried; when every one is damaged, `CheckpointError` lists them."""
    newest = find_checkpoint(root)
    if newest is None:
        return None
    candidates = [newest] + [p for p in reversed(list_checkpoints(root)) if p != newest]
    damaged = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            damaged.append(str(exc))
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"mm1lab: checkpoint {path.name} is damaged: {exc}", file=sys.stderr, flush=True)
            continue
        if damaged and int(os.environ.get("RANK", "0")) == 0:
            print(f"mm1lab: resuming from {path}, the newest complete checkpoint that loads", file=sys.stderr,
                  flush=True)
        return ckpt
    raise CheckpointError(f"every checkpoint under {root} is damaged:\n  " + "\n  ".join(damaged) +
                          "\nRemove them to start over, or set checkpoint.resume=false with a new out_dir")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:   # truncated zip, bad pickle opcodes, or a payload weights_only refuses
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                              "it is damaged, or holds objects that weights_only loading refuses") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


# ---- fault injection (tests) ---------------------------------------------------------------------------
def fault_point(where: str, step: int) -> None:
    """Test hook: MM1LAB_FAULT="kill@train:7" SIGKILLs this process at that point ("sigint@train:7" sends
    Ctrl-C; "kill@checkpoint:5" dies after writing checkpoint 5's files but before renaming it into place;
    "raise@train:2" raises a RuntimeError). A "/r" suffix ("raise@train:2/1") fires on torchrun rank r only."""
    spec = os.environ.get("MM1LAB_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        action, _, point = item.partition("@")
        point, _, rank = point.partition("/")
        if point != f"{where}:{step}" or (rank and int(rank) != int(os.environ.get("RANK", "0"))):
            continue
        if action == "raise":
            raise RuntimeError(f"injected fault (MM1LAB_FAULT={spec!r}) at {where} step {step}")
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGINT)
