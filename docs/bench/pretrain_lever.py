"""The demo's pre-training alone, with one lever changed, scored k-shot on the rows that fail at 10 minutes.

    OMP_NUM_THREADS=1 python docs/bench/pretrain_lever.py OUT [--seed N] [--lr LR] [--lm-scale S]
        [--connector KIND] [--pope W]

Runs `notebooks/02_pretrain.ipynb` with `mm1lab.demo.PLAN`'s parameters (1,000 steps from stage 0), changed only
where a flag says so: --lr the peak LR (default: MM1's rule, 1.49e-3 for the tiny model), --lm-scale the LM's share
of it (the plan's 0.3), --connector the connector kind (the plan's C-Abstractor), --pope the POPE questions' weight
in the question mix (the plan's 0.2). The notebook then scores shape, position, POPE, multi-image comparison and
counting 0- and 4-shot on the demo's 200 held-out items each (docs/stage0.md, "Two more levers at 10 minutes").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mm1lab import demo
from mm1lab.runner import run_notebook

TASKS = ["shape", "position", "pope", "multi_image", "count"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="peak LR (default: MM1's rule for the model's size)")
    p.add_argument("--lm-scale", type=float, help="the LM's multiple of the peak LR (default: the plan's)")
    p.add_argument("--connector", help="connector kind, e.g. avgpool (default: the plan's c-abstractor)")
    p.add_argument("--pope", type=float, help="the POPE questions' weight (default: the plan's)")
    args = p.parse_args()
    params = {**demo.PLAN["02_pretrain"], "SEED": args.seed, "LR": args.lr,
              "EVAL_N": 200, "EVAL_TASKS": TASKS, "EVAL_SHOTS": [0, 4]}
    if args.lm_scale is not None:
        params["LR_SCALE"] = {**params["LR_SCALE"], "lm": args.lm_scale}
    if args.connector:
        params["CONNECTOR"] = args.connector
    if args.pope is not None:
        params["QUESTION_MIX"] = {**params["QUESTION_MIX"], "pope": args.pope}
    name = "-".join(f"{k}{v}" for k, v in sorted(vars(args).items()) if v is not None and k != "out")
    result = run_notebook(demo.NOTEBOOKS / "02_pretrain.ipynb", params, out_root=args.out,
                          folder=Path(args.out) / name)
    if not result.ok:
        raise SystemExit(f"{name}: {result.error}")
    for key, s in json.loads((result.folder / "metrics.json").read_text())["scores"].items():
        low, high = s["interval"]
        print(f"{key:<18} {s['score']:.3f} [{low:.3f}, {high:.3f}]  baseline {s['baseline']:.3f}"
              f"{'  above' if s.get('above_baseline') else ''}")


if __name__ == "__main__":
    main()
