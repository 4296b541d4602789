"""`mm1lab demo`, the main job: the tiny MM1 on ShapeWorld, started as MM1 starts, from stage 0.

    stage 0 (shipped in stage0/): a CLIP encoder and a text-pre-trained LM
    -> VLM pre-training (02_pretrain) -> SFT (03_sft) -> evaluation (04_evaluate) -> probing (05_probe)

Each stage is a notebook executed with papermill into one demo folder (`papermill_runs/<timestamp>-demo/`), so the
executed notebooks, loss curves, score plots and checkpoints sit side by side. The run ends with a summary (every
task of both suites, each score with its 95% interval beside its baseline), printed and written as `summary.json`.
`--quick` instead builds the tiny model, follows one batch through it and prints every preset's size (seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import torch

from mm1lab.config import MM1Config
from mm1lab.model import MM1Model
from mm1lab.params import format_table, preset_tables

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

STAGE0 = ROOT / "stage0"
# Question types in the training text. The easy world's own mix never asks where a shape is, and its documents never
# compare two images; MM1's claims include both, so the demo teaches them (the evaluation items do not change).
# Colour is read almost at once; the share goes to the questions that need an object bound to its place. Shape most
# of all: pre-training learns shape only from enough shape questions (docs/stage0.md, "Pre-training learns shape"),
# so they are over half of its questions, about SFT's rate per step, and 90% of a document's one-image passages ask.
QUESTIONS = {"color": 0.05, "count": 0.2, "count_steps": 0.05, "shape": 1.0, "position": 0.25, "pope": 0.2,
             "ocr": 0.1}
QA_SHARE = 0.9
# Conversations also ask for brief captions and detailed descriptions (LLaVA's detail data).
SFT_QUESTIONS = {"color": 0.05, "count": 0.1, "count_steps": 0.05, "shape": 0.2, "position": 0.2, "pope": 0.2,
                 "ocr": 0.1, "caption": 0.07, "describe": 0.03}
# The pre-trained encoder and LM learn at a fraction of the fresh connector's rate: at the full rate the first
# steps undo what stage 0 learned (measured: 0-shot CIDEr-D 0.73 -> 1.93, counting 0.25 -> 0.39 after 600 steps).
PRETRAINED_LR_SCALE = {"vision": 0.1, "lm": 0.3, "connector": 1.0}
# Sized for 10 minutes on 2 cores (docs/benchmarks.md, "The main job"): 1,000 pre-training and 1,400 SFT steps.
# Pre-training at 1,000 steps passes k-shot multi-image comparison, which 500 did not; SFT with the encoder frozen
# (MM1 trains it; LLaVA-1.5 does not; a step is about 15% cheaper) passed every chat row but OCR at three seeds at
# 1,400 steps from it. 500 + 2,100 passed 3 rows fewer at each seed, and 1,500 + 1,000 lost chat POPE at two of
# three seeds (docs/stage0.md, "More pre-training, less SFT").
# Muon, not MM1's AdamW, on the LM's and connector's matrices: shape is a faint direction in the image features, and
# AdamW does not learn it within the demo's steps (docs/stage0.md, "Muon").
OPTIMIZER = "muon"
PLAN = {
    "02_pretrain": dict(STEPS=1000, BATCH_SIZE=16, SEQ_LEN=256, OPTIMIZER=OPTIMIZER,
                        VISION_INIT=str(STAGE0 / "clip-tiny"), LM_INIT=str(STAGE0 / "lm-tiny"),
                        LR_SCALE=PRETRAINED_LR_SCALE,
                        EXTRA_STREAMS={"medium:interleaved": 10, "medium:caption": 5}, QUESTION_MIX=QUESTIONS,
                        QA_SHARE=QA_SHARE, COMPARE_SHARE=0.3),
    "03_sft": dict(STEPS=1400, BATCH_SIZE=32, LR=2e-3, OPTIMIZER=OPTIMIZER, FREEZE=["vision"], PACK=True,
                   MULTI_IMAGE_SHARE=0.2, QUESTION_MIX=SFT_QUESTIONS,
                   EXTRA_STREAMS={"medium:sft": 0.15, "sft_text": 0.1}),
    "04_evaluate": dict(N=200, SHOTS=[0, 4]),          # every task of both suites (the notebook's default)
    "05_probe": dict(N_EXAMPLES=2),
}
# `mm1lab demo --long`: the steps that the rows failing at 10 minutes need, about 22 minutes on 2 cores. k-shot
# shape passes between 2,000 and 3,000 pre-training steps and 4-shot position by 4,000; twice the SFT steps carried
# chat shape and POPE past their all-or-nothing point in every run we tried. k-shot POPE needs more POPE questions
# too: at 4,000 steps it stayed at chance with the 10-minute mix (0.49 / 0.485) and passed with POPE at 38% of the
# questions (0.67 / 0.65); at 1,000 steps that share does not pass 4-shot POPE. For OCR it starts from the encoder
# that reads (`stage0/clip-tiny-ocr`) and adds signs to both stages: sign captions in pre-training, sign
# conversations in SFT. From clip-tiny with the same data chat OCR stayed at 0.00 (docs/stage0.md, "`--long` reads").
# Text-rich documents ask what each sign says (`interleaved_ocr`): with sign captions alone, and the usual documents'
# rare sign questions, the pre-trained model read the word into the caption only, and k-shot OCR stayed at 0.00.
# The captions quote the word (`ocr`, as stage 0's recipe does): beside the same documents, unquoted ones (`ocr_plain`,
# the answer's spelling) passed 115 rows over four seeds against 118, and chat POPE 0.54-0.835 against 0.965-0.985
# (docs/stage0.md, "k-shot OCR" and "Quoted captions with the documents").
LONG_PLAN = {
    "02_pretrain": dict(STEPS=4000, QUESTION_MIX={**QUESTIONS, "pope": 1.0}, VISION_INIT=str(STAGE0 / "clip-tiny-ocr"),
                        EXTRA_STREAMS={**PLAN["02_pretrain"]["EXTRA_STREAMS"], "medium:ocr": 30,
                                       "medium:interleaved_ocr": 10}),
    "03_sft": dict(STEPS=2800, EXTRA_STREAMS={**PLAN["03_sft"]["EXTRA_STREAMS"], "medium:sft_ocr": 0.15}),
}


def model_tour(seed: int = 0) -> None:
    """Build the tiny preset and print the shape of a batch at each stage, then a short generation."""
    torch.manual_seed(seed)
    cfg = MM1Config.preset("tiny")
    model = MM1Model(cfg).eval()
    k, size = cfg.image_tokens, cfg.vision.image_size
    ids = torch.randint(10, cfg.lm.vocab_size, (2, 12 + k))
    ids[0, 1:1 + k] = cfg.image_token_id                   # sample 0: one image after the first token
    images = torch.randn(1, 3, size, size)
    vis = model.vision(images)
    tokens = model.connector(vis.features)
    out = model(ids, images, labels=ids)
    new = model.generate(ids, images, max_new_tokens=8, stop_tokens=[])
    print(f"tiny MM1: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"  images            {tuple(images.shape)}")
    print(f"  encoder features  {tuple(vis.features.shape)}  ({vis.grid[0]}x{vis.grid[1]} patches)")
    print(f"  connector tokens  {tuple(tokens.shape)}  ({cfg.connector.kind}, k={k})")
    print(f"  LM logits         {tuple(out.logits.shape)}  loss at init {out.loss.item():.3f}")
    print(f"  generated         {new.tolist()}")


def run_pipeline(*, smoke: bool = False, out_root: str | Path = "papermill_runs", seed: int = 0,
                 long: bool = False) -> dict:
    """Run the four stages through the runner; returns the summary (also written as summary.json).

    seed: the `SEED` of both training stages (the connector's initialisation and the data order). The evaluation
    items never change with it. At seed 0 the demo gives the README's table; see docs/stage0.md for seeds 1 and 2.
    long: `LONG_PLAN`'s steps and pre-training questions instead of the plan's (everything else as the plan has it).
    """
    from mm1lab.runner import run_notebook

    out_root = Path(out_root)
    folder = out_root / f"{datetime.now():%Y%m%d-%H%M%S}-demo{'-long' if long else ''}"
    folder.mkdir(parents=True)
    t0, runs = time.perf_counter(), {}
    summary = {"folder": str(folder.resolve()), "smoke": smoke, "seed": seed, "long": long}

    def stage(name: str, **links) -> Path | None:
        params = {**PLAN[name], **links, **({"SEED": seed} if name in ("02_pretrain", "03_sft") else {}),
                  **(LONG_PLAN.get(name, {}) if long else {})}
        print(f"\n== {name} {'(SMOKE) ' if smoke else ''}{json.dumps(params, default=str)}", flush=True)
        result = run_notebook(NOTEBOOKS / f"{name}.ipynb", params, out_root=out_root, smoke=smoke,
                              folder=folder / name, live=name)
        runs[name] = dict(status=result.status, folder=str(result.folder), seconds=round(time.perf_counter() - t0))
        if not result.ok:
            summary.update(status="failed", failed=name, error=result.error, runs=runs)
            return None
        return result.folder

    pre = stage("02_pretrain")
    sft = pre and stage("03_sft", INIT_FROM=str(pre / "train"))
    ev = sft and stage("04_evaluate", PRETRAIN_CHECKPOINT=str(pre / "train"), SFT_CHECKPOINT=str(sft / "train"))
    probe = ev and stage("05_probe", CHECKPOINT=str(sft / "train"), PRETRAIN_CHECKPOINT=str(pre / "train"))
    if probe:
        scores = json.loads((ev / "metrics.json").read_text())
        summary.update(status="ok", runs=runs, tasks={
            f"{suite}/{task}": dict(score=s["score"], interval=s.get("interval"), baseline=s["baseline"],
                                    above_baseline=s.get("above_baseline"), metric=s["metric"], n=s["n"])
            for suite, tasks in (("sft", scores.get("sft", {})), ("pretrain", scores.get("pretrain", {})))
            for task, s in tasks.items()})
        summary["figures"] = sorted(str(p) for p in folder.rglob("*.png") if "train" not in p.parts)
    summary["seconds"] = round(time.perf_counter() - t0)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """The printed end of the demo: scores beside baselines, then where everything is."""
    long = f" (--long: {LONG_PLAN['02_pretrain']['STEPS']:,} + {LONG_PLAN['03_sft']['STEPS']:,} steps)"
    lines = [f"mm1lab demo: {summary['status']} in {summary['seconds']} s" + (" (SMOKE)" if summary["smoke"] else "")
             + (f", seed {summary['seed']}" if summary.get("seed") else "") + (long if summary.get("long") else "")]
    if summary["status"] != "ok":
        lines.append(f"  stage {summary['failed']} failed: {summary['error']}")
    else:
        lines.append(f"  {'task':<28}{'metric':<14}{'score':>8}  {'95% interval':<16}{'baseline':>9}{'n':>6}")
        for key, t in summary["tasks"].items():
            low, high = t.get("interval") or (t["score"], t["score"])
            mark = "  above" if t.get("above_baseline") else "  NOT above"
            lines.append(f"  {key:<28}{t['metric']:<14}{t['score']:>8.3f}  [{low:.3f}, {high:.3f}]  "
                         f"{t['baseline']:>9.3f}{t['n']:>6}{mark}")
    lines.append(f"  executed notebooks and figures: {summary['folder']}")
    for name, run in summary.get("runs", {}).items():
        lines.append(f"    {name:<12} {run['status']:<7} {run['folder']}")
    lines.append(f"  summary: {Path(summary['folder']) / 'summary.json'}")
    return "\n".join(lines)


def main(args: argparse.Namespace | None = None) -> int:
    if args is not None and args.quick:
        model_tour()
        print()
        print(format_table(preset_tables()))
        return 0
    summary = run_pipeline(smoke=bool(args and args.smoke), out_root=getattr(args, "out", "papermill_runs"),
                           seed=getattr(args, "seed", 0), long=bool(getattr(args, "long", False)))
    print()
    print(format_summary(summary))
    return 0 if summary["status"] == "ok" else 1
