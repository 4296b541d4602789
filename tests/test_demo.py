"""The main job, end to end in SMOKE mode: four notebooks through the runner, a summary beside baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from mm1lab.demo import LONG_PLAN, PLAN
from mm1lab.folders import find_checkpoint
from mm1lab.train import load_checkpoint


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_demo_pipeline_runs_every_stage_and_writes_the_summary(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mm1lab", "demo", "--smoke", "--seed", "3", "--long",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = tmp_path.glob("*-demo-long")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["smoke"] is True and summary["seed"] == 3 and summary["long"]
    # --seed and --long reach both training stages, and only them (SMOKE then cuts every stage to a few steps)
    for name, seed in (("02_pretrain", 3), ("03_sft", 3), ("04_evaluate", None)):
        params = yaml.safe_load((folder / name / "parameters.yaml").read_text())
        assert params.get("SEED") == seed, name
        assert {k: params.get(k) for k in LONG_PLAN.get(name, {})} == LONG_PLAN.get(name, {}), name
        assert params.get("STEPS") == LONG_PLAN.get(name, {}).get("STEPS"), name
    assert all(LONG_PLAN[name]["STEPS"] > PLAN[name]["STEPS"] for name in ("02_pretrain", "03_sft"))
    assert yaml.safe_load((folder / "03_sft" / "parameters.yaml").read_text())["QUESTION_MIX"] \
        == PLAN["03_sft"]["QUESTION_MIX"]                # the rest of the plan stays as it is
    assert list(summary["runs"]) == ["02_pretrain", "03_sft", "04_evaluate", "05_probe"]
    for name in summary["runs"]:
        assert (folder / name / f"{name}.ipynb").exists()
        assert json.loads((folder / name / "status.json").read_text())["status"] == "ok"
    assert {"sft/color@0shot", "sft/count@0shot", "pretrain/color@0shot"} <= set(summary["tasks"])
    for task in summary["tasks"].values():
        assert 0 <= task["score"] and 0 <= task["baseline"] and task["n"] > 0
    assert any(f.endswith("attention.png") for f in summary["figures"])
    # SFT keeps the plan's frozen parts (the encoder) exactly as pre-training left them, and trains the rest.
    pre, sft = (load_checkpoint(find_checkpoint(folder / name / "train"), weights_only=True).weights
                for name in ("02_pretrain", "03_sft"))
    changed = {k.split(".")[0] for k in pre if not torch.equal(pre[k], sft[k])}
    assert changed == {"connector", "lm"} and PLAN["03_sft"]["FREEZE"] == ["vision"]
    # Every stage is in the run index, and the printed summary names scores, baselines and the folder.
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [r["name"] for r in index] == ["02_pretrain", "03_sft", "04_evaluate", "05_probe"]
    assert "baseline" in done.stdout and str(folder.resolve()) in done.stdout
    assert f"--long: {LONG_PLAN['02_pretrain']['STEPS']:,} + {LONG_PLAN['03_sft']['STEPS']:,} steps" in done.stdout
    # The terminal shows progress per stage and nothing from the kernels; each stage's log stays in its folder.
    assert "mm1lab: 02_pretrain  step 3/3  loss" in done.stderr and "mm1lab: 05_probe  ok in" in done.stderr
    assert "WARNING" not in done.stderr and "without encryption" not in done.stderr, done.stderr
    assert all(line.startswith("mm1lab: ") for line in done.stderr.splitlines() if line.strip()), done.stderr
    for name in summary["runs"]:
        assert f"{name}  ok in" in (folder / name / "run.log").read_text()


def test_quick_demo_tours_the_model_and_prints_the_presets():
    done = subprocess.run([sys.executable, "-m", "mm1lab", "demo", "--quick"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "connector tokens" in done.stdout and "mm1-7b-moe" in done.stdout
