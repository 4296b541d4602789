"""How well an encoder reads, and what it keeps: probes on the sign's word, shape and count, and its features' spread.
(docs/stage0.md, "Feature anchoring: reading without the collapse")

    python docs/bench/encoder_reading.py stage0/clip-tiny <exported CLIP or vision folder> ...

Per folder: the attention-pooled probe on the sign's word and linear probes on the first object's shape and the
object count, each trained on 2,048 held-out scenes and tested on 256 (`mm1lab.stage0.evaluate.linear_probe`;
chance about 0.08, 0.36 and 0.29). The spread is the mean over channels of each channel's standard deviation
across the patches of 256 held-out scenes, beside the features' RMS: an encoder trained on one narrow task keeps
its scale but its channels vary less from patch to patch (clip-tiny 0.73; CoCa on sign captions alone 0.26).
"""

from __future__ import annotations

import argparse

import torch

from mm1lab.pretrained import load_hf_vision
from mm1lab.stage0 import evaluate as E

PROBES = (("text", "attention"), ("shape", "linear"), ("count", "linear"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="CLIP or vision-tower folders, e.g. stage0/clip-tiny")
    args = parser.parse_args()
    for folder in args.folders:
        torch.manual_seed(0)
        encoder = load_hf_vision(folder)
        v = encoder.cfg
        images, _ = E.attribute_set("shape", 256, v.image_size, mean=v.image_mean, std=v.image_std)
        with torch.no_grad():
            features = E.patch_features(encoder, images).flatten(0, 1)          # (scenes x patches, channels)
        spread, rms = features.std(0).mean().item(), features.pow(2).mean().sqrt().item()
        probes = {name: E.linear_probe(encoder, name, n_train=2048, n_test=256, kind=kind)["score"]
                  for name, kind in PROBES}
        print(f"{folder}: word {probes['text']:.3f}, shape {probes['shape']:.3f}, count {probes['count']:.3f}; "
              f"spread {spread:.2f}, RMS {rms:.2f}", flush=True)


if __name__ == "__main__":
    main()
