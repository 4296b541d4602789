"""`mm1lab data samples OUT_DIR`: the committed sample of every real format, plus the tokenizer, from ShapeWorld.

Everything is a pure function of fixed seeds, and the writers are deterministic, so running the command twice gives
identical bytes (a test checks it). The images are 128 px ("medium" world), twice the tiny preset's 64 px, so the
sub-image decomposition has real detail to crop.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from mm1lab.data.eval_formats import write_coco_captions, write_vqav2
from mm1lab.data.evalsets import eval_seed
from mm1lab.data.formats import write_caption_shards, write_interleaved_jsonl, write_llava_json, write_text_jsonl
from mm1lab.data.prompts import chat_segments
from mm1lab.data.shapeworld import DIFFICULTIES
from mm1lab.data.streams import ShapeWorldStreams
from mm1lab.data.text import alt_text, ask, dense_caption, textcore_item
from mm1lab.data.tokenizer import DEFAULT_VOCAB_SIZE, IMAGE, MM1Tokenizer, train_tokenizer

RESOLUTION = 128
DIFFICULTY = "medium"
COUNTS = {"captions": 48, "interleaved": 12, "sft": 24, "text": 48, "textcore": 64, "coco": 12, "vqav2": 12}
TOKENIZER_DOCS = 400   # documents per stream and difficulty in the tokenizer's training corpus

README = """# data_samples/

A small sample of every data format mm1lab reads, all drawn from ShapeWorld ("medium" world, 128 px images), plus
the tokenizer. Everything here is generated, bit for bit, by one command:

    mm1lab data samples data_samples/        # or: python -m mm1lab.data.cli samples data_samples/

- `tokenizer.json`: HF tokenizers byte-level BPE trained on ShapeWorld text (vocabulary at most 2048). Special
  tokens `<pad>`=0 `<bos>`=1 `<eos>`=2 `<image>`=3 `<|user|>`=4 `<|assistant|>`=5 `<|end|>`=6.
  Read with `mm1lab.data.tokenizer.load_tokenizer()`.
- `captions/00000.tar`, `00001.tar`: WebDataset shards in img2dataset layout (`000000000.jpg`, `.txt` caption,
  `.json` metadata); every 4th caption is a synthetic dense one (`"synthetic": true`).
  Read with `mm1lab.data.formats.caption_stream("data_samples/captions")`.
- `interleaved/docs.jsonl` + `images/`: OBELICS-style documents, aligned `texts` / `images` lists (exactly one of
  the two is null at each position), relative image paths. Read with `formats.interleaved_stream(...)`.
- `sft/llava_instruct.json` + `images/`: LLaVA conversations; `image` is a path, or a list for two-image questions,
  and `<image>` marks where each goes. Read with `formats.llava_stream(...)`.
- `text/train.jsonl`: text-only corpus, `{"text": ...}` per line. Read with `formats.text_stream(...)`.
- `text/textcore.jsonl`: the held-out text benchmark (TextCore analogue): `prompt`, `choices`, `label`
  (`mm1lab.data.evalsets.eval_set("text", ...)` makes more).
- `eval/coco/captions_val2014.json` + `val2014/`: COCO-captions annotations (5 references per image) and
  COCO-named images. Read with `mm1lab.data.eval_formats.read_coco_captions(...)`.
- `eval/vqav2/v2_OpenEnded_mscoco_val2014_questions.json`, `v2_mscoco_val2014_annotations.json` + `val2014/`:
  VQAv2 questions and annotations (ten answers each). Read with `eval_formats.read_vqav2(...)`.

