"""`mm1lab ablate LESSON [--scale cpu|gpu] [--seeds N]`: run one of MM1's lessons (or `all`) and give its verdict.

    mm1lab ablate data-synthetic                  # 2 arms x 3 seeds of 02_pretrain, ~10 min on 2 cores
    mm1lab ablate all --publish                   # every lesson, then docs/ablations.md
    mm1lab ablate data-captions,data-text --publish   # several lessons (finished runs are reused, not redone)
    mm1lab ablate connector,data-text:5 --publish     # data-text with 5 seeds per arm, connector with --seeds
    mm1lab ablate encoder --scale gpu --vision PATH/clip-vit-l-336 --lm PATH/llama-1b

A killed run of the same command continues where it stopped (finished runs are kept). At the cpu scale the runs
go side by side, one per core on one thread each (`--jobs` to choose).
"""

from __future__ import annotations

import argparse
import json

from mm1lab.ablate.lessons import LESSONS, ROOT, SCALES


def lesson_seeds(spec: str, seeds: int) -> dict[str, int]:
    """Lesson name -> seeds per arm, from "all", "a,b" or "a:5,b" (a lesson's own count wins over `seeds`)."""
    out = {}
    for item in (list(LESSONS) if spec == "all" else spec.split(",")):
        name, _, count = item.strip().partition(":")
        if name not in LESSONS:
            raise SystemExit(f"mm1lab ablate: unknown lesson {name!r}; choose from {', '.join(LESSONS)}, a "
                             "comma-separated list of them (each may end in :SEEDS, e.g. data-text:5), or all")
        if count and not (count.isdigit() and int(count) >= 1):
            raise SystemExit(f"mm1lab ablate: {item!r}: the seeds after ':' must be a whole number of at least 1")
        out[name] = int(count) if count else seeds
    return out


def _ablate(args: argparse.Namespace) -> int:
    from mm1lab.ablate.report import publish
    from mm1lab.ablate.suite import run_lesson

    lessons = lesson_seeds(args.lesson, args.seeds)
    parts = {k: v for k, v in (("clip-tiny", args.vision), ("lm-tiny", args.lm)) if v}
    results = []
    for lesson, seeds in lessons.items():
        result = run_lesson(lesson, scale=args.scale, seeds=seeds, out=args.out, smoke=args.smoke, parts=parts,
                            jobs=args.jobs)
        print(f"{lesson}: {result['verdict']} ({result['reason']}); runs {result['seconds'] / 60:.1f} min, "
              f"wall {result['wall_seconds'] / 60:.1f} min")
        for e in result["effects"]:
            print(f"  {e['name']}: {e['mean']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]")
        results.append(result)
    if args.publish:
        print(f"wrote {publish(results, ROOT / 'docs' / 'ablations.md', images=ROOT / 'docs' / 'img')}")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0 if all(r["verdict"] != "incomplete" for r in results) else 1


def add_ablate_commands(subparsers) -> None:
    """Register `ablate` on the `mm1lab` command's subparsers."""
    p = subparsers.add_parser("ablate", help="run one of MM1's ablation lessons with seeds and give its verdict",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lesson", help=f"one of {', '.join(LESSONS)}; several, comma-separated, each optionally "
                                  "LESSON:SEEDS; or all")
    p.add_argument("--scale", choices=list(SCALES), default="cpu")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--jobs", type=int, help="runs at once, each on cores/jobs threads (default: one per core, up to "
                                            "8, at the cpu scale; 1 at the gpu scale)")
    p.add_argument("--out", default="papermill_runs", help="where the lesson folders go (and are resumed from)")
    p.add_argument("--smoke", action="store_true", help="every run in SMOKE mode (for tests)")
    p.add_argument("--vision", help="gpu scale: the encoder folder the arms start from (a public CLIP)")
    p.add_argument("--lm", help="gpu scale: the LM folder the arms start from (a public Llama-family LM)")
    p.add_argument("--publish", action="store_true", help="write these lessons into docs/ablations.md (lessons "
                                                          "published before and not run here keep their sections)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.set_defaults(func=_ablate)


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="mm1lab")
    add_ablate_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ablate", *sys.argv[1:]])
    sys.exit(args.func(args))
