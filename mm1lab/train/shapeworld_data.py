"""Sample sources for the trainer: the ShapeWorld mixture (any stream of any difficulty), real corpora from files
(WebDataset caption shards, OBELICS-style JSONL, text JSONL, LLaVA), or caption shards alone, plus the VLM's collator.

Every source is a `MixtureDataset`, which `mm1lab.train.data.GlobalBatches` reads in `data.shards` shards, each by
one rank and DataLoader worker; the shards' states (positions per stream) go into every checkpoint, so resume is
exact with any `data.num_workers`.

ShapeWorld mixture keys name streams of `data.difficulty` ("caption", "dense", "interleaved", "text", "sft"), or of
another difficulty with a prefix: {"caption": 0.4, "medium:dense": 0.1} mixes the medium world's dense captions in.
File mixture keys name a format after their last colon, with their sources in `data.files`:
    mixture: {dfn:caption: 0.45, interleaved: 0.45, text: 0.10}
    files: {dfn:caption: ["s3://b/dfn/{00000..09999}.tar"], interleaved: ["/data/obelics/*.jsonl"], text: [...]}
"""

from __future__ import annotations

from typing import Any

from mm1lab.config import MM1Config

# ShapeWorld items a shard takes in a row: neighbouring scenes share a render-cache block (mm1lab.data.shapeworld),
# which is then rendered and read by one worker instead of by every worker that needs one scene of it.
RENDER_CHUNK = 64


def build_source(cfg, resolution: int) -> Any:
    """The sample source `cfg.data` describes, with images rendered (or decoded) for `resolution`."""
    from mm1lab.data.mixture import MixtureDataset

    d = cfg.data
    weights = {name: float(w) for name, w in d.mixture.items() if w > 0}
    if d.source in ("captions", "files"):
        if d.source == "captions" and not d.paths:
            raise ValueError("data.source 'captions' reads WebDataset caption shards: set data.paths to tar files, "
                             "folders, globs or URLs")
        files = {"caption": d.paths} if d.source == "captions" else d.files
        weights = {"caption": 1.0} if d.source == "captions" else weights
        return MixtureDataset(file_streams({k: files[k] for k in weights}), weights, seed=d.seed,
                              shuffle_buffer=d.shuffle_buffer, epochs=d.epochs)
    streams = shapeworld_streams(weights, d.difficulty, resolution, multi_image_share=d.multi_image_share,
                                 question_mix=d.question_mix, compare_share=d.compare_share,
                                 qa_share=d.qa_share)
    return MixtureDataset(streams, weights, seed=d.seed)


def file_streams(files: dict[str, list[str]]) -> dict[str, Any]:
    """{key: RecordStream} for `data.files`; a key's format is the part after its last colon ("dfn:caption"), and
    its samples count as that stream (per-stream losses, truncation)."""
    from mm1lab.data.formats import READERS

    return {key: READERS[key.rpartition(":")[2]](sources) for key, sources in files.items()}


def shapeworld_streams(names, difficulty: str, resolution: int, **options: Any) -> dict[str, Any]:
    """{name: stream} for mixture keys "stream" (of `difficulty`) or "difficulty:stream"; `options` go to every
    world's `ShapeWorldStreams` (multi_image_share, question_mix, compare_share, qa_share)."""
    from mm1lab.data.streams import ShapeWorldStreams

    worlds: dict[str, ShapeWorldStreams] = {}
    streams = {}
    for name in names:
        world, _, stream = name.rpartition(":")
        world = world or difficulty
        if world not in worlds:
            worlds[world] = ShapeWorldStreams(world, resolution, **options)
        streams[name] = worlds[world].stream(stream)
        streams[name].chunk = RENDER_CHUNK
    return streams


def build_shapeworld(cfg, model_cfg: MM1Config) -> tuple[Any, Any]:
    """(sample source for `cfg.data`, Collator) for the VLM: the model's image size and tokens."""
    from mm1lab.data.collate import Collator
    from mm1lab.data.tokenizer import load_tokenizer

    d = cfg.data
    tok = load_tokenizer()
    if tok.vocab_size > model_cfg.lm.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's lm.vocab_size is "
                         f"{model_cfg.lm.vocab_size}; use a model with a vocabulary at least that large")
    if d.seq_len > model_cfg.lm.max_seq_len:
        raise ValueError(f"data.seq_len={d.seq_len} exceeds the model's lm.max_seq_len={model_cfg.lm.max_seq_len}")
    # High resolution renders at twice the encoder's size, so the 2x2 crops carry real detail (MM1's sub-images).
    source = build_source(cfg, model_cfg.vision.image_size * (2 if d.high_res else 1))
    return source, Collator(tok, model_cfg, max_len=d.seq_len, pack=d.pack, pad_to_max=d.pad_to_seq_len,
                            high_res=d.high_res)
