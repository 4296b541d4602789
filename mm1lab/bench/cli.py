"""`mm1lab bench [--json] [--quick] [--only train,decode,data,peer,machine]`; `--only loader,scaling` runs the
pre-training-at-scale sections (mm1lab.bench.pretrain) and `--only lora` LoRA against full SFT (mm1lab.bench.lora),
which the default run leaves out.

Standalone: `python -m mm1lab.bench.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys

from mm1lab.bench.suite import EXTRA_SECTIONS, SECTIONS


def _bench(args: argparse.Namespace) -> int:
    from mm1lab.bench.suite import format_report, run_suite

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else None
    log = None if args.json else (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    results = run_suite(quick=args.quick, only=only, compile=args.compile, log=log)
    print(json.dumps(results, indent=2) if args.json else format_report(results))
    return 0


def add_bench_commands(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to an argparse subparsers object (the `mm1lab` CLI calls this)."""
    p = subparsers.add_parser("bench", help="training/decoding/data speed vs transformers' LLaVA, with MFU")
    p.add_argument("--json", action="store_true", help="print every figure as JSON (`summary` holds the headline)")
    p.add_argument("--quick", action="store_true", help="smoke sizes: seconds, not minutes (figures are not final)")
    p.add_argument("--only", default=None,
                   help=f"comma-separated sections of {','.join(SECTIONS)} (default: all), or of "
                        f"{','.join(EXTRA_SECTIONS)} (pre-training at scale: named only)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time both models under torch.compile (default: on for full runs, off with --quick)")
    p.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m mm1lab.bench.cli [--json] [--quick] [--only ...]`."""
    parser = argparse.ArgumentParser(prog="mm1lab")
    add_bench_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"mm1lab bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
