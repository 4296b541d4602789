"""The collator's contract with the model: image runs of k ids, row-major image order, loss masks, padding."""

import numpy as np
import pytest
import torch
from einops import rearrange

from mm1lab.config import MM1Config
from mm1lab.data.collate import IGNORE, Collator, preprocess_image, subimage_views
from mm1lab.data.sample import DataError, Sample
from mm1lab.data.shapeworld import ShapeWorld
from mm1lab.data.streams import ShapeWorldStreams
from mm1lab.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def cfg():
    return MM1Config.preset("tiny")


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    return ShapeWorldStreams("easy", 64, cache_dir=tmp_path_factory.mktemp("cache"))


def runs(ids, image_id=3):
    """(start, length) of each run of image ids."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == image_id:
            j = i
            while j < len(ids) and ids[j] == image_id:
                j += 1
            out.append((i, j - i))
            i = j
        else:
            i += 1
    return out


def test_batch_contract(tok, cfg, streams):
    samples = [streams.interleaved(0), streams.text(0), streams.caption(1), streams.sft(2)]
    batch = Collator(tok, cfg)(samples)
    b, n = batch["input_ids"].shape
    assert b == 4 and batch["labels"].shape == (b, n) and batch["attention_mask"].dtype == torch.bool
    k = cfg.image_tokens
    all_runs = [runs(row.tolist()) for row in batch["input_ids"]]
    assert all(length % k == 0 for row in all_runs for _, length in row)   # adjacent images merge into one run
    n_images = sum(length // k for row in all_runs for _, length in row)
    assert n_images == sum(len(s.images) for s in samples) == batch["images"].shape[0]
    assert batch["images"].shape[1:] == (3, 64, 64) and batch["images"].dtype == torch.float32
    assert (batch["labels"][batch["input_ids"] == 3] == IGNORE).all()
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE).all()
    assert (batch["input_ids"][~batch["attention_mask"]] == 0).all()
    lengths = batch["attention_mask"].sum(1)
    assert all(batch["attention_mask"][i, :L].all() for i, L in enumerate(lengths))   # right padding
    assert batch["stream"] == ["interleaved", "text", "caption", "sft"] and batch["skipped"] == {}
    # row-major image order: the first images belong to sample 0, in order
    expected = torch.stack([preprocess_image(im, 64, cfg.vision.image_mean, cfg.vision.image_std)
                            for s in samples for im in s.images])
    assert torch.allclose(batch["images"], expected)


def test_pretraining_loss_covers_all_text_sft_only_answers(tok, cfg, streams):
    collator = Collator(tok, cfg)
    pre = collator([streams.caption(3)])
    text_positions = (pre["input_ids"] != 3) & pre["attention_mask"]
    assert (pre["labels"][text_positions] == pre["input_ids"][text_positions]).all()
    sft = collator([streams.sft(3)])
    learned = [i for i, label in zip(sft["input_ids"][0].tolist(), sft["labels"][0].tolist()) if label != IGNORE]
    turns = streams.sft_turns(3)
    answers = "".join(f" {t['content']}<|end|>" for t in turns if t["role"] == "assistant") + "<eos>"
    assert tok.decode(learned, skip_special=False) == answers


def test_normalisation(cfg):
    image = ShapeWorld("easy", 64, cache=False).image(0)
    x = preprocess_image(image, 64, cfg.vision.image_mean, cfg.vision.image_std)
    raw = torch.from_numpy(np.asarray(image, dtype=np.float32)) / 255
    mean, std = torch.tensor(cfg.vision.image_mean), torch.tensor(cfg.vision.image_std)
    assert torch.allclose(x, rearrange((raw - mean) / std, "h w c -> c h w"), atol=1e-6)


def test_high_res_sub_images(tok, cfg, streams):
    image = ShapeWorld("easy", 128, cache=False).image(5)
    views = subimage_views(image, 64, cfg.vision.image_mean, cfg.vision.image_std)
    assert views.shape == (5, 3, 64, 64)
    full = preprocess_image(image, 128, cfg.vision.image_mean, cfg.vision.image_std)
    assert torch.allclose(views[2], full[:, :64, 64:])   # crop (0, 1): top right
    sample = Sample.pretrain("caption", "<image>Caption: shapes", [image])
    batch = Collator(tok, cfg, high_res=True)([sample])
    assert runs(batch["input_ids"][0].tolist()) == [(1, 5 * cfg.image_tokens)]
    assert batch["images"].shape == (5, 3, 64, 64)


def test_packing_keeps_order_and_fits(tok, cfg, streams):
    samples = [streams.caption(i) for i in range(6)] + [streams.text(0)]
    padded = Collator(tok, cfg, max_len=64)(samples)   # same truncation as the packed rows
    packed = Collator(tok, cfg, pack=True, max_len=64)(samples)
    assert packed["input_ids"].shape[1] <= 64 and packed["input_ids"].shape[0] < len(samples)
    assert torch.equal(packed["images"], padded["images"])
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()
    assert packed["segment_ids"].max() >= 2


def test_truncation_never_splits_an_image(tok, cfg, streams):
    sample = streams.interleaved(0)
    k = cfg.image_tokens
    batch = Collator(tok, cfg, max_len=k * 2 + 10)([sample])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) <= 2 * k + 10
    assert sum(length for _, length in runs(ids)) == k * batch["images"].shape[0]


def test_image_cap(tok, cfg):
    images = [ShapeWorld("easy", 64, cache=False).image(i) for i in range(20)]
    doc = Sample.pretrain("interleaved", "".join(f"<image> picture {i}\n" for i in range(20)), images)
    batch = Collator(tok, cfg)([doc])
    assert batch["images"].shape[0] == cfg.max_images == 16
    sft = Sample.chat([{"role": "user", "content": "<image>" * 20 + "Hi"}, {"role": "assistant", "content": "ok"}],
                      images)
    assert Collator(tok, cfg)([sft])["skipped"] == {"too_many_images": 1}


@pytest.mark.parametrize("sample, reason", [
    (Sample.pretrain("caption", "<image><image>Caption: two markers", ["one image"]), "image_count_mismatch"),
    (Sample.pretrain("caption", "Caption: no marker", ["one image"]), "image_count_mismatch"),
    (Sample.pretrain("text", "", []), "empty_text"),
    (Sample.chat([{"role": "user", "content": "hi " * 600}, {"role": "assistant", "content": "ok"}]), "too_long"),
])
def test_bad_samples_are_skipped_and_counted_or_raise_in_strict_mode(tok, cfg, streams, sample, reason):
    good = streams.caption(0)
    batch = Collator(tok, cfg, max_len=256)([good, sample, good])
    assert batch["skipped"] == {reason: 1} and batch["input_ids"].shape[0] == 2
    with pytest.raises(DataError, match=reason):
        Collator(tok, cfg, max_len=256, strict=True)([good, sample])


def test_encode_prompt_for_evaluation(tok, cfg, streams):
    from mm1lab.data.evalsets import eval_set

    item = eval_set("count", n=1, shots=4, cache=False)[0]
    inputs = Collator(tok, cfg).encode_prompt(item["prompt"], item["images"])
    assert inputs["images"].shape[0] == 5
    assert len(runs(inputs["input_ids"][0].tolist())) == 5
    assert inputs["input_ids"][0, -1].item() != tok.eos_id
