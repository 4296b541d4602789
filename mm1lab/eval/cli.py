"""`mm1lab eval`: evaluate a checkpoint on a suite and write the JSON report and its figure.

    mm1lab eval --checkpoint runs/tiny --suite shapeworld-pretrain --shots 0,4,8 --n 50
    mm1lab eval --checkpoint runs/tiny-sft --suite shapeworld-sft
    mm1lab eval --checkpoint runs/tiny --suite coco --coco-dir ~/data/coco
    python -m mm1lab.eval.cli --checkpoint runs/tiny --suite vqav2 --vqav2-dir ~/data/vqav2   (standalone)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots takes comma-separated integers like 0,4,8, got {text!r}") from None
    if not shots or min(shots) < 0:
        raise argparse.ArgumentTypeError(f"--shots needs at least one integer >= 0, got {text!r}")
    return shots


def run_eval(args: argparse.Namespace) -> int:
    """Load the checkpoint, evaluate, write `eval_<suite>.json` and `.png` into --out (default <checkpoint>/eval)."""
    import torch

    from mm1lab.eval.harness import evaluate
    from mm1lab.eval.report import write_report
    from mm1lab.load import load_model

    torch.manual_seed(args.seed)
    ckpt = load_model(args.checkpoint, device=args.device)
    report = evaluate(ckpt.model, ckpt.tokenizer, args.suite, shots=args.shots, n=args.n, batch_size=args.batch_size,
                      difficulty=args.difficulty, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      tasks=args.tasks.split(",") if args.tasks else None, rank_choices=args.rank_choices,
                      coco_dir=args.coco_dir, vqav2_dir=args.vqav2_dir, checkpoint=str(ckpt.path),
                      progress=None if args.quiet else print)
    json_path, png_path = write_report(report, args.out or Path(ckpt.path) / "eval")
    for key, reason in report["skipped"].items():
        print(f"skipped {key}: {reason}")
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_eval_commands(subparsers) -> None:
    """Register `eval` on an argparse subparsers object (the `mm1lab` command calls this)."""
    from mm1lab.eval.suites import SUITES

    p = subparsers.add_parser("eval", help="evaluate a checkpoint: k-shot / SFT suites, JSON report and figure",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a run, checkpoint, exported or notebook run folder (see mm1lab.load_model)")
    p.add_argument("--suite", default="shapeworld-pretrain", choices=sorted(SUITES))
    p.add_argument("--shots", type=_shots, default=None, help="e.g. 0,4,8 (default: the suite's; SFT suites: 0)")
    p.add_argument("--n", type=int, default=50, help="items per task and shot count (default 50)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <checkpoint>/eval)")
    p.add_argument("--coco-dir", type=Path, default=None, help="COCO captions root (docs/evaluation.md)")
    p.add_argument("--vqav2-dir", type=Path, default=None, help="VQAv2 root (docs/evaluation.md)")
    p.add_argument("--difficulty", default="easy", help="ShapeWorld difficulty: easy, medium or hard")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 48 for captions, 16 OCR, else 8")
    p.add_argument("--rank-choices", action="store_true", help="answer closed-set tasks by log-likelihood ranking")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no per-task progress lines")
    p.set_defaults(func=run_eval)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m mm1lab.eval.cli [eval] --checkpoint DIR ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["eval"]:
        argv = ["eval", *argv]
    parser = argparse.ArgumentParser(prog="mm1lab")
    add_eval_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:   # our errors say what to fix; no traceback needed
        print(f"mm1lab eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
