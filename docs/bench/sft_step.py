"""Seconds per step of the demo's SFT configuration, from a pre-trained checkpoint (docs/benchmarks.md).

    python docs/bench/sft_step.py papermill_runs/<demo>/02_pretrain/train --steps 60 [--optimizer muon]
        [--workers 0 --threads 2] [--freeze vision | --freeze '']

Trains `--steps` steps of `mm1lab.demo.PLAN["03_sft"]` into a temporary folder and prints one JSON line: the mean
step time of the logged 5-step intervals after the first two, and the last loss (equal code gives equal losses,
so a speed change that alters the numbers shows here).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from mm1lab import demo
from mm1lab.train import read_metrics, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a pre-training run (02_pretrain's train folder) or checkpoint")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"))
    p.add_argument("--freeze", default=None, help="comma-separated parts kept fixed (default: the plan's FREEZE)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plan = demo.PLAN["03_sft"]
    freeze = plan.get("FREEZE", []) if args.freeze is None else [part for part in args.freeze.split(",") if part]
    with tempfile.TemporaryDirectory() as out:
        result = train(dict(
            stage="sft", name="sft", out_dir=out, steps=args.steps, batch_size=plan["BATCH_SIZE"],
            init_from=args.checkpoint, freeze={part: True for part in freeze},
            optim=dict(name=args.optimizer, lr=plan["LR"], warmup_steps=10, lr_scale=plan.get("LR_SCALE", {})),
            data=dict(source="shapeworld", difficulty="easy", seq_len=256, pack=plan["PACK"], seed=0,
                      mixture={"sft": 1.0, **plan["EXTRA_STREAMS"]}, multi_image_share=plan["MULTI_IMAGE_SHARE"],
                      question_mix=plan["QUESTION_MIX"], num_workers=args.workers),
            checkpoint=dict(every=10**9, keep=1), track=dict(log_every=5, progress=False, tensorboard=False)))
        rows = read_metrics(result.run_dir)
    times = [r["step_time"] for r in rows[2:]]
    print(json.dumps(dict(optimizer=args.optimizer, freeze=freeze, workers=args.workers, threads=args.threads,
                          steps=args.steps, step_s=round(sum(times) / len(times), 4), last_loss=rows[-1]["loss"])))


if __name__ == "__main__":
    main()
