"""`load_model`: one loader for exported folders, training checkpoints, training runs and notebook run folders."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from mm1lab import MM1Model
from mm1lab.data.tokenizer import MM1Tokenizer, load_tokenizer
from mm1lab.load import load_model
from mm1lab.train.checkpoint import save_checkpoint


def trained_run(root, model: MM1Model, step: int = 3):
    """A training run folder as the trainer leaves it (checkpoints/step_*/ and latest)."""
    save_checkpoint(root / "checkpoints", step, weights=model.state_dict(), model_config_json=model.cfg.to_json(),
                    train_config_yaml="", optimizer={}, state={}, meta={"loss": 1.0})
    return root


@pytest.fixture
def model():
    torch.manual_seed(3)
    return MM1Model(tiny_config()).eval()


def same_weights(a: MM1Model, b: MM1Model) -> bool:
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("where", ["run", "checkpoints", "checkpoint", "notebook-run"])
def test_training_folders_load(tmp_path, model, where):
    run = trained_run(tmp_path / "nb" / "train", model)
    path = {"run": run, "checkpoints": run / "checkpoints", "checkpoint": run / "checkpoints" / "step_00000003",
            "notebook-run": tmp_path / "nb"}[where]
    loaded = load_model(path)
    assert loaded.step == 3 and loaded.path.name == "step_00000003"
    assert loaded.model.cfg == model.cfg and same_weights(loaded.model, model)
    assert not loaded.model.training
    assert isinstance(loaded.tokenizer, MM1Tokenizer)   # none saved beside it: the committed one


def test_exported_folder_loads_with_its_tokenizer(tmp_path, model):
    model.save_pretrained(tmp_path / "export", tokenizer=load_tokenizer())
    loaded_model, tokenizer = load_model(tmp_path / "export")
    assert same_weights(loaded_model, model)
    assert tokenizer.encode("a red circle") == load_tokenizer().encode("a red circle")


def test_untrained_fallback_and_clear_errors(tmp_path):
    loaded = load_model("", untrained="tiny")
    assert loaded.path is None and loaded.model.cfg.name == "tiny"
    with pytest.raises(ValueError, match="untrained='tiny'"):
        load_model("")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model in"):
        load_model(tmp_path / "empty")