Evaluation images come from held-out seeds (2**31 and above), training samples from seeds below. Point the same
readers at real CC3M shards, OBELICS, LLaVA-Instruct, COCO or VQAv2 files to use real data.
"""


def tokenizer_corpus(docs: int = TOKENIZER_DOCS) -> list[str]:
    """Text of every stream in every difficulty (training seeds only), the text the tokenizer is trained on."""
    texts = []
    for name in DIFFICULTIES:
        sw = ShapeWorldStreams(name, cache=False)
        for i in range(docs):
            texts += [sw.caption(i).text, sw.dense(i).text, sw.interleaved(i).text, sw.text(i).text,
                      "".join(t for t, _ in chat_segments(sw.sft_turns(i)))]
    return texts


def build_tokenizer(path: str | Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> MM1Tokenizer:
    """Train the ShapeWorld tokenizer (and save it to `path` if given)."""
    return train_tokenizer(tokenizer_corpus(), vocab_size=vocab_size, path=path)


def write_samples(out_dir: str | Path, *, resolution: int = RESOLUTION, difficulty: str = DIFFICULTY) -> list[Path]:
    """Write data_samples/: tokenizer.json and a small corpus in each real format. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sw = ShapeWorldStreams(difficulty, resolution, cache=False)
    world, d = sw.world, sw.d
    build_tokenizer(out / "tokenizer.json")
    (out / "README.md").write_text(README)

    # captions: img2dataset tar shards (alt-text; every 4th is a dense caption, as a VeCap-style shard would be)
    def captions():
        for i in range(COUNTS["captions"]):
            scene, rng = world.scene(i), random.Random(f"sample-caption:{i}")
            text = dense_caption(scene) if i % 4 == 3 else alt_text(scene, rng, d)
            yield world.image(i), text, {"synthetic": i % 4 == 3, "seed": i}
    write_caption_shards(captions(), out / "captions", shard_size=24)

    # interleaved: OBELICS-style JSONL; the document text is split at the image markers into aligned lists
    docs = []
    for i in range(COUNTS["interleaved"]):
        sample = sw.interleaved(i)
        texts, images = [], []
        body = sample.text.removeprefix("<bos>").removesuffix("<eos>")
        for j, chunk in enumerate(body.split(IMAGE)):
            if j:
                texts.append(None)
                images.append(sample.images[j - 1])
            if chunk.strip():
                texts.append(chunk.strip())
                images.append(None)
        docs.append({"texts": texts, "images": images, "metadata": {"seed_index": i}})
    write_interleaved_jsonl(docs, out / "interleaved" / "docs.jsonl")

    # SFT: LLaVA JSON (some two-image conversations)
    records = [{"id": f"sw{i:05d}", "images": sw.sft(i).images, "turns": sw.sft_turns(i)}
               for i in range(COUNTS["sft"])]
    write_llava_json(records, out / "sft" / "llava_instruct.json")

    # text-only corpus and the held-out TextCore analogue
    write_text_jsonl([sw.document(i) for i in range(COUNTS["text"])], out / "text" / "train.jsonl")
    core = [textcore_item(random.Random(f"textcore:{eval_seed('text', 0, i)}")) for i in range(COUNTS["textcore"])]
    (out / "text" / "textcore.jsonl").write_text("".join(json.dumps(c, sort_keys=True) + "\n" for c in core))

    # evaluation: COCO captions and VQAv2 on held-out scenes
    coco = []
    for i in range(COUNTS["coco"]):
        seed = eval_seed("caption", 0, i)
        scene, rng = world.scene(seed), random.Random(f"sample-coco:{i}")
        clean = [alt_text(scene, rng, dataclasses.replace(d, caption_noise=0.0)) for _ in range(4)]
        coco.append((i + 1, world.image(seed), [dense_caption(scene)] + clean))
    write_coco_captions(coco, out / "eval" / "coco" / "captions_val2014.json", out / "eval" / "coco" / "val2014")
    vqa = []
    for i in range(COUNTS["vqav2"]):
        seed = eval_seed("vqa", 0, i)
        scene = world.scene(seed)
        for j, qtype in enumerate(("count", "color", "shape")):
            q, short, _ = ask(scene, qtype, random.Random(f"sample-vqa:{i}:{j}"), d)
            vqa.append({"question_id": (i + 1) * 10 + j, "image_id": i + 1, "image": world.image(seed),
                        "question": q, "answers": [short], "answer_type": "number" if qtype == "count" else "other"})
    vqa_dir = out / "eval" / "vqav2"
    vqa_dir.mkdir(parents=True, exist_ok=True)
    write_vqav2(vqa, vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json",
                vqa_dir / "v2_mscoco_val2014_annotations.json", vqa_dir / "val2014")
    return sorted(p for p in out.rglob("*") if p.is_file())
