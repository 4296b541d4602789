"""Real formats: every reader reads the shipped samples, writers round-trip, and broken files are counted or named."""

import json
import shutil
import tarfile

import pytest

from mm1lab.data.eval_formats import read_coco_captions, read_vqav2
from mm1lab.data.formats import (
    caption_stream,
    interleaved_stream,
    iter_samples,
    llava_stream,
    text_stream,
    write_caption_shards,
)
from mm1lab.data.sample import DataError, Skips
from mm1lab.data.shapeworld import ShapeWorld
from mm1lab.data.tokenizer import default_samples_dir

SAMPLES = default_samples_dir()


def read(stream, **kw):
    skips = Skips(**kw)
    return list(iter_samples(stream, skips=skips)), dict(skips.counts)


def test_shipped_samples_read_cleanly():
    for stream, kind, n in [(caption_stream(SAMPLES / "captions"), "caption", 48),
                            (interleaved_stream(SAMPLES / "interleaved" / "docs.jsonl"), "interleaved", 12),
                            (llava_stream(SAMPLES / "sft" / "llava_instruct.json"), "sft", 24),
                            (text_stream(SAMPLES / "text" / "train.jsonl"), "text", 48)]:
        samples, skipped = read(stream, strict=True)
        assert len(samples) == n and skipped == {} and {s.stream for s in samples} == {kind}
        for s in samples:
            assert s.text.count("<image>") == len(s.images)
            assert all(im.size == (128, 128) for im in s.images)
    assert any(len(s.images) == 2 for s in read(llava_stream(SAMPLES / "sft"))[0])   # multi-image SFT
    coco = read_coco_captions(SAMPLES / "eval/coco/captions_val2014.json", SAMPLES / "eval/coco/val2014", strict=True)
    assert len(coco) == 12 and all(len(i["answers"]) == 5 for i in coco)
    vqa_dir = SAMPLES / "eval/vqav2"
    vqa = read_vqav2(vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json",
                     vqa_dir / "v2_mscoco_val2014_annotations.json", vqa_dir / "val2014", strict=True)
    assert len(vqa) == 36 and all(len(i["answers"]) == 10 and i["answer"] == i["answers"][0] for i in vqa)


def test_caption_shards_round_trip(tmp_path):
    world = ShapeWorld("easy", 64, cache=False)
    items = [(world.image(i), f"caption {i}", {"seed": i}) for i in range(5)]
    paths = write_caption_shards(items, tmp_path, shard_size=2)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames() == ["000000000.jpg", "000000000.txt", "000000000.json",
                                  "000000001.jpg", "000000001.txt", "000000001.json"]
        assert json.loads(tar.extractfile("000000001.json").read())["caption"] == "caption 1"
    samples, _ = read(caption_stream(tmp_path))
    assert [s.text for s in samples] == [f"<bos><image>Caption: caption {i}<eos>" for i in range(5)]


