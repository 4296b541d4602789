"""Stage-0 objectives through the one training loop: they learn, resume exactly, and ship through one command."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mm1lab.train import TrainConfig, load_checkpoint, read_metrics, train

SMALL_CLIP = dict(vision=dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, act="gelu"),
                  text=dict(width=32, depth=1, heads=2, max_len=64), embed_dim=32)


def run(tmp_path, stage: str, **over) -> dict:
    cfg = dict(stage=stage, name=stage, out_dir=str(tmp_path), steps=6, batch_size=16,
               optim=dict(lr=2e-3, warmup_steps=1), data=dict(mixture={"dense": 1.0}),
               checkpoint=dict(every=3, keep=2), track=dict(log_every=1, progress=False, tensorboard=False))
    if stage == "clip":
        cfg["model"] = SMALL_CLIP
    if stage == "aim":
        cfg["model"] = dict(vision=dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, act="gelu",
                                        cls_token=False, pre_norm=False, patch_bias=True), head_width=32)
    return {**cfg, **over}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (conftest's `one_thread`)."""


@pytest.mark.parametrize("stage", ["clip", "clip+negatives", "aim"])
def test_stage0_objective_resumes_bit_exactly(tmp_path, stage, monkeypatch):
    stage, _, negatives = stage.partition("+")
    over = dict(model=dict(SMALL_CLIP, hard_negatives=True)) if negatives else {}
    whole = train(run(tmp_path / "whole", stage, **over))
    cut = run(tmp_path / "cut", stage, **over)
    monkeypatch.setenv("MM1LAB_FAULT", "sigint@train:4")   # Ctrl-C during step 4: checkpoint, stop
    assert train(cut).status == "interrupted"
    monkeypatch.delenv("MM1LAB_FAULT")
    resumed = train(cut)                                    # resumes from the step-4 checkpoint
    assert resumed.step == whole.step == 6
    a, b = (load_checkpoint(r.checkpoint, weights_only=True).weights for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = ([r["loss"] for r in read_metrics(p)] for p in (tmp_path / "whole", tmp_path / "cut"))
    assert la == lb
    meta = json.loads((whole.checkpoint / "meta.json").read_text())
    assert meta["objective"] == stage


def test_clip_learns_to_match_captions(tmp_path):
    result = train(run(tmp_path, "clip", steps=40, batch_size=32, optim=dict(lr=3e-3, warmup_steps=4),
                       track=dict(log_every=10, progress=False, tensorboard=False)))
    rows = read_metrics(tmp_path)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert rows[-1]["batch_accuracy"] > 2 / 32                          # better than picking at random
    assert set(rows[-1]["lr_parts"]) == {"vision.decay", "text.decay", "head.decay"}
    assert result.model.logit_scale.requires_grad


def test_coca_trains_its_caption_decoder_and_the_encoder_with_it(tmp_path):
    model = dict(SMALL_CLIP, caption_weight=1.0, caption_depth=1)
    result = train(run(tmp_path, "clip", steps=30, batch_size=16, model=model, optim=dict(lr=3e-3, warmup_steps=3),
                       track=dict(log_every=10, progress=False, tensorboard=False)))
    rows = read_metrics(tmp_path)
    assert rows[-1]["caption_loss"] < rows[0]["caption_loss"] - 1.0   # from about ln(vocab)
    assert result.model.caption_decoder is not None


def test_coca_continues_from_an_exported_clip_and_from_a_clip_run(tmp_path):
    """`init_from` on a clip run: the exported CLIP's (or a run's) weights, a fresh caption decoder beside them."""
    from mm1lab.stage0.clip import CLIP
    from mm1lab.stage0.config import CLIPConfig
    from mm1lab.stage0.export import export_clip, export_clip_vision
    from mm1lab.train.trainer import Trainer

    torch.manual_seed(1)
    source = CLIP(CLIPConfig.from_dict(SMALL_CLIP))
    export_clip(source, tmp_path / "clip")
    coca = dict(SMALL_CLIP, caption_weight=1.0, caption_depth=1)
    cfg = run(tmp_path / "coca", "clip", model=coca, init_from=str(tmp_path / "clip"))
    trainer = Trainer(TrainConfig.from_dict(cfg))
    ours = trainer.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in source.state_dict().items())
    assert any(k.startswith("caption_decoder.") for k in ours)
    assert trainer.run().step == 6
    # a clip run continues from a run folder too, and a model of another size is refused by name
    plain = Trainer(TrainConfig.from_dict(run(tmp_path / "plain", "clip", init_from=str(tmp_path / "coca"))))
    assert not any(k.startswith("caption_decoder.") for k in plain.model.state_dict())
    export_clip_vision(source, tmp_path / "vision")
    with pytest.raises(ValueError, match=r"'clip_vision_model' folder; a clip run continues a whole CLIP"):
        Trainer(TrainConfig.from_dict(run(tmp_path / "v", "clip", init_from=str(tmp_path / "vision"))))
    wider = dict(SMALL_CLIP, embed_dim=48)
    with pytest.raises(ValueError, match=r"init_from .*clip does not fit.*preset"):
        Trainer(TrainConfig.from_dict(run(tmp_path / "wider", "clip", model=wider, init_from=str(tmp_path / "clip"))))


