"""Preset parameter counts (meta device) match the MM1 paper's sizes within 10%, and the CLI prints them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mm1lab import MM1Config
from mm1lab.params import parameter_table, preset_tables

# (preset, part, expected parameters): ViT-L/14 ~304M, ViT-H/14 ~632M, LMs 1.2B/3B/7B/30B, MoE totals.
PAPER = [
    ("ablation-base", "params_vision", 304e6),
    ("mm1-3b", "params_vision", 632e6),
    ("mm1-30b", "params_vision", 632e6),
    ("ablation-base", "params_lm", 1.2e9),
    ("mm1-3b", "params_lm", 3e9),
    ("mm1-7b", "params_lm", 7e9),
    ("mm1-30b", "params_lm", 30e9),
    ("mm1-3b-moe", "params_total", 64e9),
    ("mm1-7b-moe", "params_total", 47e9),
]


@pytest.fixture(scope="module")
def tables():
    return {row["name"]: row for row in preset_tables()}


@pytest.mark.parametrize("preset, key, expected", PAPER)
def test_counts_match_paper_within_10_percent(tables, preset, key, expected):
    assert abs(tables[preset][key] / expected - 1) < 0.10, (preset, key, tables[preset][key])


def test_moe_active_parameters_count_top_k_experts_per_moe_layer(tables):
    # Active = the dense model with each MoE layer's FFN replaced by its router plus top_k experts.
    for moe, dense in (("mm1-3b-moe", "mm1-3b"), ("mm1-7b-moe", "mm1-7b")):
        lm = MM1Config.preset(moe).lm
        layers = sum(lm.is_moe_layer(i) for i in range(lm.depth))
        expert = 3 * lm.width * (lm.moe.ffn_dim or lm.ffn_dim)
        dense_ffn = 3 * lm.width * lm.ffn_dim
        per_layer = lm.moe.top_k * expert + lm.width * lm.moe.num_experts - dense_ffn
        assert tables[moe]["params_active"] == tables[dense]["params_total"] + layers * per_layer
        assert tables[moe]["params_total"] - tables[moe]["params_active"] == layers * (lm.moe.num_experts - 2) * expert
    assert tables["mm1-7b"]["params_active"] == tables["mm1-7b"]["params_total"]


def test_tiny_is_about_a_million_parameters():
    row = parameter_table(MM1Config.preset("tiny"))
    assert 0.8e6 < row["params_total"] < 2e6


def test_cli_prints_json_with_the_fixed_keys():
    out = subprocess.run([sys.executable, "-m", "mm1lab", "presets", "--json"], capture_output=True, text=True,
                         check=True).stdout
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= {"tiny", "ablation-base", "mm1-3b", "mm1-7b", "mm1-30b", "mm1-3b-moe",
                                          "mm1-7b-moe"}
    for row in rows:
        assert {"name", "params_vision", "params_connector", "params_lm", "params_total", "params_active"} <= set(row)
        assert row["params_total"] == row["params_vision"] + row["params_connector"] + row["params_lm"]


def test_cli_table_and_unknown_preset_error():
    ok = subprocess.run([sys.executable, "-m", "mm1lab", "presets", "tiny"], capture_output=True, text=True)
    assert ok.returncode == 0 and "tiny" in ok.stdout and "active/token" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mm1lab", "presets", "mm1-13b"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preset 'mm1-13b'" in bad.stderr and "mm1-30b" in bad.stderr
