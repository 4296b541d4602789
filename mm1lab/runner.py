"""Run a notebook headless with papermill and keep everything it produced: `mm1lab run` and `mm1lab sweep`.

One run = one folder `papermill_runs/<YYYYmmdd-HHMMSS-ffffff>-<name>/` holding

    <notebook>.ipynb   the executed notebook (partial, up to the failing cell, if the run failed)
    parameters.yaml    the parameters it ran with (feed it back with `-f` to repeat the run)
    status.json        {status, error, failed_cell, started, finished, duration_s}
    metrics.json, *.png  whatever the notebook writes into `RUN_DIR`

plus one JSON line in `papermill_runs/index.jsonl`. Notebooks learn their folder from the injected parameter
`RUN_DIR`. Sweeps (a grid of runs and their aggregated table and plot) live in `mm1lab/sweep.py`, and the
`mm1lab run` / `mm1lab sweep` commands in `mm1lab/runner_cli.py`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import keyword
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mm1lab import yamlio
from mm1lab.progress import LOG_NAME, RunWatch, clock, kernel_manager_class

DEFAULT_KERNEL = "mm1lab"   # registered for the venv by `make setup` (ipykernel install --sys-prefix)
INDEX_NAME = "index.jsonl"
# Parameters the runner sets itself; injected whether or not a notebook declares them.
RUNNER_PARAMETERS = ("RUN_DIR",)


@dataclass
class RunResult:
    """What one notebook run produced. `folder` holds the executed notebook, parameters, status and outputs."""

    name: str
    folder: Path
    status: str                     # "ok" or "failed"
    error: str | None
    parameters: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    failed_cell: int | None = None  # 0-based index of the failing cell in the source notebook
    notebook: Path | None = None    # the executed (or partial) notebook

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def say(message: str) -> None:
    """Runner messages go to stderr so they never mix with what a notebook prints."""
    print(f"mm1lab: {message}", file=sys.stderr, flush=True)


def slug(text: str) -> str:
    """A folder-safe version of `text` ('lr=0.001,connector=c-abstractor' stays readable)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "run"


def parameters_cell(nb) -> int:
    """Index of the one cell tagged `parameters`; ValueError if there is none."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("no cell is tagged `parameters`; in JupyterLab open the property inspector (gear icon) "
                         "on the cell holding SMOKE = ... and add the tag `parameters`")
    if len(tagged) > 1:
        say(f"{len(tagged)} cells are tagged `parameters` (cells {tagged}); papermill injects after the first")
    return tagged[0]


def check_names(names, source: str) -> None:
    """Refuse parameter names that are not plain Python identifiers: papermill writes `NAME = value` into the
    notebook verbatim, so a name like `X = 1; import os; Y` would run as code."""
    bad = [name for name in names if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name)]
    if bad:
        raise ValueError(f"{source}: parameter name(s) {', '.join(map(repr, bad))} are not Python identifiers; "
                         "use the names assigned in the notebook's parameters cell")


def check_values(parameters: dict[str, Any], source: str) -> None:
    """Refuse values papermill cannot write back as themselves (a YAML date would be injected as `2024-01-02`,
    which Python reads as the number 2021)."""
    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(map(plain, value))
        return value is None or isinstance(value, (str, int, float, bool))

    bad = {k: type(v).__name__ for k, v in parameters.items() if not plain(v)}
    if bad:
        raise ValueError(f"{source}: parameters must be plain values (str, int, float, bool, None, and lists and "
                         f"dicts with string keys of them); got {bad}. Quote a value to pass it as a string")


def check_notebook(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """Fail clearly if `notebook` is missing, has no parameters cell, or does not declare a parameter's name.

    Only names assigned in the parameters cell (plus the runner's own `RUN_DIR`) may be injected: an undeclared
    name is usually a typo, and a name is written into the notebook as code.
    """
    import nbformat
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    parameters_cell(nbformat.read(path, as_version=4))
    check_names(parameters, path.name)
    check_values(parameters, path.name)
    declared = set(papermill.inspect_notebook(str(path)))
    unknown = sorted(set(parameters) - declared - set(RUNNER_PARAMETERS))
    if unknown:
        raise ValueError(f"{path.name} does not declare {', '.join(unknown)} in its parameters cell (declared: "
                         f"{', '.join(sorted(declared)) or 'nothing'}); fix the name, or add it to the cell tagged "
                         "`parameters`")


def resolve_kernel(kernel: str) -> str:
    """`kernel` if it is registered, else the default Python kernel, saying why and which interpreter it uses."""
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel

    specs = KernelSpecManager()
    try:
        specs.get_kernel_spec(kernel)
        return kernel
    except NoSuchKernel:
        # "python3": jupyter_client serves it from this interpreter when ipykernel is installed and none is registered.
        python = specs.get_kernel_spec(NATIVE_KERNEL_NAME).argv[0]
        python = sys.executable if "/" not in python else python   # a bare "python" means this interpreter
        say(f"kernel {kernel!r} is not registered, so notebooks may not run on the venv's interpreter; "
             f"falling back to {NATIVE_KERNEL_NAME!r} ({python}). Register it with `make setup` or "
             f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel}`")
        return NATIVE_KERNEL_NAME


def new_folder(out_root: Path, name: str) -> Path:
    """`out_root/<timestamp>-<name>/`, created; microseconds keep concurrent runs apart, a suffix does the rest."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    for attempt in range(100):
        folder = out_root / f"{stamp}-{slug(name)}{f'-{attempt}' if attempt else ''}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a fresh run folder under {out_root}")