def test_an_anchored_run_keeps_its_starting_encoder_through_training_and_resume(tmp_path):
    """`anchor_weight` with `init_from`: the anchor is the loaded encoder, stays fixed while the encoder trains, and
    is saved with each checkpoint, so a resumed run is pulled towards the same place."""
    from mm1lab.stage0.clip import CLIP
    from mm1lab.stage0.config import CLIPConfig
    from mm1lab.stage0.export import export_clip
    from mm1lab.train.trainer import Trainer

    torch.manual_seed(2)
    source = CLIP(CLIPConfig.from_dict(SMALL_CLIP))
    export_clip(source, tmp_path / "clip")
    start = {k: v.clone() for k, v in source.vision.state_dict().items()}
    anchored = dict(SMALL_CLIP, anchor_weight=1.0)
    cfg = run(tmp_path / "run", "clip", model=anchored, init_from=str(tmp_path / "clip"), steps=8,
              checkpoint=dict(every=4, keep=2), optim=dict(lr=3e-3, warmup_steps=2))
    trainer = Trainer(TrainConfig.from_dict(cfg))
    anchor = {k: v.clone() for k, v in trainer.model.anchor.state_dict().items()}
    assert all(torch.equal(anchor[k.replace(".", "__")], v) for k, v in start.items())
    assert trainer.num_params == sum(p.numel() for p in source.parameters())   # the anchor is not counted
    result = trainer.run()
    moved = result.model.vision.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in start.items())             # the encoder trained
    assert all(torch.equal(result.model.anchor.state_dict()[k], v) for k, v in anchor.items())
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["anchor_loss"] > 0
    longer = dict(cfg, steps=12)
    resumed = Trainer(TrainConfig.from_dict(longer))
    assert resumed.step == 8
    assert all(torch.equal(resumed.model.anchor.state_dict()[k], v) for k, v in anchor.items())


def test_freezing_a_stage0_part_keeps_it_fixed(tmp_path):
    result = train(run(tmp_path, "clip", freeze=dict(text=True)))
    before = load_checkpoint(tmp_path / "checkpoints" / "step_00000003", weights_only=True).weights
    after = load_checkpoint(result.checkpoint, weights_only=True).weights
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))


def test_stage_configs_validate_parts_per_objective():
    with pytest.raises(ValueError, match="parts are vision, text, head"):
        TrainConfig.from_dict(dict(stage="clip", freeze=dict(lm=True)))
    with pytest.raises(ValueError, match="cannot go with init_from"):
        TrainConfig.from_dict(dict(stage="pretrain", init_from="x", pretrained=dict(lm="y")))
    with pytest.raises(ValueError, match="objective 'aim' starts fresh"):
        TrainConfig.from_dict(dict(stage="aim", init_from="x"))
    assert TrainConfig.from_dict(dict(stage="text")).freeze == dict(vision=True, connector=True, lm=False)


def test_vlm_pretraining_starts_from_stage0_parts(tmp_path):
    """`pretrained: {vision, lm}` builds MM1 through build_mm1_from_parts: the encoder and LM are the exported
    stage-0 weights, the connector is fresh, and the data tokenizer must be the LM's."""
    from mm1lab.config import MM1Config
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.model import MM1Model
    from mm1lab.stage0.clip import CLIP
    from mm1lab.stage0.export import export_clip, export_lm
    from mm1lab.stage0.presets import stage0_config
    from mm1lab.train.trainer import Trainer

    torch.manual_seed(1)
    clip = CLIP(stage0_config("clip", "clip-tiny"))
    lm = MM1Model(MM1Config.preset("tiny")).lm
    export_clip(clip, tmp_path / "clip")
    export_lm(lm, load_tokenizer(), tmp_path / "lm")
    cfg = TrainConfig.from_dict(dict(stage="pretrain", out_dir=str(tmp_path / "run"), model="tiny", steps=2,
                                     batch_size=2, pretrained=dict(vision=str(tmp_path / "clip"),
                                                                    lm=str(tmp_path / "lm")),
                                     data=dict(seq_len=128, pack=True),
                                     track=dict(progress=False, tensorboard=False)))
    trainer = Trainer(cfg)
    model = trainer.model
    assert all(torch.equal(model.vision.state_dict()[k], v) for k, v in clip.vision.state_dict().items())
    assert all(torch.equal(model.lm.state_dict()[k], v) for k, v in lm.state_dict().items())
    assert trainer.run().step == 2
    resumed = load_checkpoint(tmp_path / "run", weights_only=True)
    assert MM1Config.from_dict(resumed.model_config).vision == clip.cfg.vision


