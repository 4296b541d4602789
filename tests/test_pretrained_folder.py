"""Whole models: MM1 built from pretrained parts in one call, and mm1lab checkpoints saved / loaded as folders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file
from test_pretrained_lm import SMALL, make_hf_lm, mm1_logits
from test_pretrained_vision import make_hf_vision

from mm1lab import MM1Model
from mm1lab.load import load_model
from mm1lab.pretrained import CheckpointError, build_mm1_from_parts
from mm1lab.pretrained.convert import export_mapped
from mm1lab.pretrained.maps import TIMM_CLIP_VIT


@pytest.fixture
def parts(tmp_path):
    vision, lm = tmp_path / "clip", tmp_path / "llama"
    tower, ref_lm = make_hf_vision(vision, "clip"), make_hf_lm(lm, "qwen2")
    return vision, lm, tower, ref_lm


def test_build_from_parts_keeps_both_pretrained_parts(parts):
    vision, lm, tower, ref_lm = parts
    model, tok = build_mm1_from_parts(vision, lm, dict(kind="avgpool", num_tokens=4), feature_layer=-2)
    cfg = model.cfg
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<image>") and cfg.pad_token_id == tok.pad_token_id
    assert cfg.vision.feature_layer == -2 and cfg.lm.vocab_size == SMALL["vocab_size"]
    images = torch.randn(1, 3, 32, 32)
    text = torch.randint(0, 20, (1, 10))
    with torch.no_grad():
        hf_vision = tower(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert (model.vision(images).features - hf_vision).abs().max() < 1e-4
        assert (mm1_logits(model.lm, text)[..., :20] - ref_lm(text).logits[..., :20]).abs().max() < 1e-4
        ids = torch.cat([text[:, :3], torch.full((1, cfg.image_tokens), cfg.image_token_id), text[:, 3:]], dim=1)
        out = model(ids, images, labels=ids)
    assert torch.isfinite(out.loss)


def test_build_from_timm_weights(tmp_path, parts):
    _, lm, _, _ = parts
    ours = MM1Model(tiny_config()).vision
    save_file(export_mapped(ours, TIMM_CLIP_VIT, depth=2, patch_size=8), tmp_path / "vit.safetensors")
    model, _ = build_mm1_from_parts(tmp_path / "vit.safetensors", lm, dict(kind="mlp", width=32),
                                    vision_options=dict(heads=4, act="gelu"))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.vision(images).features, ours(images).features)


def test_save_and_load_round_trip(tmp_path, parts):
    vision, lm, _, _ = parts
    model, tok = build_mm1_from_parts(vision, lm, dict(kind="c-abstractor", num_tokens=4, width=32, depth=1))
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder, tokenizer=tok)
    model.save_pretrained(folder, tokenizer=tok)                   # overwriting an existing folder is fine
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temp leftovers
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mm1lab" and config["lm"]["vocab_size"] == model.cfg.lm.vocab_size
    loaded, tok2 = load_model(folder)
    assert loaded.cfg == model.cfg
    assert tok2.convert_tokens_to_ids("<image>") == model.cfg.image_token_id
    ids = torch.cat([torch.randint(0, 20, (1, 5)), torch.full((1, 4), model.cfg.image_token_id)], dim=1)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(ids, images).logits, model.eval()(ids, images).logits)


def test_tied_head_is_saved_once(tmp_path):
    model = MM1Model(tiny_config())
    model.save_pretrained(tmp_path / "m")
    assert "lm.lm_head.weight" not in load_file(tmp_path / "m" / "model.safetensors")
    loaded = MM1Model.from_pretrained(tmp_path / "m")
    assert loaded.lm.lm_head.weight is loaded.lm.embed.weight
    assert torch.equal(loaded.lm.embed.weight, model.lm.embed.weight)


def test_bad_folders_are_explained(tmp_path, parts):
    _, lm, _, _ = parts
    with pytest.raises(CheckpointError, match="model_type='qwen2', not 'mm1lab'"):
        MM1Model.from_pretrained(lm)
    MM1Model(tiny_config()).save_pretrained(tmp_path / "m")
    file = tmp_path / "m" / "model.safetensors"
    state = load_file(file)
    del state["lm.norm.weight"]
    state["extra"] = torch.zeros(1)
    save_file(state, file)
    with pytest.raises(CheckpointError, match=r"missing: \['lm.norm.weight'\]\n  unexpected: \['extra'\]"):
        MM1Model.from_pretrained(tmp_path / "m")


def test_model_methods_round_trip(tmp_path):
    model = MM1Model(tiny_config()).eval()
    model.save_pretrained(tmp_path / "m")
    again = MM1Model.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(10, 64, (1, 12))
    torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=0, atol=0)
