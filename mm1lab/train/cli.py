"""`mm1lab train CONFIG.yaml [--set key=value ...]`, also runnable as `python -m mm1lab.train.cli CONFIG.yaml`.

Under torchrun the same command trains data-parallel: `torchrun --nproc-per-node 8 -m mm1lab.train.cli CONFIG.yaml`.
Exit codes: 0 finished, 130 interrupted (Ctrl-C, checkpoint written), 3 stopped on non-finite loss, 2 bad config.
"""

from __future__ import annotations

import argparse
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record


def _train(args: argparse.Namespace) -> int:
    from mm1lab.train.distributed import close_distributed
    from mm1lab.train.trainer import TrainingError, train

    try:
        result = train(args.config, overrides=args.set)
    except TrainingError as exc:
        print(f"mm1lab train: stopped: {exc}", file=sys.stderr)
        return 3
    finally:
        close_distributed()
    loss = result.metrics.get("loss", float("nan"))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.status} at step {result.step}: loss {loss:.4f}; checkpoint {result.checkpoint}; "
              f"metrics {result.run_dir / 'metrics.jsonl'}")
    return 130 if result.status == "interrupted" else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` arguments: a config path and repeatable --set overrides."""
    parser.add_argument("config", help="training config (YAML), e.g. configs/pretrain-tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set steps=200 --set optim.lr=1e-3 (repeatable)")
    parser.set_defaults(func=_train)


def add_train_commands(subparsers) -> None:
    """Register `train` on the `mm1lab` command's subparsers."""
    p = subparsers.add_parser("train", help="pre-train or fine-tune (SFT, align) from a YAML config; resumes")
    add_arguments(p)


@record   # under torchrun, an uncaught error goes to the rank's error file (mm1lab.train.launch reads it)
def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m mm1lab.train.cli`."""
    parser = argparse.ArgumentParser(prog="mm1lab train", description="train an MM1 model from a YAML config")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:   # config errors say what to fix; no traceback needed
        print(f"mm1lab train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
