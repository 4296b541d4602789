"""The demo's pipeline with another split of its steps (docs/stage0.md, "More pre-training, less SFT").

    OMP_NUM_THREADS=1 python docs/bench/demo_plan.py OUT PRE_STEPS SFT_STEPS [--shape W] [--qa-share S] [--seed N]
        [--lm-scale S]

Runs `mm1lab demo`'s four stages with `PRE_STEPS` pre-training and `SFT_STEPS` SFT steps, everything else as
`mm1lab.demo.PLAN` has it; --shape sets the pre-training question mix's shape weight, --qa-share its share of
question passages and --lm-scale the LM's multiple of pre-training's peak LR. The executed notebooks and summary.json
go to OUT/<timestamp>-demo/; the summary is printed.
"""

from __future__ import annotations

import argparse

from mm1lab import demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("pre_steps", type=int)
    p.add_argument("sft_steps", type=int)
    p.add_argument("--shape", type=float, help="the shape questions' weight in pre-training (default: the plan's)")
    p.add_argument("--qa-share", type=float, help="pre-training's share of question passages (default: the plan's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-scale", type=float, help="the LM's LR multiple in pre-training (default: the plan's)")
    args = p.parse_args()
    pre, sft = demo.PLAN["02_pretrain"], demo.PLAN["03_sft"]
    pre["STEPS"], sft["STEPS"] = args.pre_steps, args.sft_steps
    if args.shape is not None:
        pre["QUESTION_MIX"] = {**pre["QUESTION_MIX"], "shape": args.shape}
    if args.qa_share is not None:
        pre["QA_SHARE"] = args.qa_share
    if args.lm_scale is not None:
        pre["LR_SCALE"] = {**pre["LR_SCALE"], "lm": args.lm_scale}
    print(demo.format_summary(demo.run_pipeline(out_root=args.out, seed=args.seed)))


if __name__ == "__main__":
    main()
