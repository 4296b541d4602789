"""How faint is an object's shape in the features the LM reads? (docs/stage0.md, "Shape is a faint direction")

    python docs/bench/shape_signal.py stage0/clip-tiny stage0/aim-tiny stage0/clip-tiny@-2
    python docs/bench/shape_signal.py papermill_runs/<demo>/03_sft/train          # a VLM: encoder and connector
    python docs/bench/shape_signal.py --negatives stage0/clip-tiny my-clip        # CLIP folders with a text tower

1. Variance shares: on held-out easy-world scenes with one object, the share of the features' variance that the
   object's shape, colour and place explain (between-class over total variance), for the patches flattened and
   for their mean. `FOLDER@-2` reads an encoder at its second-to-last block.
2. `--negatives`: how often a CLIP embeds an image closer to its dense caption than to the caption with one shape
   word swapped (`mm1lab.stage0.evaluate.shape_swap`, also in `mm1lab stage0 eval`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from einops import rearrange

from mm1lab.data.collate import preprocess_image
from mm1lab.data.shapeworld import ShapeWorld
from mm1lab.stage0.evaluate import STAGE0_EVAL_BASE

ATTRIBUTES = ("shape", "color", "position")


def single_object_scenes(resolution: int, mean, std, n: int = 600) -> tuple[torch.Tensor, dict[str, list[str]]]:
    world, seed = ShapeWorld("easy", resolution), STAGE0_EVAL_BASE
    images, labels = [], {a: [] for a in ATTRIBUTES}
    while len(images) < n:
        scene = world.scene(seed)
        if len(scene.objects) == 1:
            images.append(preprocess_image(world.image(seed), resolution, mean, std))
            for a in ATTRIBUTES:
                labels[a].append(getattr(scene.objects[0], a))
        seed += 1
    return torch.stack(images), labels


def explained(features: torch.Tensor, labels: list[str]) -> float:
    """Between-class variance over total variance of (N, f) features for one labelling."""
    f = features - features.mean(0)
    between = sum(f[[i for i, y in enumerate(labels) if y == c]].mean(0).square().sum() * labels.count(c)
                  for c in set(labels))
    return float(between / f.square().sum())


def shares(name: str, features: torch.Tensor, labels: dict[str, list[str]], pools=("flat", "mean")) -> None:
    for pool in pools:
        f = rearrange(features, 'N n d -> N (n d)') if pool == "flat" else features.mean(1)
        print(f"{name:44s} {pool:5s} " + "  ".join(f"{a} {explained(f, labels[a]):.3f}" for a in ATTRIBUTES))


def readers(path: str) -> dict[str, tuple]:
    """{name: (fn images -> (N, n, d) features, vision config)} for a stage-0 folder or a VLM checkpoint."""
    from mm1lab.pretrained.folder import load_vision

    folder, _, layer = path.partition("@")
    config = Path(folder) / "config.json"
    if config.exists() and json.loads(config.read_text()).get("model_type") != "mm1lab":   # an encoder folder
        encoder = load_vision(folder, feature_layer=int(layer or -1)).eval()
        return {path: (lambda x: encoder(x).features, encoder.cfg)}
    from mm1lab.load import load_model  # a VLM run, checkpoint or exported mm1lab model

    model = load_model(folder).model.eval()
    return {f"{path} encoder": (lambda x: model.vision(x).features, model.cfg.vision),
            f"{path} connector": (lambda x: model.connector(model.vision(x).features), model.cfg.vision)}


def negatives(path: str, n: int = 256) -> None:
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.stage0.evaluate import shape_swap
    from mm1lab.stage0.export import load_clip

    result = shape_swap(load_clip(path), load_tokenizer(), n=n)
    print(f"{path:30s} true dense caption over its shape-swapped twin: {result['score']:.3f} of {n} (chance 0.5)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="stage-0 encoder folders (FOLDER@layer), VLM runs or checkpoints")
    p.add_argument("--negatives", action="store_true", help="CLIP folders: true caption vs shape-swapped twin")
    args = p.parse_args()
    with torch.no_grad():
        for number, path in enumerate(args.paths):
            if args.negatives:
                negatives(path)
                continue
            for name, (read, v) in readers(path).items():
                images, labels = single_object_scenes(v.image_size, v.image_mean, v.image_std)
                shares(name, read(images), labels)
                if number == 0 and name in (path, f"{path} encoder"):
                    shares("(pixels)", rearrange(images, 'N c h w -> N 1 (c h w)'), labels, pools=("flat",))


if __name__ == "__main__":
    main()
