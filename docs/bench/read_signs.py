"""Can the tiny ViT read the sign's word at all? Train it on the word directly and watch held-out accuracy.
(docs/stage0.md, "Why no encoder reads the sign")

    OMP_NUM_THREADS=1 python docs/bench/read_signs.py stage0/clip-tiny --steps 800
    OMP_NUM_THREADS=1 python docs/bench/read_signs.py stage0/clip-tiny --scratch --steps 800
    python docs/bench/read_signs.py stage0/clip-tiny --steps 800 --save runs/clip-tiny-reads

`--save` writes the trained encoder as a CLIP vision folder, which `VISION_INIT` in `02_pretrain` (or
`pretrained: {vision: ...}`) loads: a diagnostic of whether the VLM answers OCR questions when its encoder reads.
It is trained on the answers' words, so it is an upper bound for that question, never a stage-0 model.

The encoder (initialised from FOLDER, or fresh with its shape: `--scratch`) and an attention-pooling head are
trained together, with cross-entropy on which of the 20 words the medium world's sign holds: 4,096 training
scenes, batches of 128, AdamW at 1e-3. This is a capacity test, not a stage-0 objective: it says whether the ViT
can learn to read at this resolution when every example asks for it, which CLIP's captions cannot do as directly.
Held-out accuracy is on the 512 test scenes of `mm1lab.stage0.evaluate.attribute_set("text")` (chance 0.08).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mm1lab.data.shapeworld import WORDS
from mm1lab.pretrained import load_hf_vision
from mm1lab.stage0.evaluate import AttentionProbe, attribute_set
from mm1lab.stage0.export import export_clip_vision
from mm1lab.vision import VisionEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an encoder folder (stage0/clip-tiny, or any CLIP / SigLIP vision folder)")
    parser.add_argument("--scratch", action="store_true", help="the folder's architecture, freshly initialised")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--every", type=int, default=100, help="report held-out accuracy every this many steps")
    parser.add_argument("--save", help="write the trained encoder here as a CLIP vision folder (a diagnostic)")
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder = load_hf_vision(args.folder)
    if args.scratch:
        encoder = VisionEncoder(encoder.cfg)
    v = encoder.cfg
    x_train, y_train = attribute_set("text", 4096, v.image_size, split="train", mean=v.image_mean, std=v.image_std)
    x_test, y_test = attribute_set("text", 512, v.image_size, mean=v.image_mean, std=v.image_std)
    index = {w: i for i, w in enumerate(WORDS)}
    t_train, t_test = (torch.tensor([index[y] for y in ys]) for ys in (y_train, y_test))
    head = AttentionProbe(v.width, len(WORDS))
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.01)
    draw, start = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(1, args.steps + 1):
        encoder.train()
        batch = torch.randint(0, len(x_train), (128,), generator=draw)
        loss = F.cross_entropy(head(encoder(x_train[batch]).features), t_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            encoder.eval()
            with torch.no_grad():
                test = (head(encoder(x_test).features).argmax(1) == t_test).float().mean().item()
                train = (head(encoder(x_train[:512]).features).argmax(1) == t_train[:512]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, train {train:.3f}, held-out {test:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    if args.save:
        tower = SimpleNamespace(vision=encoder, cfg=SimpleNamespace(vision=v, loss="read_signs"))
        info = {"trained_by": f"docs/bench/read_signs.py {args.folder} --steps {args.steps} (a diagnostic, "
                              "trained on the sign's word: never a stage-0 model)"}
        print(f"wrote {export_clip_vision(tower, args.save, info=info)}")


if __name__ == "__main__":
    main()
