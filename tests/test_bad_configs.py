"""Config values of the wrong type are named on load (field, type, value), and the CLIs exit 2 saying so."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import tiny_config

from mm1lab import MM1Model
from mm1lab.cli import main as cli_main
from mm1lab.config import PRESETS, ConfigError, MM1Config
from mm1lab.train import STAGES, TrainConfig

# (where in a training config, the string a careless edit puts there, the field the message must name)
WRONG = [
    (("steps",), "100", "TrainConfig.steps must be an integer, got '100' (str)"),
    (("batch_size",), "16", "TrainConfig.batch_size must be an integer"),
    (("data", "seq_len"), "256", "TrainConfig.data.seq_len must be an integer"),
    (("checkpoint", "every"), "200", "TrainConfig.checkpoint.every must be an integer"),
    (("optim", "warmup_steps"), "50", "TrainConfig.optim.warmup_steps must be an integer or null"),
    (("optim", "lr"), "fast", "TrainConfig.optim.lr must be a number or null, got 'fast'"),
    (("data", "pack"), "yes", "TrainConfig.data.pack must be true or false"),
    (("optim", "betas"), [0.9], "TrainConfig.optim.betas must hold exactly 2 values"),
    (("model", "vision", "mlp_ratio"), "4", "MM1Config.vision.mlp_ratio must be a number, got '4' (str)"),
    (("model", "lm", "rope_theta"), "1e4", "MM1Config.lm.rope_theta must be a number"),
    (("model", "lm", "norm_eps"), "1e-5", "MM1Config.lm.norm_eps must be a number"),
    (("model", "lm", "tie_embeddings"), 1, "MM1Config.lm.tie_embeddings must be true or false, got 1 (int)"),
    (("model", "lm", "max_seq_len"), 1024.0, "MM1Config.lm.max_seq_len must be an integer, got 1024.0"),
]


def config_with(path: tuple[str, ...], value) -> dict:
    data = dict(name="t", model=tiny_config().to_dict(), steps=4, batch_size=2)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("path, value, message", WRONG, ids=[".".join(w[0]) for w in WRONG])
def test_a_value_of_the_wrong_type_is_named(path, value, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(config_with(path, value))
    assert message in str(info.value)


def test_the_train_cli_exits_2_naming_file_and_field(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_with(("checkpoint", "every"), "200")))
    assert cli_main(["train", str(path)]) == 2
    assert f"{path}: TrainConfig.checkpoint.every must be an integer, got '200'" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(config_with(("steps",), 4)))
    assert cli_main(["train", str(path), "--set", "data.seq_len=long"]) == 2
    assert "TrainConfig.data.seq_len must be an integer, got 'long'" in capsys.readouterr().err
    path.write_text("- steps: 4\n")
    assert cli_main(["train", str(path)]) == 2
    assert "a training config is a mapping" in capsys.readouterr().err


def test_a_saved_config_json_of_the_wrong_type_is_named(tmp_path, capsys):
    folder = tmp_path / "export"
    MM1Model(tiny_config()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["lm"]["norm_eps"] = "1e-5"   # used to load, then fail inside the first forward
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.json: MM1Config.lm.norm_eps must be a number, got '1e-5'"):
        MM1Model.from_pretrained(folder)
    assert cli_main(["eval", "--checkpoint", str(folder), "--n", "1", "--quiet"]) == 2
    assert "MM1Config.lm.norm_eps must be a number" in capsys.readouterr().err
    (tmp_path / "model.json").write_text("{")
    with pytest.raises(ConfigError, match="model.json: Expecting property name"):
        MM1Config.load(tmp_path / "model.json")


def test_right_types_still_load_and_numbers_are_normalised():
    for name in PRESETS:
        cfg = MM1Config.preset(name)
        assert MM1Config.from_dict(cfg.to_dict()) == cfg
    for stage in STAGES:
        cfg = TrainConfig.from_dict(dict(stage=stage))
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg = TrainConfig.from_dict(dict(optim=dict(lr=1, betas=[0.9, 1]), data=dict(mixture={"caption": 1})))
    assert type(cfg.optim.lr) is float and cfg.optim.betas == (0.9, 1.0) and cfg.data.mixture == {"caption": 1.0}
    vision = MM1Config.from_dict({**tiny_config().to_dict(), "name": "x"}).vision
    assert isinstance(vision.image_mean, tuple) and type(vision.mlp_ratio) is float
