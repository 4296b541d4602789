"""Live progress of a headless notebook run, on the terminal and in the run's `run.log`.

A notebook run by papermill prints into its own kernel, so a ten-minute `make demo` would otherwise show nothing.
`RunWatch` looks at what the run writes to disk, from a thread in the runner's process:
- a training run's `metrics.jsonl` (anywhere under the run folder) gives step/steps, loss, elapsed time and ETA;
- otherwise papermill's saved notebook gives the cell that is running.

Reading files rather than hooking the kernel keeps it true for any notebook, for torchrun launches, and for a run
that is resumed. Lines go out at most every `every` seconds and only when something changed (or as a heartbeat), so
logs stay short.

    with RunWatch(folder, label="02_pretrain", notebook=folder / "02_pretrain.ipynb"):
        papermill.execute_notebook(...)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

import yaml

LOG_NAME = "run.log"
# Seconds between looks at the run; MM1LAB_PROGRESS_EVERY=1 for short runs (tests), 60 for quiet logs.
EVERY = float(os.environ.get("MM1LAB_PROGRESS_EVERY", 10))


def clock(seconds: float) -> str:
    """1:05 for 65 s, 1:02:03 past the hour."""
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def training_progress(folder: Path) -> dict | None:
    """The newest training run under `folder`: {step, steps, loss, first_step, metrics}; None if there is none yet."""
    files = sorted(folder.rglob("metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    path = files[-1]
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for line in lines[:1] + lines[-1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:   # the trainer is writing this line right now
            pass
    if not records or "step" not in records[-1]:
        return None
    steps = None
    config = path.parent / "config.yaml"
    if config.exists():
        try:
            steps = (yaml.safe_load(config.read_text()) or {}).get("steps")
        except yaml.YAMLError:
            pass
    last = records[-1]
    return dict(step=int(last["step"]), steps=steps, loss=last.get("loss"), first_step=int(records[0]["step"]),
                metrics=path)


def running_cell(notebook: Path) -> tuple[int, int, str] | None:
    """(index, count, first line) of the cell papermill marks as running in its saved notebook, else None."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):   # not written yet, or being written
        return None
    cells = [c for c in cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for i, cell in enumerate(cells):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            source = "".join(cell.get("source", "")).strip().splitlines()
            return i, len(cells), (source[0][:60] if source else "")
    return None


class RunWatch:
    """Prints `label  step 120/500  loss 3.214  elapsed 0:45  eta 2:22` lines while a run executes.

    Args:
        folder: the run folder (its `metrics.jsonl` files and `run.log` live under it).
        label: the name on every line (the stage or arm).
        notebook: papermill's output notebook, for the running cell when no training is under way.
        every: seconds between checks; a line is printed when the step or cell changed, or every `heartbeat` s.
        echo: print lines to `stream` as well as to `run.log`.
        stream: where echoed lines go (stderr: runner messages never mix with a notebook's prints).
    """

    def __init__(self, folder: str | Path, *, label: str, notebook: str | Path | None = None, every: float = EVERY,
                 heartbeat: float = 60.0, echo: bool = True, stream: TextIO | None = None):
        self.folder, self.label = Path(folder), label
        self.notebook = Path(notebook) if notebook else None
        self.every, self.heartbeat, self.echo, self.stream = every, heartbeat, echo, stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{label}", daemon=True)
        self._t0 = time.perf_counter()
        self._train_t0: tuple[float, int] | None = None   # (time, step) when this run's training was first seen
        self._last: tuple[str, float] = ("", 0.0)

    def __enter__(self) -> RunWatch:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.check(final=True)

    def line(self) -> str | None:
        """The current progress line, or None when there is nothing to say yet."""
        now, elapsed = time.perf_counter(), time.perf_counter() - self._t0
        train = training_progress(self.folder)
        if train is not None:
            if self._train_t0 is None:
                self._train_t0 = (now, train["step"])
            t_seen, step_seen = self._train_t0
            parts = [f"step {train['step']}/{train['steps'] or '?'}"]
            if isinstance(train["loss"], (int, float)):
                parts.append(f"loss {train['loss']:.3f}")
            parts.append(f"elapsed {clock(elapsed)}")
            done = train["step"] - step_seen
            if train["steps"] and done > 0 and train["step"] < train["steps"]:
                parts.append(f"eta {clock((now - t_seen) / done * (train['steps'] - train['step']))}")
            return f"{self.label}  " + "  ".join(parts)
        cell = running_cell(self.notebook) if self.notebook else None
        if cell is not None:
            i, n, source = cell
            return f"{self.label}  cell {i + 1}/{n} ({source})  elapsed {clock(elapsed)}"
        return None

    def check(self, *, final: bool = False) -> None:
        """Print the progress line if it changed, or as a heartbeat; always once at the end."""
        text = self.line()
        if text is None:
            return
        key = text.split("  elapsed")[0]
        if final or key != self._last[0] or time.perf_counter() - self._last[1] >= self.heartbeat:
            self._last = (key, time.perf_counter())
            self.write(text)

    def write(self, text: str) -> None:
        """One line to the run's log, and to the stream if echoing."""
        if self.echo:
            print(f"mm1lab: {text}", file=self.stream, flush=True)
        with open(self.folder / LOG_NAME, "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.check()
            except Exception as exc:   # progress must never break a run; say once and stop watching
                print(f"mm1lab: progress for {self.label} stopped: {type(exc).__name__}: {exc}", file=self.stream)
                return


def kernel_manager_class(log_path: str | Path, ipc_dir: str | Path) -> type:
    """A jupyter_client kernel manager for one run: IPC transport, and the kernel process's own output in `log_path`.

    Over TCP, ipykernel warns on every start that the (local) connection is unencrypted; IPC sockets are local files,
    so there is nothing to warn about. The sockets go in `ipc_dir`, one folder per run: jupyter_client's default,
    `kernel-ipc-<n>` in the working directory, is shared by every kernel started there, and two kernels starting at
    once (parallel tests, two sweeps) can pick the same files and read each other's messages ("Invalid Signature").
    What the kernel process prints outside the notebook (C-library messages, for example) belongs to the run, so it
    goes to the run's log rather than the terminal.
    """
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class RunKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return str(Path(ipc_dir) / "kernel")

        async def start_kernel(self, **kw):
            log = open(log_path, "ab")   # the child keeps its own copy of the descriptor
            try:
                kw.setdefault("stdout", log)
                kw.setdefault("stderr", log)
                return await self._async_start_kernel(**kw)
            finally:
                log.close()

    return RunKernelManager
