"""Single process or torchrun: process-group setup, FSDP2 / DDP wrapping, gathered checkpoint state.

The same trainer runs both ways: without torchrun's environment (WORLD_SIZE unset or 1) everything here is a
no-op. Under torchrun, `parallel` picks the wrapper:
- fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block of the encoder and the LM, then
  on the whole model (connector, embeddings and head stay in the root group);
- ddp: DistributedDataParallel, a full replica per rank;
- auto: fsdp on GPUs, ddp on CPU (gloo) - see docs/distributed.md for what was observed on CPU.
Checkpoints are *gathered*: rank 0 collects full fp32 weights and optimizer state (keyed by parameter name) and
writes one ordinary checkpoint, which loads into any world size or wrapper, or into a plain notebook model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment, pick the device and start the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    info = DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev
                                if dev.type == "cuda" else None)
    return info


def close_distributed() -> None:
    """Tear down the process group (torchrun warns about leaked groups otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_parallel(mode: str, info: DistInfo) -> str:
    """'none' for one process; 'auto' becomes fsdp on GPUs and ddp on CPU."""
    if not info.enabled:
        return "none"
    if mode == "auto":
        return "fsdp" if info.device.type == "cuda" else "ddp"
    return mode


def wrap_model(model: nn.Module, mode: str, info: DistInfo, *, blocks: list[nn.Module] | None = None) -> nn.Module:
    """Wrap for data parallelism: FSDP2 per transformer block (`blocks`; default MM1's encoder and LM blocks), or
    DDP. Returns the module to call."""
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ids = [info.device.index] if info.device.type == "cuda" else None
        # text-only micro-batches leave the encoder and connector without gradients; DDP must expect that
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in blocks if blocks is not None else list(model.vision.blocks) + list(model.lm.layers):
            fully_shard(block)   # each block's weights are gathered just before it runs, freed after
        fully_shard(model)
        return model
    raise ValueError(f"parallel={mode!r}: choose none, ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    """The MM1Model inside a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return getattr(model, "module", model)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) weights and optimizer state, on CPU; under FSDP only rank 0 gets them (others: {})."""
    inner = unwrap(model)
    return get_model_state_dict(inner, options=_FULL), get_optimizer_state_dict(inner, optimizer, options=_FULL)


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, weights: dict | None,
               optim_state: dict | None) -> None:
    """Load full weights (and optimizer state) into a plain, DDP or FSDP model; every rank passes the full state.
    weights None: the model holds them already (a LoRA run loads them before wrapping).

    strict=False for the optimizer: parameters that never got a gradient (e.g. a connector before the first
    image) have no AdamW state yet, and that is fine.
    """
    inner = unwrap(model)
    if weights is not None:
        set_model_state_dict(inner, weights, options=StateDictOptions(full_state_dict=True))
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(inner, optimizer, optim_state,
                                 options=StateDictOptions(full_state_dict=True, strict=False))


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a tensor over ranks, in place; a no-op in one process."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (picklable objects; [obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_initialized():
        dist.barrier()
