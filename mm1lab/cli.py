"""The `mm1lab` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import json
import sys


def _presets(args: argparse.Namespace) -> int:
    from mm1lab.params import format_table, preset_tables

    rows = preset_tables(args.names or None)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mm1lab.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="mm1lab", description="MM1-style multimodal LLM workbench")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="parameter counts of every preset (counted on the meta device)")
    p.add_argument("names", nargs="*", help="presets to show (default: all)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per preset")
    p.set_defaults(func=_presets)

    p = sub.add_parser("demo", help="the main job: build, train, evaluate and probe the tiny model")
    p.add_argument("--quick", action="store_true", help="a seconds-long model tour instead of the full demo")
    p.add_argument("--smoke", action="store_true", help="the whole pipeline in SMOKE mode (tiny steps; for tests)")
    p.add_argument("--out", default="papermill_runs", help="where the demo folder goes (default: papermill_runs)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of both training stages (default 0, the README's table); the evaluation items stay")
    p.add_argument("--long", action="store_true",
                   help="4,000 pre-training and 2,800 SFT steps instead of 1,000 + 1,400, with more POPE questions, "
                        "the encoder that reads (stage0/clip-tiny-ocr) and signs in both stages, text-rich documents "
                        "included (about 22 minutes on 2 cores)")
    p.set_defaults(func=_demo)

    # Each package registers its own subcommands (imported here so `mm1lab presets` starts fast).
    from mm1lab.ablate.cli import add_ablate_commands
    from mm1lab.bench.cli import add_bench_commands
    from mm1lab.data.cli import add_data_commands
    from mm1lab.eval.cli import add_eval_commands
    from mm1lab.export_cli import add_export_commands
    from mm1lab.runner_cli import add_runner_commands
    from mm1lab.stage0.cli import add_stage0_commands
    from mm1lab.train.cli import add_train_commands

    for add in (add_data_commands, add_train_commands, add_stage0_commands, add_eval_commands, add_runner_commands,
                add_ablate_commands, add_bench_commands, add_export_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as exc:   # our errors say what to fix; no traceback needed
        print(f"mm1lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
