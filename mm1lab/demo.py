"""`mm1lab demo`, the main job: pre-train -> SFT -> evaluate -> probe the tiny MM1 on ShapeWorld, through the runner.

Each stage is a notebook executed with papermill into one demo folder (`papermill_runs/<timestamp>-demo/`), so the
executed notebooks, loss curves, score plots and checkpoints sit side by side. The run ends with a summary
(scores beside their majority baselines), printed and written as `summary.json` in the demo folder.
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

# Calibrated on the 2-core CPU (docs/benchmarks.md): the whole job stays under 15 minutes there. Counting is the
# slowest skill: it appears only after ~20k counting examples, hence the long SFT stage (colour needs far fewer).
PLAN = {
    "02_pretrain": dict(STEPS=800, BATCH_SIZE=16, SEQ_LEN=256),
    "03_sft": dict(STEPS=2000, BATCH_SIZE=32, LR=1e-3),
    "04_evaluate": dict(N=100, SHOTS=[0, 4], PRETRAIN_TASKS=["caption", "color", "count", "shape", "text"],
                        SFT_TASKS=["color", "count", "shape", "pope", "multi_image"]),
    "05_probe": dict(N_EXAMPLES=2),
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


def run_pipeline(*, smoke: bool = False, out_root: str | Path = "papermill_runs") -> dict:
    """Run the four stages through the runner; returns the summary (also written as summary.json)."""
    from mm1lab.runner import run_notebook

    out_root = Path(out_root)
    folder = out_root / f"{datetime.now():%Y%m%d-%H%M%S}-demo"
    folder.mkdir(parents=True)
    t0, runs, summary = time.perf_counter(), {}, {"folder": str(folder.resolve()), "smoke": smoke}

    def stage(name: str, **links) -> Path | None:
        params = {**PLAN[name], **links}
        print(f"\n== {name} {'(SMOKE) ' if smoke else ''}{json.dumps(params, default=str)}", flush=True)
        result = run_notebook(NOTEBOOKS / f"{name}.ipynb", params, out_root=out_root, smoke=smoke,
                              folder=folder / name, progress=False)
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
            f"{suite}/{task}": dict(score=s["score"], baseline=s["baseline"], metric=s["metric"], n=s["n"])
            for suite, tasks in (("sft", scores.get("sft", {})), ("pretrain", scores.get("pretrain", {})))
            for task, s in tasks.items()})
        summary["figures"] = sorted(str(p) for p in folder.rglob("*.png") if "train" not in p.parts)
    summary["seconds"] = round(time.perf_counter() - t0)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """The printed end of the demo: scores beside baselines, then where everything is."""
    lines = [f"mm1lab demo: {summary['status']} in {summary['seconds']} s" + (" (SMOKE)" if summary["smoke"] else "")]
    if summary["status"] != "ok":
        lines.append(f"  stage {summary['failed']} failed: {summary['error']}")
    else:
        lines.append(f"  {'task':<28}{'metric':<14}{'score':>8}{'baseline':>10}{'n':>6}")
        for key, t in summary["tasks"].items():
            mark = "  <- above baseline" if t["score"] > t["baseline"] else ""
            lines.append(f"  {key:<28}{t['metric']:<14}{t['score']:>8.3f}{t['baseline']:>10.3f}{t['n']:>6}{mark}")
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
    summary = run_pipeline(smoke=bool(args and args.smoke), out_root=getattr(args, "out", "papermill_runs"))
    print()
    print(format_summary(summary))
    return 0 if summary["status"] == "ok" else 1