def append_index(index: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write + fsync, so concurrent runs never interleave their lines."""
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(index: str | Path = "papermill_runs/index.jsonl") -> list[dict[str, Any]]:
    """Every record in a run index, oldest first."""
    path = Path(index)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _dump_parameters(parameters: dict[str, Any]) -> str:
    try:
        return yaml.safe_dump(parameters, sort_keys=False)
    except yaml.representer.RepresenterError as exc:
        bad = {k: type(v).__name__ for k, v in parameters.items() if not isinstance(v, (str, int, float, bool, list,
                                                                                        dict, type(None)))}
        raise ValueError(f"parameters must be plain values (str, int, float, bool, None, list, dict); got {bad}") \
            from exc


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    out_root: str | Path = "papermill_runs",
    name: str | None = None,
    kernel: str = DEFAULT_KERNEL,
    smoke: bool | None = None,
    folder: str | Path | None = None,
    progress: bool = False,
    live: str | None = None,
    extra_index: dict | None = None,
) -> RunResult:
    """Execute `notebook` with papermill into a fresh run folder and record it in `out_root/index.jsonl`.

    Args:
        parameters: injected after the `parameters` cell (plus `RUN_DIR`, the run folder).
        name: the run's name (default: the notebook's stem); it ends the folder name.
        smoke: if not None, sets the `SMOKE` parameter.
        folder: an exact run folder instead of `out_root/<timestamp>-<name>/` (sweeps use this).
        progress: show papermill's per-cell progress bar.
        live: a label; if given, progress lines (training step/steps, loss, elapsed, ETA, or the running cell) go to
            stderr while the run executes. They always go to the folder's `run.log`, with the notebook's output.
        extra_index: more fields for the index line (a sweep records which sweep a run belongs to).
    A failing cell does not raise: the result (and status.json, and the index) says "failed" and where.
    Ctrl-C is recorded as a failed run, then re-raised.
    """
    from papermill.exceptions import PapermillExecutionError

    notebook, out_root = Path(notebook), Path(out_root)
    parameters = dict(parameters or {})
    if smoke is not None:
        parameters["SMOKE"] = smoke
    check_notebook(notebook, parameters)
    text = _dump_parameters(parameters)
    kernel = resolve_kernel(kernel)
    name = name or notebook.stem

    if folder is None:
        folder = new_folder(out_root, name)
    else:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=False)   # never mix two runs' files
    folder = folder.resolve()
    (folder / "parameters.yaml").write_text(text)   # without RUN_DIR, so `-f parameters.yaml` repeats the run
    executed = folder / notebook.name

    started, t0 = dt.datetime.now(), time.perf_counter()
    status, error, failed_cell, trace, interrupted = "ok", None, None, None, False
    watch = RunWatch(folder, label=live or name, notebook=executed, echo=bool(live))
    ipc_dir = tempfile.mkdtemp(prefix="mm1lab-kernel-")
    if len(ipc_dir) > 80:   # a socket path must fit in 107 bytes (with "/kernel-<port>"): a long TMPDIR will not do
        shutil.rmtree(ipc_dir)
        ipc_dir = tempfile.mkdtemp(prefix="mm1lab-kernel-", dir="/tmp")
    try:
        import papermill

        with watch, _log_outputs(folder / LOG_NAME):
            papermill.execute_notebook(
                str(notebook), str(executed), parameters={**parameters, "RUN_DIR": str(folder)}, kernel_name=kernel,
                # Run where the notebook lives, as JupyterLab does, so its relative paths mean the same thing.
                cwd=str(notebook.resolve().parent), progress_bar=progress, log_output=True,
                kernel_manager_class=kernel_manager_class(folder / LOG_NAME, ipc_dir))
    except PapermillExecutionError as exc:
        # papermill has already saved the partial notebook (outputs up to and including the failing cell).
        status, failed_cell = "failed", _failing_cell(executed, exc.cell_index)
        error = f"{exc.ename}: {exc.evalue} (cell index {failed_cell} of {notebook.name}, In [{exc.exec_count}])"
        trace = _strip_ansi("\n".join(exc.traceback))
    except Exception as exc:   # the kernel did not start or died: still a recorded, failed run
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:   # record it, so the folder is not left without a status, then stop
        status, error, interrupted = "failed", "KeyboardInterrupt: stopped by the user", True
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
    duration = round(time.perf_counter() - t0, 3)
    watch.write(f"{live or name}  {status} in {clock(duration)}")

    metrics = _read_metrics(folder)
    (folder / "status.json").write_text(json.dumps(dict(
        status=status, error=error, failed_cell=failed_cell, traceback=trace, started=started.isoformat(),
        finished=dt.datetime.now().isoformat(), duration_s=duration, kernel=kernel), indent=2) + "\n")
    out_root.mkdir(parents=True, exist_ok=True)
    append_index(out_root / INDEX_NAME, dict(
        name=name, notebook=str(notebook), parameters=parameters, status=status, error=error,
        folder=relative_to(folder, out_root), started=started.isoformat(timespec="seconds"), duration_s=duration,
        metrics=metrics, **(extra_index or {})))

    if status == "failed":
        where = executed if executed.exists() else folder
        say(f"run {name!r} FAILED: {error}\n  partial notebook: {where}\n  status: {folder / 'status.json'}")
    if interrupted:
        raise KeyboardInterrupt
    return RunResult(name=name, folder=folder, status=status, error=error, parameters=parameters,
                     metrics=metrics, failed_cell=failed_cell, notebook=executed if executed.exists() else None)


@contextlib.contextmanager
def kernel_environ(**values: str):
    """Set environment variables for the kernels started inside the block (they inherit them, e.g. a thread count),
    restoring the old values afterwards."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _log_outputs(path: Path):
    """papermill's stream of the notebook's outputs (log_output=True) into the run's log, not the terminal."""
    import logging

    logger = logging.getLogger("papermill")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _failing_cell(executed: Path, fallback: int) -> int:
    """Index of the failing cell in the *source* notebook, the one the user edits.

    papermill's own index counts its injected-parameters cell, and the saved notebook also has its error banners.
    """
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except Exception:   # no partial notebook to look at: papermill's index is the best there is
        return fallback
    papermill_tags = {"injected-parameters", "papermill-error-cell-tag"}
    source_cells = [c for c in cells if not papermill_tags & set(c.metadata.get("tags", []))]
    for i, cell in enumerate(source_cells):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return i
    return fallback