def _rewrite_tar(src, dst, edit):
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = edit(member.name, tin.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                import io
                tout.addfile(member, io.BytesIO(data))


def test_broken_caption_shards(tmp_path):
    src = SAMPLES / "captions" / "00000.tar"
    # a corrupt JPEG (bytes cut in half), a missing image, an empty caption
    _rewrite_tar(src, tmp_path / "00000.tar", lambda name, data: (
        data[: len(data) // 2] if name == "000000001.jpg" else None if name == "000000002.jpg"
        else b" " if name == "000000003.txt" else data))
    # a truncated shard: cut mid-file
    blob = (SAMPLES / "captions" / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(blob[: len(blob) // 2 + 100])
    samples, skipped = read(caption_stream(tmp_path))
    assert skipped == {"bad_image": 1, "missing_image": 1, "empty_text": 1, "truncated_tar": 1}
    assert 24 - 3 + 1 <= len(samples) < 48 - 3
    with pytest.raises(DataError, match=r"00000.tar:000000001.*bad_image"):
        read(caption_stream(tmp_path), strict=True)


def test_broken_interleaved_jsonl(tmp_path):
    shutil.copytree(SAMPLES / "interleaved", tmp_path, dirs_exist_ok=True)
    lines = (tmp_path / "docs.jsonl").read_text().splitlines()
    doc = json.loads(lines[1])
    doc["images"][doc["images"].index(next(i for i in doc["images"] if i))] = "images/nope.jpg"
    lines[1] = json.dumps(doc)                                 # missing image path
    lines[2] = lines[2][:40]                                   # malformed JSON line
    lines[3] = json.dumps({"texts": ["a", None], "images": [None]})   # lists not aligned
    lines[4] = json.dumps({"texts": [None], "images": ["images/doc00004_01.jpg"]})   # no text at all
    first_image = next(i for i in json.loads(lines[5])["images"] if i)
    (tmp_path / first_image).write_bytes(b"not a jpeg")        # corrupt image
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    samples, skipped = read(interleaved_stream(tmp_path / "docs.jsonl"))
    assert skipped == {"missing_image": 1, "bad_json": 1, "bad_record": 1, "empty_text": 1, "bad_image": 1}
    assert len(samples) == 12 - 5
    with pytest.raises(DataError, match=r"docs.jsonl:2 .*missing_image"):
        read(interleaved_stream(tmp_path / "docs.jsonl"), strict=True)


def test_broken_llava_and_text(tmp_path):
    shutil.copytree(SAMPLES / "sft", tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / "llava_instruct.json").read_text())
    data[0]["conversations"][0]["value"] += " <image>"        # more markers than images
    data[1].pop("image")                                       # fewer images than markers
    data[2]["conversations"] = [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "  "}]
    lines = [json.dumps(d) for d in data]
    lines[3] = "{broken"
    (tmp_path / "llava.jsonl").write_text("\n".join(lines) + "\n")
    samples, skipped = read(llava_stream(tmp_path / "llava.jsonl"))
    assert skipped == {"image_count_mismatch": 2, "empty_text": 1, "bad_json": 1} and len(samples) == 20
    (tmp_path / "bad.json").write_text('[{"id": 1,\n "conversations": [}]')
    with pytest.raises(DataError, match=r"bad.json:2:\d+: malformed JSON"):
        read(llava_stream(tmp_path / "bad.json"))
    (tmp_path / "text.jsonl").write_text('{"text": "one two"}\n{"text": ""}\n{"txt": "x"}\n{"text": "ok"\n')
    samples, skipped = read(text_stream(tmp_path / "text.jsonl"))
    assert len(samples) == 1 and skipped == {"empty_text": 1, "bad_record": 1, "bad_json": 1}
    with pytest.raises(DataError, match=r"text.jsonl:2: empty_text"):
        read(text_stream(tmp_path / "text.jsonl"), strict=True)


def test_broken_eval_files(tmp_path):
    shutil.copytree(SAMPLES / "eval" / "coco", tmp_path, dirs_exist_ok=True)
    (tmp_path / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    skips = Skips()
    items = read_coco_captions(tmp_path / "captions_val2014.json", tmp_path / "val2014", skips=skips)
    assert len(items) == 11 and dict(skips.counts) == {"missing_image": 1}
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json:1"):
        read_coco_captions(tmp_path / "broken.json", tmp_path / "val2014")


def test_a_truncated_image_is_bad_even_when_another_library_allows_truncation(tmp_path):
    """lmms-eval sets Pillow's LOAD_TRUNCATED_IMAGES process-wide on import; mm1lab's readers still count a cut file."""
    from PIL import ImageFile

    from mm1lab.data.guards import open_image
    from mm1lab.data.sample import SkipSample

    with tarfile.open(SAMPLES / "captions" / "00000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        blob = tar.extractfile(member).read()
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(SkipSample) as caught:
            open_image(blob[: len(blob) // 2], "sample 1")
        assert caught.value.reason == "bad_image"
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True          # the process's setting is left as it was
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
