"""`mm1lab run NOTEBOOK` and `mm1lab sweep NOTEBOOK --grid grid.yaml`: the command line over the runner and sweeps."""

from __future__ import annotations

import argparse
from pathlib import Path

from mm1lab.runner import DEFAULT_KERNEL, load_parameters, run_notebook
from mm1lab.sweep import load_grid, sweep


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="the .ipynb to execute (it needs a cell tagged `parameters`)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), dest="pairs",
                   help="set a parameter; VALUE is read as YAML (100 -> int, true -> bool); repeatable")
    p.add_argument("-f", "--file", action="append", dest="files", metavar="PARAMS.yaml",
                   help="parameters from a YAML mapping; -p wins over it; repeatable")
    p.add_argument("--smoke", action="store_true", help="shorthand for -p SMOKE true")
    p.add_argument("--name", help="run name, the end of the folder name (default: the notebook's name)")
    p.add_argument("--out", default="papermill_runs", help="where run folders and index.jsonl go")
    p.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel (default: %(default)s, the venv's)")


def _run_command(args: argparse.Namespace) -> int:
    parameters = load_parameters(args.files, args.pairs, smoke=args.smoke)
    result = run_notebook(args.notebook, parameters, out_root=args.out, name=args.name, kernel=args.kernel,
                          live=args.name or Path(args.notebook).stem)
    if result.ok:
        print(f"ok: {result.folder}")
        for key, value in result.metrics.items():
            print(f"  {key}: {value}")
    return 0 if result.ok else 1


def _sweep_command(args: argparse.Namespace) -> int:
    grid, base = load_grid(args.grid)
    base.update(load_parameters(args.files, args.pairs, smoke=args.smoke))
    result = sweep(args.notebook, grid, base_parameters=base, out_root=args.out, name=args.name, kernel=args.kernel)
    failed = [run for run in result.runs if not run.ok]
    print(f"{len(result.runs) - len(failed)}/{len(result.runs)} runs ok: {result.folder}")
    print(f"  table: {result.folder / 'sweep.md'}\n  plot: {result.folder / 'sweep.png'}")
    return 1 if failed else 0


def add_runner_commands(subparsers) -> None:
    """Register `mm1lab run` and `mm1lab sweep` on the CLI's subparsers."""
    p = subparsers.add_parser("run", help="execute a notebook with papermill into papermill_runs/")
    _add_common(p)
    p.set_defaults(func=_run_command)

    p = subparsers.add_parser("sweep", help="run a notebook over a grid of parameters; table + plot")
    _add_common(p)
    p.add_argument("--grid", required=True, metavar="GRID.yaml",
                   help="YAML `{key: [v1, v2], ...}` plus optional `base: {key: value}`")
    p.set_defaults(func=_sweep_command)
