"""Where one CPU-scale ablation run's time goes, and fused vs unfused AdamW side by side (docs/benchmarks.md).

    OMP_NUM_THREADS=1 .venv/bin/python docs/bench/profile_lesson_run.py [--steps 40]

Trains the lessons' CPU recipe (tiny preset from stage0/clip-tiny + stage0/lm-tiny, batch 16, 256 tokens, MM1's
mixture) twice under cProfile, once with torch's default (per-tensor) AdamW and once with the fused one the trainer
now uses, then scores the lessons' evaluation (7 tasks x 0/4/8 shots x 40 items) once. Prints seconds per part.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch

from mm1lab.ablate.lessons import SCALES, STAGE0, lesson_arms
from mm1lab.data import load_tokenizer, mm1_weights
from mm1lab.eval.harness import evaluate
from mm1lab.notebook import model_dict
from mm1lab.train import train

PARTS = {"data": "next_step", "forward": "objectives.py:.*(loss)", "backward": "run_backward",
         "optimizer": "adam.py:.*(step)", "build from stage 0": "_build_model", "checkpoint": "save_checkpoint"}


def cumulative(stats: pstats.Stats, pattern: str) -> float:
    import re
    return max((v[3] for k, v in stats.stats.items() if re.search(pattern, f"{k[0]}:{k[1]}({k[2]})")), default=0.0)


def run(steps: int, fused: bool) -> tuple[dict[str, float], object]:
    cpu = SCALES["cpu"]
    arm = lesson_arms("data-captions", "cpu")["captions-50"]
    config = dict(
        stage="pretrain", name="pretrain", model=model_dict("tiny", connector="c-abstractor", resolution=64),
        pretrained={"vision": str(STAGE0 / "clip-tiny"), "lm": str(STAGE0 / "lm-tiny")},
        out_dir=str(Path(tempfile.mkdtemp()) / "train"), steps=steps, batch_size=cpu["BATCH_SIZE"], precision="fp32",
        device="cpu", seed=0, optim=dict(lr=None, warmup_steps=max(1, steps // 15)),
        data=dict(source="shapeworld", seq_len=cpu["SEQ_LEN"], pack=True, seed=0, question_mix=cpu["QUESTION_MIX"],
                  mixture=mm1_weights(arm["DENSE_SHARE"], **{k: float(v) for k, v in arm["MIXTURE"].items()})),
        checkpoint=dict(every=steps, keep=1), track=dict(log_every=5, progress=False))
    adamw = torch.optim.AdamW
    if not fused:   # the default per-tensor implementation, as before
        torch.optim.AdamW = lambda *a, fused=None, **k: adamw(*a, **k)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    try:
        profiler.enable()
        result = train(config)
        profiler.disable()
    finally:
        torch.optim.AdamW = adamw
    stats = pstats.Stats(profiler)
    parts = {name: cumulative(stats, pattern) for name, pattern in PARTS.items()}
    parts["total"] = time.perf_counter() - t0
    parts["per step"] = (parts["total"] - parts["build from stage 0"]) / steps
    return parts, result.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for fused in (False, True):
        parts, model = run(args.steps, fused)
        print(f"{'fused' if fused else 'default'} AdamW, {args.steps} steps: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    t0 = time.perf_counter()
    evaluate(model.eval(), load_tokenizer(), "shapeworld-pretrain", shots=SCALES["cpu"]["EVAL_SHOTS"],
             tasks=SCALES["cpu"]["EVAL_TASKS"], n=SCALES["cpu"]["EVAL_N"], batch_size=32)
    print(f"evaluation ({SCALES['cpu']['EVAL_N']} items x tasks x shots): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
