"""Damaged checkpoints and pretrained folders, written here for real: every loader names the damaged file, resume
falls back to the previous complete checkpoint and says so, and an HF folder without a tokenizer is refused."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import tiny_config
from test_pretrained_lm import make_hf_lm, mm1_logits
from test_pretrained_vision import make_hf_vision
from test_train_loop import tiny_run, train
from test_train_resume import run_cli

from mm1lab import MM1Model
from mm1lab.cli import main as cli_main
from mm1lab.load import load_model
from mm1lab.pretrained import CheckpointError, load_hf_lm, load_hf_vision
from mm1lab.train import load_checkpoint
from mm1lab.train.checkpoint import resume_checkpoint, save_checkpoint

DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "overwritten": lambda data: b"garbage!" * 8 + data[64:],   # the header's length field and start
}


def damage(file, how: str) -> None:
    file.write_bytes(DAMAGE[how](file.read_bytes()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(tiny_run(out, steps=2)).checkpoint


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_training_checkpoint_is_named(trained, tmp_path, capsys, how):
    import shutil

    ckpt = tmp_path / trained.name
    shutil.copytree(trained, ckpt)
    weights = ckpt / "model.safetensors"
    damage(weights, how)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file"):
            load(ckpt)
    assert cli_main(["eval", "--checkpoint", str(ckpt), "--n", "1", "--quiet"]) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err
    shutil.copy(trained / "model.safetensors", weights)
    (ckpt / "model_config.json").write_text('{"vision": ')
    with pytest.raises(CheckpointError, match="model_config.json: unreadable"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_exported_and_pretrained_folders_are_named(tmp_path, how):
    MM1Model(tiny_config()).save_pretrained(tmp_path / "export")
    lm, vision = tmp_path / "lm", tmp_path / "clip"
    make_hf_lm(lm, "llama-tied")
    make_hf_vision(vision, "clip")
    for folder in (tmp_path / "export", lm, vision):
        damage(folder / "model.safetensors", how)
    for folder, load in ((tmp_path / "export", MM1Model.from_pretrained), (tmp_path / "export", load_model),
                         (lm, load_hf_lm), (vision, load_hf_vision)):
        with pytest.raises(CheckpointError, match=f"{folder / 'model.safetensors'}: not a readable safetensors"):
            load(folder)
    (lm / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json: unreadable"):
        load_hf_lm(lm)


def test_damaged_sharded_index_is_named(tmp_path):
    make_hf_lm(tmp_path, "llama-tied", shard=True)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"lm_head.weight": "../outside.safetensors"}}')
    with pytest.raises(CheckpointError, match="is not a file name in"):
        load_hf_lm(tmp_path)
    index.write_text('{"weight_map": {"lm_head.weight": "model-9.safetensors"}}')
    with pytest.raises(CheckpointError, match="names shard 'model-9.safetensors', which is missing"):
        load_hf_lm(tmp_path)
    index.write_text("[]")
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        load_hf_lm(tmp_path)


class Payload:
    """Any object that is not a tensor or a plain value: weights_only loading refuses its pickle."""


def test_resume_checkpoint_skips_each_kind_of_damage(tmp_path, capsys):
    kw = dict(model_config_json="{}", train_config_yaml="", optimizer={"x": torch.ones(1)}, keep=5)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, weights={"w": torch.full((3,), float(step))}, state={"step": step}, **kw)
    damage(tmp_path / "step_00000004" / "model.safetensors", "truncated")
    (tmp_path / "step_00000003" / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    torch.save({"step": 2, "obj": Payload()}, tmp_path / "step_00000002" / "state.pt", pickle_module=pickle)
    ckpt = resume_checkpoint(tmp_path)
    assert ckpt.step == 1 and torch.equal(ckpt.weights["w"], torch.ones(3))
    err = capsys.readouterr().err
    assert "step_00000004 is damaged" in err and "model.safetensors: not a readable" in err
    assert "step_00000003 is damaged" in err and "optimizer.pt: cannot be loaded" in err
    assert "step_00000002 is damaged" in err and "state.pt: cannot be loaded" in err and "weights_only" in err
    assert f"resuming from {tmp_path / 'step_00000001'}" in err
    (tmp_path / "step_00000001" / "meta.json").write_text("{")
    with pytest.raises(CheckpointError, match="every checkpoint under .* is damaged"):
        resume_checkpoint(tmp_path)


def test_training_resumes_from_the_previous_checkpoint_when_the_newest_is_damaged(tmp_path):
    steps = dict(steps=10, checkpoint=dict(every=4, keep=3))
    whole = run_cli(tiny_run(tmp_path / "whole", **steps), tmp_path)
    assert whole.returncode == 0, whole.stderr
    cfg = tiny_run(tmp_path / "broken", **steps)
    killed = run_cli(cfg, tmp_path, fault="kill@train:9")             # checkpoints at 4 and 8, then SIGKILL
    assert killed.returncode != 0
    damage(tmp_path / "broken" / "checkpoints" / "step_00000008" / "model.safetensors", "truncated")
    resumed = run_cli(cfg, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step_00000008 is damaged" in resumed.stderr and "resuming from" in resumed.stderr
    assert "step_00000004" in resumed.stderr
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "broken")
    assert a.step == b.step == 10 and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_hf_lm_without_tokenizer_files_is_refused(tmp_path):
    ref = make_hf_lm(tmp_path, "qwen2")   # transformers would build a 1-token Qwen2 tokenizer from config.json
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no tokenizer files .*tokenizer=False"):
        load_hf_lm(tmp_path)
    loaded = load_hf_lm(tmp_path, tokenizer=False)   # the vocabulary stays untouched
    text = torch.randint(0, 20, (1, 8))
    with torch.no_grad():
        assert (mm1_logits(loaded.lm, text) - ref(text).logits).abs().max() < 1e-4
