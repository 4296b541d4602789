"""Pretrained encoders: HF CLIP / SigLIP folders and timm / OpenCLIP state dicts give the same features.

HF references are tiny random transformers models saved locally. timm is an optional extra, so the timm
format is also checked without it: our encoder exported through the inverse of the `timm_clip_vit` table
(a state dict with timm's names and shapes, built by hand) must load back to identical outputs.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file
from test_pretrained_lm import randomize

from mm1lab.config import VisionConfig
from mm1lab.pretrained import CheckpointError, load_hf_vision, load_timm_clip_vision
from mm1lab.pretrained.convert import export_mapped
from mm1lab.pretrained.maps import OPEN_CLIP_VIT, TIMM_CLIP_VIT
from mm1lab.vision import VisionEncoder

TOL = 1e-4
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
             patch_size=8)


def make_hf_vision(folder, kind: str):
    """A tiny random HF vision tower saved to `folder`; returns the transformers vision transformer."""
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL, hidden_act="quick_gelu"))
    elif kind == "clip-full":   # a whole CLIPModel folder: text tower and projections are ignored
        cfg = transformers.CLIPConfig(vision_config=dict(**SMALL, hidden_act="gelu"), projection_dim=16,
                                      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, vocab_size=50))
        model = transformers.CLIPModel(cfg)
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL, layer_norm_eps=1e-6))
    randomize(model).eval().save_pretrained(folder)
    return getattr(model, "vision_model", model)   # transformers 5: CLIPVisionModel is the tower itself


def reference_features(tower, images, layer: int, kind: str):
    """The HF tower's hidden state after block depth+layer+1; at the last layer, the final LayerNorm applied
    to every token (SigLIP does so itself, CLIP only to the pooled CLS)."""
    out = tower(pixel_values=images, output_hidden_states=True)
    if layer != -1:
        return out.hidden_states[layer]          # hidden_states[0] is the embeddings, [d] block d's output
    last = out.last_hidden_state
    return last if kind == "siglip" else tower.post_layernorm(last)


@pytest.mark.parametrize("kind", ["clip", "clip-full", "siglip"])
def test_hf_vision_hidden_states_match(tmp_path, kind):
    tower = make_hf_vision(tmp_path, kind)
    encoder = load_hf_vision(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for layer in (-1, -2, -3):
            expected = reference_features(tower, images, layer, kind)
            if kind != "siglip":
                expected = expected[:, 1:]          # mm1lab returns patch features (CLS dropped)
            got = encoder(images, layer=layer).features
            diff = (got - expected).abs().max().item()
            print(f"{kind} layer {layer}: max |diff| = {diff:.2e}")
            assert got.shape == expected.shape and diff < TOL
    assert encoder.cfg.cls_token == (kind != "siglip") and encoder.cfg.patch_bias == (kind == "siglip")


def test_hf_vision_reads_feature_layer_and_pixel_stats(tmp_path):
    make_hf_vision(tmp_path, "siglip")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.4, 0.5, 0.6]}))
    encoder = load_hf_vision(tmp_path, feature_layer=-2)
    assert encoder.cfg.feature_layer == -2 and encoder.cfg.image_mean == (0.1, 0.2, 0.3)


# Our encoder in the three shapes a CLIP tower comes in: timm's CLIP ViTs, OpenCLIP, and a timm-like tower
# without pre-norm and with a patch bias.
TIMM_LIKE = {
    "timm-quickgelu": (TIMM_CLIP_VIT, dict(act="quick_gelu")),
    "timm-plain": (TIMM_CLIP_VIT, dict(act="gelu", pre_norm=False, patch_bias=True)),
    "open-clip": (OPEN_CLIP_VIT, dict(act="gelu")),
}


@pytest.mark.parametrize("variant", TIMM_LIKE)
def test_timm_format_round_trip_without_timm(tmp_path, variant):
    keymap, extra = TIMM_LIKE[variant]
    cfg = VisionConfig(image_size=32, patch_size=8, width=32, depth=3, heads=4, **extra)
    ours = randomize(VisionEncoder(cfg)).eval()
    state = export_mapped(ours, keymap, depth=cfg.depth, patch_size=cfg.patch_size)
    if keymap is TIMM_CLIP_VIT:
        # The names and shapes timm's VisionTransformer uses, written out by hand.
        assert state["cls_token"].shape == (1, 1, 32) and state["pos_embed"].shape == (1, 17, 32)
        assert state["patch_embed.proj.weight"].shape == (32, 3, 8, 8)
        assert state["blocks.2.attn.qkv.weight"].shape == (96, 32) and state["blocks.2.attn.qkv.bias"].shape == (96,)
        assert ("norm_pre.weight" in state) == cfg.pre_norm and "norm.weight" in state
        state["head.weight"] = torch.randn(16, 32)                  # CLIP projection: known, ignored
    else:
        assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
        state["visual.proj"] = torch.randn(32, 16)
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_timm_clip_vision(tmp_path / "model.safetensors", heads=4, act=cfg.act)
    assert loaded.cfg == cfg
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for layer in (-1, -2):
            assert torch.equal(loaded(images, layer=layer).features, ours(images, layer=layer).features)


def test_timm_folder_settings_and_head_count(tmp_path):
    cfg = VisionConfig(image_size=32, patch_size=8, width=768, depth=1, heads=12, mlp_ratio=0.125, act="quick_gelu")
    state = export_mapped(VisionEncoder(cfg), TIMM_CLIP_VIT, depth=1, patch_size=8)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_clip_quickgelu_224",
        "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    loaded = load_timm_clip_vision(tmp_path)
    assert (loaded.cfg.heads, loaded.cfg.act, loaded.cfg.image_mean) == (12, "quick_gelu", (0.5, 0.5, 0.5))


def test_timm_parity_with_timm(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install mm1lab[timm]); not installed by "
                               "default because the registry's torchvision is a CUDA build that breaks imports next "
                               "to the CPU torch")
    ref = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, num_classes=0, img_size=32,
                            patch_size=8, embed_dim=32, depth=3, num_heads=4).eval()
    randomize(ref)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    encoder = load_timm_clip_vision(tmp_path / "model.safetensors", heads=4, act="quick_gelu")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (encoder(images).features - ref.forward_features(images)[:, 1:]).abs().max().item()
    print(f"timm: max |diff| = {diff:.2e}")
    assert diff < TOL


def test_bad_vision_inputs_are_explained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(CheckpointError, match=r"dinov2.*clip, clip_vision_model, siglip"):
        load_hf_vision(tmp_path)
    make_hf_vision(tmp_path, "clip")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act='relu'.*gelu, quick_gelu"):
        load_hf_vision(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "intermediate_size": 96}))
    first = r"encoder.layers.0.mlp.fc1.weight \(64, 32\) -> blocks.0.mlp.fc1.weight: expected \(96, 32\)"
    with pytest.raises(CheckpointError, match=r"shape mismatches \(9\)[^\n]*\n *" + first):
        load_hf_vision(tmp_path)
    with pytest.raises(CheckpointError, match="not a timm or OpenCLIP"):
        load_timm_clip_vision({"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="pass heads="):
        load_timm_clip_vision(export_mapped(VisionEncoder(VisionConfig(image_size=16, patch_size=8, width=40,
                                                                       depth=1, heads=4)), TIMM_CLIP_VIT, depth=1,
                                            patch_size=8))
