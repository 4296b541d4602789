"""ShapeWorld data for the trainer: the `mm1lab.data` mixture as a sample source plus its collator.

The mixture is built unsharded (rank 0 of 1) on every rank: `GlobalBatches` slices each global batch per rank,
so any number of ranks sees the same samples as one process. Its `state_dict()` (positions per stream) is saved
at step boundaries; with `data.num_workers=0` (the default) resume is exact.
"""

from __future__ import annotations

from typing import Any

from mm1lab.config import MM1Config


def build_shapeworld(cfg, model_cfg: MM1Config) -> tuple[Any, Any]:
    """(MixtureDataset over `cfg.data.mixture`, Collator) for the model's image size and tokens."""
    from mm1lab.data.collate import Collator
    from mm1lab.data.mixture import MixtureDataset
    from mm1lab.data.streams import ShapeWorldStreams
    from mm1lab.data.tokenizer import load_tokenizer

    d = cfg.data
    if d.num_workers:
        raise ValueError("data.num_workers > 0 is not supported by the trainer yet: the exact-resume data state "
                         "lives in the main process; use data.num_workers=0")
    tok = load_tokenizer()
    if tok.vocab_size > model_cfg.lm.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's lm.vocab_size is "
                         f"{model_cfg.lm.vocab_size}; use a model with a vocabulary at least that large")
    if d.seq_len > model_cfg.lm.max_seq_len:
        raise ValueError(f"data.seq_len={d.seq_len} exceeds the model's lm.max_seq_len={model_cfg.lm.max_seq_len}")
    # High resolution renders at twice the encoder's size, so the 2x2 crops carry real detail (MM1's sub-images).
    size = model_cfg.vision.image_size * (2 if d.high_res else 1)
    sw = ShapeWorldStreams(d.difficulty, size, multi_image_share=d.multi_image_share)
    weights = {name: float(w) for name, w in d.mixture.items() if w > 0}
    dataset = MixtureDataset({name: sw.stream(name) for name in weights}, weights, seed=d.seed, rank=0, world_size=1)
    collator = Collator(tok, model_cfg, max_len=d.seq_len, pack=d.pack, high_res=d.high_res)
    return dataset, collator
