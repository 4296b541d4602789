"""Train under torchrun from a notebook (or any Python process): `launch(config, nproc=8)`.

The notebook stays the driver: `launch` writes the config next to the run (`RUN/launch.yaml`), starts
`torchrun --nproc-per-node N -m mm1lab.train.cli RUN/launch.yaml` (the command a shell or Slurm runs), and while it
trains prints rank 0's output and one line per record of `metrics.jsonl`, so progress and metrics stream into the
cell (papermill saves the executing notebook every 30 s). Every rank's stdout, stderr and error file are kept under
`RUN/torchrun/`; when a rank fails, `launch` raises `RankFailed` with that rank's error and the end of its
traceback, so the cell, and a papermill run, fail with the cause rather than torchrun's summary.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mm1lab.train.config import TrainConfig
from mm1lab.train.tracking import read_metrics
from mm1lab.train.trainer import TrainResult

# Errors a rank raises because another one died (a collective lost its peer): not the cause, shown only if alone.
KNOCK_ON = ("Connection closed by peer", "remote worker crash", "Connection reset by peer", "communicator was aborted",
            "Socket Timeout", "watchdog")


RANK_PREFIX = "[default0]:"   # how torchrun's --tee marks local rank 0's lines


class RankFailed(RuntimeError):
    """A torchrun rank failed: `rank` (global, or None when no rank left an error) and its error text."""

    def __init__(self, rank: int | None, error: str):
        self.rank, self.error = rank, error
        who = f"rank {rank}" if rank is not None else "torchrun"
        super().__init__(f"{who} failed: {error}")


def torchrun_command(config: Path, *, nproc: int, log_dir: Path, nnodes: int = 1,
                     torchrun_args: tuple[str, ...] = ()) -> list[str]:
    """The torchrun command `launch` runs: every rank teed to `log_dir`, only local rank 0 shown."""
    where = ["--standalone"] if nnodes == 1 else [f"--nnodes={nnodes}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
            f"--log-dir={log_dir}", "--tee=3", "--local-ranks-filter=0", *torchrun_args,
            "-m", "mm1lab.train.cli", str(config)]


def format_record(record: dict[str, Any], steps: int) -> str:
    """One metrics.jsonl record as a progress line."""
    parts = [f"step {record['step']}/{steps}", f"loss {record['loss']:.4f}"]
    for key, fmt in (("lr", ".2e"), ("grad_norm", ".3f"), ("tokens_per_s", ",.0f")):
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{key} {record[key]:{fmt}}")
    return "  ".join(parts)


def launch(cfg: TrainConfig | dict[str, Any], *, nproc: int, nnodes: int = 1, torchrun_args: tuple[str, ...] = (),
           env: dict[str, str] | None = None, poll_s: float = 1.0, load: bool = True) -> TrainResult:
    """Train `cfg` under torchrun with `nproc` processes per node; returns what `train` would (the model loaded
    from the final checkpoint when `load`). Raises `RankFailed` with the failing rank's error.

    nnodes > 1 joins a multi-node rendezvous given in `torchrun_args` (e.g. `--rdzv-endpoint=host:29500`); a
    notebook is usually the driver of one node, and Slurm starts the others (docs/pretraining.md).
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    cfg.track.progress = False    # a tqdm bar through a pipe is noise; metrics lines replace it
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "launch.yaml"
    cfg.save(config)
    log_dir = run_dir / "torchrun" / time.strftime("%Y%m%d-%H%M%S")
    cmd = torchrun_command(config, nproc=nproc, log_dir=log_dir, nnodes=nnodes, torchrun_args=torchrun_args)
    print("launching:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, **(env or {})}, cwd=Path.cwd())
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    metrics, shown, agent = run_dir / "metrics.jsonl", 0, []
    try:
        while True:
            done = proc.poll() is not None
            if done:
                reader.join()
            while not lines.empty():   # printed here, in the cell's thread, so the notebook captures them
                line = lines.get().rstrip("\n")
                if line.startswith(RANK_PREFIX):   # rank 0's output; torchrun's own is kept for a failure
                    print(line.removeprefix(RANK_PREFIX), flush=True)
                else:
                    agent.append(line)
            rows = read_metrics(metrics) if metrics.exists() else []
            for row in rows[shown:]:
                print(format_record(row, cfg.steps), flush=True)
            shown = max(shown, len(rows))
            if done:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:   # Ctrl-C in the notebook: the ranks checkpoint and stop (exit 130)
        proc.send_signal(2)
        proc.wait()
        raise
    if proc.returncode != 0:
        rank, error = rank_error(log_dir, proc.returncode)
        raise RankFailed(rank, error if rank is not None else error + "\n" + "\n".join(agent[-20:]))
    return _result(cfg, run_dir, load=load)


def rank_error(log_dir: Path, returncode: int) -> tuple[int | None, str]:
    """(rank, error) of the rank that failed first, from its error file (`@record`) or the end of its stderr; ranks
    that only lost a peer in a collective (`KNOCK_ON`) come last."""
    failures = []
    for rank_dir in sorted(log_dir.glob("*/attempt_*/*")):
        error_file, stderr = rank_dir / "error.json", rank_dir / "stderr.log"
        if error_file.exists():
            message = json.loads(error_file.read_text())["message"]
            if isinstance(message, dict):
                text, extra = message.get("message", ""), message.get("extraInfo", {})
                stack = extra.get("py_callstack", "").strip().splitlines()
                failures.append((float(extra.get("timestamp", 0)), int(rank_dir.name),
                                 text + ("\n" + "\n".join(stack[-12:]) if stack else "")))
            else:
                failures.append((0.0, int(rank_dir.name), str(message)))
        elif stderr.exists():
            text = stderr.read_text(errors="replace").strip().splitlines()
            said = [line for line in text if "Traceback" in line or "error" in line.lower()]
            if said:
                failures.append((float("inf"), int(rank_dir.name), "\n".join(text[-12:])))
    if not failures:
        return None, f"exit code {returncode} and no rank left an error; rank logs: {log_dir}"
    _, _, rank, text = min((any(k in text for k in KNOCK_ON), t, rank, text) for t, rank, text in failures)
    return rank, f"{text}\n(all rank logs: {log_dir})"


def _result(cfg: TrainConfig, run_dir: Path, *, load: bool) -> TrainResult:
    """What `train` returns, read back from the run folder the ranks wrote."""
    from mm1lab.folders import find_checkpoint
    from mm1lab.train.schedule import mm1_peak_lr

    rows = read_metrics(run_dir / "metrics.jsonl")
    checkpoint = find_checkpoint(run_dir)
    model = None
    if load and checkpoint is not None:
        from mm1lab.load import load_model
        model = load_model(run_dir).model
    last = rows[-1] if rows else {}
    peak = cfg.optim.lr
    if peak is None and model is not None:
        peak = mm1_peak_lr(sum(p.numel() for p in model.parameters()))
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, step=int(last.get("step", 0)),
                       status="finished" if last.get("step") == cfg.steps else "interrupted", metrics=last,
                       peak_lr=peak or max((r.get("lr", 0.0) for r in rows), default=0.0), model=model)
