"""Data for MM1 on a laptop: ShapeWorld (the embedded world), MM1's data types, real formats, mixtures, collation.

Files, one concept each:
    shapeworld.py  scenes (the ground truth), rendering, the render cache, difficulty presets
    text.py        captions, dense captions, questions, interleaved documents, SFT turns, text corpus
    prompts.py     every template: chat turns, pre-training text, k-shot prompts
    tokenizer.py   byte-level BPE with fixed special ids
    streams.py     ShapeWorld as MM1's streams and the 45:45:10 mixture
    evalsets.py    held-out evaluation sets (caption, color, count, ..., pope, multi_image, text)
    formats.py     WebDataset captions, OBELICS JSONL, LLaVA JSON, text JSONL (read + write)
    eval_formats.py COCO captions, VQAv2 (read + write)
    guards.py      checks on untrusted input: image paths inside the root, UTF-8 text, fully decoded images
    mixture.py     weighted, sharded, resumable IterableDataset
    collate.py     tokenize, expand image markers, pack/pad, loss masks, image preprocessing, sub-images
    sample.py      the Sample record and bad-input bookkeeping
    sample_files.py  `mm1lab data samples`: writes the committed data_samples/
"""

from mm1lab.data.collate import Collator, preprocess_image, subimage_views
from mm1lab.data.evalsets import TASKS, eval_set
from mm1lab.data.mixture import IndexedStream, LoaderTracker, MixtureDataset, RecordStream
from mm1lab.data.sample import DataError, Sample, Skips, SkipSample
from mm1lab.data.shapeworld import DIFFICULTIES, Difficulty, Scene, ShapeWorld, make_scene, render
from mm1lab.data.streams import ShapeWorldStreams, mm1_weights, shapeworld_mixture, shapeworld_sft
from mm1lab.data.tokenizer import MM1Tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "DIFFICULTIES", "TASKS", "Collator", "DataError", "Difficulty", "IndexedStream", "LoaderTracker", "MM1Tokenizer",
    "MixtureDataset", "RecordStream", "Sample", "Scene", "ShapeWorld", "ShapeWorldStreams", "SkipSample", "Skips",
    "eval_set", "load_tokenizer", "make_scene", "mm1_weights", "preprocess_image", "render", "shapeworld_mixture",
    "shapeworld_sft", "subimage_views", "train_tokenizer",
]
