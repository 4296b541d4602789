"""Issue 14's calibration floor, like for like (docs/stage0.md, "The calibration floor, like for like").

    mm1lab train configs/stage0-clip-calibration.yaml          # the issue's recipe: easy-world dense captions only
    mm1lab stage0 export runs/stage0-clip-calibration --out clip-calibration
    python docs/bench/calibration_floor.py stage0/clip-tiny clip-calibration stage0/aim-tiny

The issue gives its floor as numbers (R@1 0.94 among 256, count probe 1.00, shape probe 0.86) from a probe we do
not have. This scores every folder the same way, so the shipped encoders can be set beside the floor's own recipe:
- image-to-caption retrieval R@1 among 256 easy-world scenes (CLIP folders only; chance 0.004);
- `mm1lab stage0 ship`'s linear probe (every patch in place, 300 full-batch AdamW steps) on the object count and
  the first object's shape, on 1,024 held-out scenes instead of ship's 256 (a standard error near 0.01, not 0.02),
  trained on ship's 2,048 scenes and on 8,192, each at two probe seeds. Over 4,096 features (64 patches x 64
  channels) and 2,048 scenes the probe is short of data, so the larger set says how much that costs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mm1lab.stage0 import evaluate as E
from mm1lab.stage0.ship import has_text_tower


def load_encoder(folder: str):
    """(vision encoder, CLIP or None) from a stage-0 folder: a whole CLIP, or a vision tower / AIM trunk alone."""
    if has_text_tower(Path(folder)):
        from mm1lab.stage0.export import load_clip

        clip = load_clip(folder)
        return clip.vision, clip
    from mm1lab.pretrained import load_hf_vision

    return load_hf_vision(folder), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="stage-0 folders (CLIPModel, CLIPVisionModel or SiglipVisionModel)")
    p.add_argument("--train", type=int, nargs="+", default=[2048, 8192], help="probe training scenes")
    p.add_argument("--test", type=int, default=1024, help="held-out probe test scenes")
    p.add_argument("--seeds", type=int, default=2, help="probe seeds (the features are the same; the probe's init)")
    p.add_argument("--retrieval", type=int, default=256, help="scenes to retrieve among")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mm1lab.data.tokenizer import load_tokenizer

    header = ["folder", f"R@1 among {args.retrieval}"]
    header += [f"{a} probe, {n} train" for a in ("count", "shape") for n in args.train]
    rows = []
    for folder in args.folders:
        encoder, clip = load_encoder(folder)
        r1 = None if clip is None else E.retrieval(clip, load_tokenizer(), n=args.retrieval)["score"]
        row = [f"`{folder}`", "-" if r1 is None else f"{r1:.3f}"]
        for attr in ("count", "shape"):
            for n_train in args.train:
                runs = [E.linear_probe(encoder, attr, n_train=n_train, n_test=args.test, seed=s)
                        for s in range(args.seeds)]
                scores = [r["score"] for r in runs]
                row.append(f"{sum(scores) / len(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})")
                print(f"{folder} {attr} train {n_train}: {scores} (majority {runs[0]['majority']:.3f})", flush=True)
        rows.append(row)
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
