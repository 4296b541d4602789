"""Bad data files, written here for real: each gets a counted skip (by reason) or an error naming file and place.

One test per class of issue 13: image paths that leave the data root, bytes that are not UTF-8, decompression
bombs, damaged sidecars, tar shards cut on a block boundary, skips after a stream's last sample, images that only
fail in the collator, and evaluation entries with missing or wrongly typed fields. docs/robustness.md lists them.
"""

import io
import json
import shutil
import struct
import tarfile
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from mm1lab.config import MM1Config
from mm1lab.data.collate import Collator
from mm1lab.data.eval_formats import read_coco_captions, read_vqav2
from mm1lab.data.formats import caption_stream, interleaved_stream, iter_samples, llava_stream, text_stream
from mm1lab.data.mixture import MixtureDataset
from mm1lab.data.sample import SKIP_REASONS, DataError, Sample, Skips
from mm1lab.data.tokenizer import default_samples_dir, load_tokenizer
from mm1lab.eval.items import coco_items

SAMPLES = default_samples_dir()


def read(stream, **kw):
    skips = Skips(**kw)
    return list(iter_samples(stream, skips=skips)), dict(skips.counts)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header declaring a huge image (900M pixels) over almost no data: what a decompression bomb is."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rewrite_tar(src, dst, edit):
    """Copy a shard member by member; `edit(name, data)` returns new bytes, or None to drop the member."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for member in tin:
            data = edit(member.name, tin.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                tout.addfile(member, io.BytesIO(data))


# ---- security ---------------------------------------------------------------------------------------------
def test_image_paths_may_not_leave_the_root(tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(SAMPLES / "interleaved", root)
    secret = tmp_path / "secret.jpg"
    shutil.copy(root / "images" / "doc00000_01.jpg", secret)   # a real image outside the root
    lines = (root / "docs.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines[:3]]
    for doc, ref in zip(docs, ["../secret.jpg", str(secret), "images/../images/doc00000_01.jpg"]):
        doc["images"][next(i for i, im in enumerate(doc["images"]) if im)] = ref
    (root / "docs.jsonl").write_text("\n".join(map(json.dumps, docs)) + "\n")
    samples, skipped = read(interleaved_stream(root / "docs.jsonl"))
    assert samples == [] and skipped == {"path_outside_root": 3}
    # absolute paths are an explicit opt-in; '..' never is
    samples, skipped = read(interleaved_stream(root / "docs.jsonl", allow_absolute_paths=True))
    assert len(samples) == 1 and skipped == {"path_outside_root": 2}
    with pytest.raises(DataError, match=r"docs.jsonl:1 image \d+: path_outside_root: '../secret.jpg' contains"):
        read(interleaved_stream(root / "docs.jsonl"), strict=True)


def test_llava_and_coco_paths_may_not_leave_the_root(tmp_path):
    shutil.copytree(SAMPLES / "sft", tmp_path / "sft")
    data = json.loads((tmp_path / "sft" / "llava_instruct.json").read_text())
    one = next(d for d in data if isinstance(d.get("image"), str))
    one["image"] = "../../etc/passwd"
    (tmp_path / "sft" / "one.json").write_text(json.dumps([one]))
    assert read(llava_stream(tmp_path / "sft" / "one.json")) == ([], {"path_outside_root": 1})

    shutil.copytree(SAMPLES / "eval" / "coco", tmp_path / "coco")
    ann = json.loads((tmp_path / "coco" / "captions_val2014.json").read_text())
    ann["images"][0]["file_name"] = "../captions_val2014.json"
    ann["images"][1]["file_name"] = str((tmp_path / "coco" / "val2014" / ann["images"][1]["file_name"]).resolve())
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(ann))
    skips = Skips()
    items = read_coco_captions(tmp_path / "coco" / "ann.json", tmp_path / "coco" / "val2014", skips=skips)
    assert len(items) == 10 and dict(skips.counts) == {"path_outside_root": 2}
    items = read_coco_captions(tmp_path / "coco" / "ann.json", tmp_path / "coco" / "val2014",
                               allow_absolute_paths=True)
    assert len(items) == 11


def test_a_decompression_bomb_is_one_counted_skip(tmp_path):
    rewrite_tar(SAMPLES / "captions" / "00000.tar", tmp_path / "00000.tar",
                lambda name, data: png_bomb() if name == "000000001.jpg" else data)
    samples, skipped = read(caption_stream(tmp_path))
    assert len(samples) == 23 and skipped == {"image_too_large": 1}
    # ... also inside a lenient mixture, which used to stop at it
    mixture = MixtureDataset({"caption": caption_stream(tmp_path)})
    got = list(mixture)
    assert len(got) == 23 and sum(s.skipped.get("image_too_large", 0) for s in got) == 1


# ---- samples that used to load silently wrong -------------------------------------------------------------
def test_bytes_that_are_not_utf8_are_bad_text(tmp_path):
    rewrite_tar(SAMPLES / "captions" / "00000.tar", tmp_path / "00000.tar",
                lambda name, data: b"a red \xff circle" if name == "000000002.txt" else data)
    samples, skipped = read(caption_stream(tmp_path))
    assert len(samples) == 23 and skipped == {"bad_text": 1}
    assert not any("\ufffd" in s.text for s in samples)
    with pytest.raises(DataError, match=r"00000.tar:000000002.txt: bad_text: byte 6 \(b'\\xff'\) is not UTF-8"):
        read(caption_stream(tmp_path), strict=True)

    lines = (SAMPLES / "text" / "train.jsonl").read_bytes().splitlines(keepends=True)[:4]
    lines[1] = lines[1].replace(b"balls", b"ball\xc3", 1)     # a cut multi-byte sequence
    lines[2] = b'{"text": "lone \\ud800 surrogate"}\n'      # valid JSON, not text
    (tmp_path / "t.jsonl").write_bytes(b"".join(lines))
    samples, skipped = read(text_stream(tmp_path / "t.jsonl"))
    assert len(samples) == 2 and skipped == {"bad_text": 2}
    with pytest.raises(DataError, match=r"t.jsonl:2: bad_text"):
        read(text_stream(tmp_path / "t.jsonl"), strict=True)


def test_pathological_records_are_skips_not_crashes(tmp_path):
    lines = ['{"text": ' + "9" * 5000 + "}",                       # beyond Python's int-parsing limit
             "[" * 100_000,                                          # nested beyond the recursion limit
             json.dumps({"texts": ["a", None], "images": [None, "x" * 5000 + ".jpg"]}),   # a name too long to look up
             json.dumps({"texts": ["a", None], "images": [None, "images/doc00000_01.jpg"]})]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copytree(SAMPLES / "interleaved" / "images", tmp_path / "images")
    assert read(text_stream(tmp_path / "t.jsonl"))[1] == {"bad_json": 2, "bad_record": 2}
    samples, skipped = read(interleaved_stream(tmp_path / "t.jsonl"))
    assert len(samples) == 1 and skipped == {"bad_json": 2, "missing_image": 1}


def test_a_broken_json_sidecar_skips_its_sample(tmp_path):
    rewrite_tar(SAMPLES / "captions" / "00000.tar", tmp_path / "00000.tar",
                lambda name, data: data[:10] if name == "000000004.json" else b"[1]" if name == "000000005.json"
                else None if name == "000000006.json" else data)   # a missing sidecar is fine
    samples, skipped = read(caption_stream(tmp_path))
    assert len(samples) == 22 and skipped == {"bad_json": 2}
    with pytest.raises(DataError, match=r"000000004.json \(metadata sidecar\): bad_json"):
        read(caption_stream(tmp_path), strict=True)


@pytest.mark.parametrize("damage", ["cut_on_block", "flipped_header", "concatenated"])
def test_a_tar_cut_on_a_block_boundary_is_reported(tmp_path, damage):
    blob = (SAMPLES / "captions" / "00000.tar").read_bytes()
    with tarfile.open(SAMPLES / "captions" / "00000.tar") as tar:
        members = tar.getmembers()
    header = members[6].offset                                  # sample 000000002 starts here
    if damage == "cut_on_block":
        blob = blob[:header]
    elif damage == "flipped_header":
        blob = blob[:header] + bytes([blob[header] ^ 0x20]) + blob[header + 1:]   # its checksum no longer holds
    else:
        blob = blob + blob
    (tmp_path / "00000.tar").write_bytes(blob)
    samples, skipped = read(caption_stream(tmp_path))
    assert skipped == {"truncated_tar": 1} and len(samples) == (24 if damage == "concatenated" else 2)
    with pytest.raises(DataError, match=r"00000.tar: truncated_tar: .*after 000000001.json"
                       if damage != "concatenated" else r"00000.tar: truncated_tar: more data after"):
        read(caption_stream(tmp_path), strict=True)


def test_skips_after_the_last_good_sample_reach_the_batches(tmp_path):
    lines = (SAMPLES / "text" / "train.jsonl").read_text().splitlines()[:5] + ['{"text": ""}', "{broken"]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    collate = Collator(load_tokenizer(), MM1Config.preset("tiny"), max_len=256)
    for workers in (0, 2):
        loader = DataLoader(MixtureDataset({"text": text_stream(tmp_path / "t.jsonl")}), batch_size=2,
                            collate_fn=collate, num_workers=workers)
        skipped, rows = Counter(), 0
        for batch in loader:
            skipped.update(batch["skipped"])
            rows += batch["input_ids"].shape[0]
        assert rows == 5 and skipped == {"empty_text": 1, "bad_json": 1}, workers


# ---- crashes that now name the sample ---------------------------------------------------------------------
def test_collator_skips_images_that_fail_late(tmp_path):
    jpeg = (SAMPLES / "interleaved" / "images" / "doc00000_01.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    lazy = Image.open(tmp_path / "cut.jpg")                     # opened, not decoded: fails only on load
    collate = Collator(load_tokenizer(), MM1Config.preset("tiny"), max_len=256)
    good = Sample.pretrain("caption", "<image>a red circle", [np.zeros((8, 8, 3), np.uint8)], id="good")
    batch = collate([Sample.pretrain("caption", "<image>a red circle", [lazy], id="lazy-1"),
                     Sample.pretrain("caption", "<image>a blue square", [np.zeros((0, 0, 3), np.uint8)], id="empty-2"),
                     good])
    assert batch["skipped"] == {"bad_image": 2} and batch["input_ids"].shape[0] == 1
    assert any("caption sample lazy-1 image 0: bad_image" in e for e in collate.skips.examples)
    assert any("caption sample empty-2 image 0: bad_image: 0x0 image" in e for e in collate.skips.examples)
    strict = Collator(load_tokenizer(), MM1Config.preset("tiny"), max_len=256, strict=True)
    with pytest.raises(DataError, match="caption sample empty-2 image 0: bad_image"):
        strict([Sample.pretrain("caption", "<image>x", [np.zeros((0, 0, 3), np.uint8)], id="empty-2")])


def test_eval_entries_with_bad_fields_are_named(tmp_path):
    shutil.copytree(SAMPLES / "eval", tmp_path, dirs_exist_ok=True)
    ann = json.loads((tmp_path / "coco" / "captions_val2014.json").read_text())
    del ann["images"][2]["file_name"]
    ann["annotations"][0]["image_id"] = "4"
    (tmp_path / "coco" / "captions_val2014.json").write_text(json.dumps(ann))
    skips = Skips()
    items = read_coco_captions(tmp_path / "coco" / "captions_val2014.json", tmp_path / "coco" / "val2014",
                               skips=skips)
    assert len(items) == 11 and dict(skips.counts) == {"bad_record": 2}
    assert any("captions_val2014.json images[2] id=" in e and "'file_name'" in e for e in skips.examples)
    with pytest.raises(DataError, match=r"captions_val2014.json annotations\[0\]: bad_record"):
        read_coco_captions(tmp_path / "coco" / "captions_val2014.json", tmp_path / "coco" / "val2014", strict=True)
    with pytest.warns(UserWarning, match=r"2 entries skipped \{'bad_record': 2\} and left out of the evaluation"):
        assert len(coco_items(tmp_path / "coco", 0, n=4)) == 4   # `mm1lab eval --suite coco` says so too

    vqa = tmp_path / "vqav2"
    questions = json.loads((vqa / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    questions["questions"][1]["image_id"] = "twelve"
    (vqa / "q.json").write_text(json.dumps(questions))
    skips = Skips()
    items = read_vqav2(vqa / "q.json", vqa / "v2_mscoco_val2014_annotations.json", vqa / "val2014", skips=skips)
    assert len(items) == 35 and dict(skips.counts) == {"bad_record": 1}
    assert "q.json questions[1] question_id=" in skips.examples[0]


def test_every_skip_reason_is_declared_and_documented():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    raised = set()
    for file in (root / "mm1lab").rglob("*.py"):
        text = file.read_text()
        raised |= {part.split('"')[0] for part in text.split('SkipSample("')[1:]}
    assert raised <= set(SKIP_REASONS), raised - set(SKIP_REASONS)
    doc = (root / "docs" / "robustness.md").read_text()
    assert all(f"`{reason}`" in doc for reason in SKIP_REASONS)
