"""Why a demo task stays at baseline: what the model answers, and where the information is lost (docs/stage0.md).

    python docs/bench/diagnose_demo.py papermill_runs/<demo>/03_sft/train --tasks position,shape,pope

1. Answers: the chat model's answers to held-out items of each task, counted, beside the right answers.
2. Probes: linear and attention-pooled probes for shape and position on the encoder output and on the connector
   output inside the VLM, and on fresh (untrained) connectors of other kinds over the same encoder.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import types

import torch

from mm1lab.connectors.registry import build_connector
from mm1lab.eval.items import shapeworld_items
from mm1lab.eval.predictor import ModelPredictor
from mm1lab.load import load_model
from mm1lab.stage0.evaluate import linear_probe


class ThroughConnector(torch.nn.Module):
    """The VLM's encoder followed by `connector`, shaped like an encoder for `linear_probe`."""

    def __init__(self, model, connector):
        super().__init__()
        self.model, self.connector, self.cfg = model, connector, model.vision.cfg

    def forward(self, images):
        return types.SimpleNamespace(features=self.connector(self.model.vision(images).features))


def answers(model, tokenizer, task: str, n: int) -> None:
    items = shapeworld_items(task, 0, n=n, resolution=model.cfg.vision.image_size)
    predictor = ModelPredictor(model, tokenizer, chat=True)
    said = [a for i in range(0, n, 16) for a in predictor(items[i:i + 16])]
    right = [it["answers"] for it in items]
    accuracy = sum(a in r for a, r in zip(said, right)) / n
    print(f"{task}: accuracy {accuracy:.3f} on {n}")
    print(f"  answers given  {collections.Counter(said).most_common(8)}")
    print(f"  right answers  {collections.Counter(r[0] for r in right).most_common(8)}")


def probes(model, fresh: list[str]) -> None:
    v = model.cfg.vision
    grid = v.image_size // v.patch_size
    readers = {"encoder output": model.vision, "connector output": ThroughConnector(model, model.connector)}
    for spec in fresh:                                   # "kind:tokens", e.g. "mlp:64"
        kind, tokens = spec.split(":")
        torch.manual_seed(0)
        cfg = dataclasses.replace(model.cfg.connector, kind=kind, num_tokens=int(tokens))
        connector = build_connector(cfg, d_vision=v.width, d_lm=model.cfg.lm.width, grid=grid).eval()
        readers[f"fresh {spec}"] = ThroughConnector(model, connector)
    for name, reader in readers.items():
        for attribute in ("shape", "position"):
            for kind in ("linear", "attention"):
                r = linear_probe(reader, attribute, n_train=1024, n_test=256, kind=kind)
                print(f"{name:28s} {attribute:9s} {kind:9s} {r['score']:.3f} (majority {r['majority']:.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a chat (SFT) run, checkpoint or exported folder")
    p.add_argument("--tasks", default="position,shape,pope")
    p.add_argument("--n", type=int, default=192)
    p.add_argument("--fresh", default="c-abstractor:16,c-abstractor:64,avgpool:16,mlp:64",
                   help="untrained connectors to probe over the same encoder, kind:tokens")
    args = p.parse_args()
    loaded = load_model(args.checkpoint)
    model = loaded.model.eval()
    with torch.no_grad():
        for task in args.tasks.split(","):
            answers(model, loaded.tokenizer, task, args.n)
    probes(model, [s for s in args.fresh.split(",") if s])


if __name__ == "__main__":
    main()