def test_an_lm_with_another_tokenizer_is_refused(tmp_path):
    import transformers

    from mm1lab.config import MM1Config
    from mm1lab.model import MM1Model
    from mm1lab.stage0.export import export_lm
    from mm1lab.train.trainer import Trainer

    class Other:   # a tokenizer that is not mm1lab's (same interface, different vocabulary)
        bos_id, eos_id, pad_id = 1, 2, 0

        def save(self, path):
            from tokenizers import Tokenizer, models
            tok = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "hello": 3}, unk_token="<pad>"))
            path.write_text(tok.to_str())

    export_lm(MM1Model(MM1Config.preset("tiny")).lm, Other(), tmp_path / "lm")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "lm").get_vocab()["hello"] == 3
    cfg = TrainConfig.from_dict(dict(stage="pretrain", out_dir=str(tmp_path / "run"), steps=1, batch_size=2,
                                     pretrained=dict(lm=str(tmp_path / "lm")), track=dict(progress=False)))
    with pytest.raises(ValueError, match="not mm1lab's ShapeWorld tokenizer"):
        Trainer(cfg)


@pytest.mark.slow
def test_ship_regenerates_every_stage0_folder_in_smoke_mode(tmp_path):
    import subprocess
    import sys

    from mm1lab.pretrained import build_mm1_from_parts
    from mm1lab.stage0.ship import SHIPPED

    done = subprocess.run([sys.executable, "-m", "mm1lab", "stage0", "ship", "--smoke", "--out", str(tmp_path / "s0"),
                           "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name, spec in SHIPPED.items():
        info = json.loads((tmp_path / "s0" / name / "mm1lab_stage0.json").read_text())
        assert info["smoke"] and info["steps"] == 2 * spec.phases and info["kind"] == spec.kind
        assert info["scores"]
    model, _ = build_mm1_from_parts(tmp_path / "s0" / "aim-tiny", tmp_path / "s0" / "lm-tiny",
                                    dict(kind="avgpool", num_tokens=16))
    assert model.cfg.vision.image_size == 64 and not model.cfg.vision.cls_token
    assert "clip-tiny-128" in (tmp_path / "s0" / "README.md").read_text()
    # the reading encoder continues the clip-tiny just shipped, and its second phase continues its first
    phases = [yaml.safe_load((tmp_path / "runs" / "clip-tiny-ocr" / f"phase_{i}" / "config.yaml").read_text())
              for i in (1, 2)]
    assert [p["init_from"] for p in phases] == [str(tmp_path / "s0" / "clip-tiny"),
                                                 str(tmp_path / "runs" / "clip-tiny-ocr" / "phase_1")]
    assert phases[1]["model"]["anchor_weight"] == 1.0

    # --score-only scores the shipped folders again and keeps their weights and training record
    info_path = tmp_path / "s0" / "clip-tiny" / "mm1lab_stage0.json"
    before = json.loads(info_path.read_text())

    def weights():
        return {p.name: p.read_bytes() for p in (tmp_path / "s0" / "clip-tiny").glob("*.safetensors")}

    shipped_weights = weights()
    info_path.write_text(json.dumps({**before, "scores": {"probe": {"count": {"score": -1.0, "n": 0}}}}))
    done = subprocess.run([sys.executable, "-m", "mm1lab", "stage0", "ship", "--score-only", "--smoke", "--only",
                           "clip-tiny", "--out", str(tmp_path / "s0")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    after = json.loads(info_path.read_text())
    assert after["scores"] == before["scores"] and after["rescored"]         # the planted -1.0 was scored again
    assert {k: after[k] for k in ("steps", "train_seconds", "final_loss")} == \
        {k: before[k] for k in ("steps", "train_seconds", "final_loss")}
    assert shipped_weights and weights() == shipped_weights
    assert "scored again" in (tmp_path / "s0" / "README.md").read_text()
    low, high = after["scores"]["probe"]["count"]["interval"]
    assert low <= after["scores"]["probe"]["count"]["score"] <= high
    missing = subprocess.run([sys.executable, "-m", "mm1lab", "stage0", "ship", "--score-only", "--smoke", "--only",
                              "clip-tiny", "--out", str(tmp_path / "elsewhere")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode != 0 and "mm1lab stage0 ship --only clip-tiny" in missing.stderr


def test_ship_names_the_model_to_ship_first_when_a_continued_one_is_missing(tmp_path):
    """clip-tiny-ocr continues the shipped clip-tiny: without it in the output folder, nothing trains and the error
    says what to run."""
    from mm1lab.stage0.ship import ship

    with pytest.raises(FileNotFoundError, match="mm1lab stage0 ship --only clip-tiny,clip-tiny-ocr"):
        ship(["clip-tiny-ocr"], out=tmp_path / "s0", runs=tmp_path / "runs", smoke=True)
    assert not (tmp_path / "runs").exists()