def _read_metrics(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        say(f"warning: {path} is not valid JSON ({exc}); metrics ignored")
        return {}
    return metrics if isinstance(metrics, dict) else {"value": metrics}


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def relative_to(folder: Path, root: Path) -> str:
    """`folder` relative to the index's folder when it lies inside it, so the index survives a move."""
    try:
        return str(folder.relative_to(root.resolve()))
    except ValueError:
        return str(folder)


# ---------------------------------------------------------------------------------------------- parameters in
def parse_value(text: str) -> Any:
    """A `-p` value as a YAML scalar: '100' -> 100, 'true' -> True, '1e-3' -> 0.001, 'abc' -> 'abc'."""
    return yamlio.load(text)


def load_parameters(files: list[str] | None, pairs: list[list[str]] | None, *, smoke: bool = False) -> dict:
    """Merge `-f` YAML files in order, then `-p key value` pairs (which win), then `--smoke`."""
    parameters: dict[str, Any] = {}
    for file in files or []:
        loaded = yamlio.load_mapping(file, "parameter file")
        check_names(loaded, str(file))
        parameters.update(loaded)
    for key, value in pairs or []:
        check_names([key], "-p")
        parameters[key] = parse_value(value)
    if smoke:
        parameters["SMOKE"] = True
    return parameters
