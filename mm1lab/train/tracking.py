"""Where metrics go: metrics.jsonl always, TensorBoard and Weights & Biases on request, a tqdm.auto bar.

Only rank 0 tracks. Every record is one JSON line {"step": ..., "loss": ..., ...}, appended and flushed at once,
so a killed run keeps every line it logged; on resume, lines past the resumed step are dropped first, so the
file reads as one uninterrupted run. A resumed run logs to the same W&B run: its id is kept in `wandb/run_id`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import warnings
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a run dir or the file itself)."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Tracker:
    """Logs step records to metrics.jsonl, TensorBoard and W&B, and drives the progress bar.

    Args:
        run_dir: where metrics.jsonl and tb/ go.
        cfg: the TrainConfig (its `track` section picks the sinks; the whole config goes to W&B).
        start_step: the step the run (re)starts from; older records are kept, newer ones dropped.
        enabled: False on ranks other than 0.
    """

    def __init__(self, run_dir: str | Path, cfg, *, start_step: int = 0, enabled: bool = True):
        self.enabled, self.cfg, self.run_dir = enabled, cfg, Path(run_dir)
        self.tb = self.wandb = self.bar = None
        if not enabled:
            return
        self.path = self.run_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")
        t = cfg.track
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if t.wandb and t.wandb_mode != "disabled":
            try:
                import wandb
            except ImportError:
                warnings.warn("track.wandb is on but wandb is not installed (pip install wandb); logging to "
                              "metrics.jsonl and TensorBoard only", stacklevel=2)
            else:
                self.wandb = wandb.init(project=t.wandb_project, name=cfg.name, mode=t.wandb_mode,
                                        dir=str(self.run_dir), config=cfg.to_dict(), resume="allow",
                                        id=wandb_run_id(self.run_dir, cfg.name, resuming=start_step > 0))
        if t.progress:
            from tqdm.auto import tqdm
            # mininterval keeps papermill logs short: one line every few seconds, not one per step
            self.bar = tqdm(total=cfg.steps, initial=start_step, desc=cfg.name, mininterval=2.0, dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must hold "step"); nested dicts are flattened as a/b for TB and W&B."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        flat = flatten(record)
        step = int(record["step"])
        if self.tb is not None:
            for key, value in flat.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in flat.items() if k != "step"}, step=step)

    def progress(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Move the bar to `step` and show loss and throughput."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def write(self, message: str) -> None:
        """A message that does not break the bar (also printed without one)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.bar is not None:
            self.bar.close()


def wandb_run_id(run_dir: str | Path, name: str, *, resuming: bool) -> str:
    """The W&B run id of `run_dir`, kept in `run_dir/wandb/run_id`.

    A resumed run (usually a new process) reads it back and so logs to the same W&B run; a run that starts at
    step 0 gets a fresh one, as its metrics.jsonl starts afresh. The id is random rather than derived from the
    path: Python salts `hash()` per process, and equal paths on two machines must not merge their runs online.
    """
    path = Path(run_dir) / "wandb" / "run_id"
    if resuming and path.exists():
        return path.read_text().strip()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:48] or "run"   # W&B ids refuse :;,#?/'
    run_id = f"{stem}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def flatten(record: dict[str, Any], *, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """A nested record as one level: {'loss': {'text': 1.0}} -> {'loss/text': 1.0} (TensorBoard's and W&B's
    grouping); `sep="."` gives sweep-table columns."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, sep=sep, prefix=f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out
