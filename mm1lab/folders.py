"""Where mm1lab keeps models on disk, written down once for the code that writes them and the code that finds them.

    <notebook RUN_DIR>/                 a `mm1lab run` folder (see `mm1lab/runner.py`)
        train/                          the training run a notebook starts (`RUN_SUBFOLDER`)
            checkpoints/
                step_00000500/          one complete checkpoint (`mm1lab/train/checkpoint.py` lists its files)
                latest                  the name of the newest complete checkpoint

An exported model (`MM1Model.save_pretrained`) is a folder with config.json and model.safetensors.
"""

from __future__ import annotations

from pathlib import Path

STEP_PREFIX = "step_"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
RUN_SUBFOLDER = "train"
WEIGHTS = "model.safetensors"
COMPLETE_MARKER = "meta.json"   # a step_* folder without it is not a complete checkpoint
# A LoRA checkpoint's adapters, beside the base weights (`mm1lab.lora`); peft's own file names
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at `step` (zero-padded so names sort by step)."""
    return f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
                  and (p / COMPLETE_MARKER).exists())


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint meant by `path`: a folder with weights itself, or the newest under a training run or its
    checkpoints/ folder, or under a notebook run's train/ folder. None when there is none."""
    path = Path(path)
    if (path / WEIGHTS).exists():
        return path
    for root in (path / CHECKPOINTS, path, path / RUN_SUBFOLDER / CHECKPOINTS):
        latest = root / LATEST
        if latest.exists() and (root / latest.read_text().strip() / COMPLETE_MARKER).exists():
            return root / latest.read_text().strip()
        found = list_checkpoints(root)
        if found:
            return found[-1]
    return None
