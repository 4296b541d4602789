"""Configs: validation messages name the field, presets exist, JSON/YAML round trips are exact."""

from __future__ import annotations

import dataclasses

import pytest

from mm1lab import PRESETS, ConfigError, ConnectorConfig, LMConfig, MM1Config, MoEConfig, VisionConfig
from mm1lab.config import CONNECTORS


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_round_trips_through_json_and_yaml(name, tmp_path):
    cfg = MM1Config.preset(name)
    assert MM1Config.from_json(cfg.to_json()) == cfg
    assert MM1Config.from_yaml(cfg.to_yaml()) == cfg
    for suffix in (".json", ".yaml"):
        cfg.save(tmp_path / f"cfg{suffix}")
        assert MM1Config.load(tmp_path / f"cfg{suffix}") == cfg


def test_derived_sizes_are_properties_that_follow_the_fields():
    v = VisionConfig(image_size=224, patch_size=14)
    assert (v.grid_size, v.num_patches) == (16, 256)
    v2 = dataclasses.replace(v, image_size=336)
    assert (v2.grid_size, v2.num_patches) == (24, 576)
    assert LMConfig(width=64, heads=4, kv_heads=2).head_dim == 16


@pytest.mark.parametrize("build, words", [
    (lambda: VisionConfig(image_size=100, patch_size=14), ["image_size", "multiple of patch_size"]),
    (lambda: VisionConfig(width=100, heads=16), ["heads", "divide width"]),
    (lambda: LMConfig(width=100, heads=16), ["heads", "divide width"]),
    (lambda: LMConfig(heads=16, kv_heads=5), ["kv_heads"]),
    (lambda: ConnectorConfig(kind="qformer"), ["unknown connector", "c-abstractor", "pixel-shuffle"]),
    (lambda: ConnectorConfig(kind="avgpool", num_tokens=10), ["num_tokens", "perfect square"]),
    (lambda: MoEConfig(num_experts=4, top_k=8), ["top_k", "num_experts"]),
    (lambda: VisionConfig(act="relu6"), ["act", "quick_gelu"]),
    (lambda: MM1Config(image_token_id=99999), ["image_token_id", "vocab_size"]),
    (lambda: MM1Config.preset("mm1-13b"), ["unknown preset", "tiny", "mm1-30b"]),
    (lambda: MM1Config.from_dict({"vison": {}}), ["unknown field", "vison"]),
])
def test_bad_values_raise_messages_naming_field_and_allowed_values(build, words):
    with pytest.raises(ConfigError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_connector_token_grid_must_fit_patch_grid():
    with pytest.raises(ConfigError, match="divide the patch grid"):
        MM1Config(vision=VisionConfig(image_size=64, patch_size=8), connector=ConnectorConfig(kind="avgpool",
                  num_tokens=9), lm=LMConfig(vocab_size=100, width=32, heads=4, ffn_dim=64))


def test_image_tokens_follows_connector():
    cfg = MM1Config.preset("tiny")
    assert cfg.image_tokens == cfg.connector.num_tokens == 16
    mlp = dataclasses.replace(cfg, connector=ConnectorConfig(kind="mlp"))
    assert mlp.image_tokens == cfg.vision.num_patches


def test_every_connector_name_is_accepted():
    for kind in CONNECTORS:
        assert ConnectorConfig(kind=kind, num_tokens=16).kind == kind


def test_moe_layers_are_every_nth():
    moe = MoEConfig(num_experts=8, every=4)
    assert [i for i in range(12) if moe.is_moe_layer(i)] == [3, 7, 11]
