"""One loader for trained models: `model, tokenizer = load_model(path)`.

`path` may be any of the folders mm1lab writes:
- an exported folder (`MM1Model.save_pretrained`: config.json with `"model_type": "mm1lab"`, model.safetensors,
  tokenizer files);
- a training checkpoint (`checkpoints/step_*/`: model.safetensors, model_config.json, meta.json); a LoRA run's
  (with adapter_model.safetensors beside) comes back with its adapters merged, a plain MM1Model;
- a training run (`mm1lab train`'s out_dir, or its checkpoints/ folder: the newest complete checkpoint);
- a notebook run folder (`mm1lab run`'s RUN_DIR, whose training run is RUN_DIR/train).

The tokenizer is the first tokenizer.json found in the checkpoint folder or the two folders above it: mm1lab's
byte-level BPE when its special tokens sit at ids 0..6, else the transformers tokenizer saved beside a model
built from public parts. With none found, the committed ShapeWorld tokenizer (`data_samples/tokenizer.json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm1lab.config import MM1Config
from mm1lab.folders import ADAPTER_WEIGHTS, RUN_SUBFOLDER, WEIGHTS, find_checkpoint
from mm1lab.model import MODEL_TYPE, MM1Model
from mm1lab.safetensors_io import CheckpointError, load_state_dict, read_json

TRAINER_CONFIG = "model_config.json"   # what a training checkpoint calls its MM1Config


@dataclass
class LoadedModel:
    """A loaded model (eval mode), its tokenizer, the folder they came from and the training step (if known).

    Unpacks as `model, tokenizer = load_model(path)`.
    """

    model: MM1Model
    tokenizer: Any
    path: Path | None
    step: int | None = None

    def __iter__(self):
        return iter((self.model, self.tokenizer))


def load_model(path: str | Path | None, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               untrained: str | None = None, seed: int = 0) -> LoadedModel:
    """Load a trained model and its tokenizer from a run, checkpoint or exported folder (see module docstring).

    Args:
        path: the folder; empty or None only together with `untrained`.
        untrained: a preset name: with no `path`, return a freshly initialised model of it (seeded by `seed`) and
            the committed tokenizer. The notebooks' SMOKE mode uses this to run without a trained model.
    """
    if not path:
        if untrained is None:
            raise ValueError("no model path given: pass a run folder, checkpoint or exported folder (for example "
                             "02_pretrain's RUN_DIR), or untrained='tiny' for a fresh model")
        torch.manual_seed(seed)
        return LoadedModel(MM1Model(MM1Config.preset(untrained)).to(device).eval(), _tokenizer(None), None)
    folder = resolve(path)
    if (folder / "config.json").exists() and _model_type(folder) == MODEL_TYPE:
        model, step = MM1Model.from_pretrained(folder, dtype=dtype), None
    else:
        model, step = _from_training_checkpoint(folder, dtype), _step(folder)
    return LoadedModel(model.to(device).eval(), _tokenizer(folder), folder, step)


def resolve(path: str | Path) -> Path:
    """The folder holding the weights that `path` stands for (see the module docstring for what it may be)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run folder, a checkpoint or an exported model")
    found = find_checkpoint(path)
    if found is not None:
        return found
    raise FileNotFoundError(f"no model in {path}: expected model.safetensors (with config.json or "
                            f"{TRAINER_CONFIG}), a run folder with checkpoints/, or a notebook run with "
                            f"{RUN_SUBFOLDER}/checkpoints/")


def _model_type(folder: Path) -> str | None:
    config = read_json(folder / "config.json")
    return config.get("model_type") if isinstance(config, dict) else None


def _from_training_checkpoint(folder: Path, dtype: torch.dtype | None) -> MM1Model:
    config = folder / TRAINER_CONFIG
    if not config.exists():
        raise CheckpointError(f"{folder} has model.safetensors but no {TRAINER_CONFIG} (a training checkpoint) and "
                              f"no config.json with model_type {MODEL_TYPE!r} (an exported model)")
    model = MM1Model(MM1Config.load(config))
    state = load_state_dict(folder / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder / WEIGHTS} does not match {config.name}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    if (folder / ADAPTER_WEIGHTS).exists():   # a LoRA run: base weights + adapters, merged (mm1lab.lora)
        from mm1lab.lora import load_adapters, merge_lora

        model = merge_lora(load_adapters(model, folder))
    return model if dtype is None else model.to(dtype)


def _step(folder: Path) -> int | None:
    meta = folder / "meta.json"
    return read_json(meta).get("step") if meta.exists() else None


def _tokenizer(folder: Path | None):
    """mm1lab's tokenizer, or a transformers one, found beside the weights (see the module docstring)."""
    from mm1lab.data.tokenizer import load_tokenizer

    found = next((p for p in ((folder, folder.parent, folder.parent.parent) if folder else ())
                  if (p / "tokenizer.json").exists()), None)
    if found is None:
        return load_tokenizer()
    try:
        return load_tokenizer(found)
    except ValueError:   # not mm1lab's layout of special tokens: a model built from public parts
        from mm1lab.pretrained.lm import load_tokenizer as load_hf_tokenizer

        return load_hf_tokenizer(found)
