"""`mm1lab stage0 ...`: MM1's stage 0 from the command line (training itself is `mm1lab train` with a stage-0 config).

    mm1lab train configs/stage0-clip-tiny.yaml             # CLIP (or stage: aim / text) into runs/<name>/
    mm1lab stage0 export runs/stage0-clip-tiny --out my-clip   # a training run -> a transformers folder
    mm1lab stage0 eval stage0/clip-tiny                   # zero-shot, retrieval and probes, beside chance
    mm1lab stage0 ship [--only clip-tiny,lm-tiny]         # regenerate the shipped stage0/ folders
    mm1lab stage0 ship --score-only                       # score them again, weights and training record kept
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _kind(folder: Path) -> str:
    from mm1lab.safetensors_io import read_json

    config = read_json(folder / "config.json")
    return config.get("mm1lab_objective") or {"llama": "lm"}.get(config.get("model_type"), "aim")


def _eval(args: argparse.Namespace) -> int:
    from mm1lab.stage0.ship import score

    folder = Path(args.folder)
    scores = score(_kind(folder), folder)
    print(json.dumps(scores, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from mm1lab.folders import find_checkpoint
    from mm1lab.stage0.ship import export
    from mm1lab.train.checkpoint import load_checkpoint
    from mm1lab.train.config import parse_model
    from mm1lab.train.objectives import OBJECTIVES

    found = find_checkpoint(args.run)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {args.run}: pass a stage-0 training run or checkpoint folder")
    ckpt = load_checkpoint(found, weights_only=True)
    objective = json.loads((found / "meta.json").read_text()).get("objective", "vlm")
    model = OBJECTIVES[objective](parse_model(objective, ckpt.model_config)).build()
    model.load_state_dict(ckpt.weights)
    kind = "lm" if objective == "vlm" else objective
    folder = export(kind, model.eval(), Path(args.out), dict(run=str(found), step=ckpt.step))
    print(f"wrote {folder} ({kind})")
    return 0


def _ship(args: argparse.Namespace) -> int:
    from mm1lab.stage0.ship import rescore, ship

    names = args.only.split(",") if args.only else None
    if args.score_only:
        rescore(names, out=args.out, smoke=args.smoke)
    else:
        ship(names, out=args.out, runs=args.runs, smoke=args.smoke)
    return 0


def add_stage0_commands(subparsers) -> None:
    """Register `stage0` on the `mm1lab` command's subparsers."""
    p = subparsers.add_parser("stage0", help="MM1's stage 0: export, evaluate and ship pre-trained encoders and LM",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage0_command", required=True, metavar="COMMAND")
    e = sub.add_parser("eval", help="score an encoder or LM folder on held-out scenes, beside chance")
    e.add_argument("folder", help="a CLIP, AIM (SigLIP-layout) or LM folder, e.g. stage0/clip-tiny")
    e.set_defaults(func=_eval)
    x = sub.add_parser("export", help="export a stage-0 training run as a transformers folder")
    x.add_argument("run", help="a training run (or checkpoint) of stage clip, aim or text")
    x.add_argument("--out", required=True, help="the folder to write")
    x.set_defaults(func=_export)
    s = sub.add_parser("ship", help="train, export and score the shipped stage-0 models into stage0/")
    s.add_argument("--only", help="comma-separated names (default: all of mm1lab.stage0.ship.SHIPPED)")
    s.add_argument("--out", default="stage0", help="where the folders go (default: stage0/)")
    s.add_argument("--runs", default="runs/stage0", help="where the training runs go (resumable)")
    s.add_argument("--smoke", action="store_true", help="2 steps each, tiny scoring sets (for tests)")
    s.add_argument("--score-only", action="store_true",
                   help="score the shipped folders again without training (weights and training times kept)")
    s.set_defaults(func=_ship)
