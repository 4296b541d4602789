"""The evaluation harness: oracle = 100%, constant = the stated majority baseline, k-shot prompts, determinism,
report layout, the CLI on a checkpoint folder, real-file suites, and a briefly trained model in between."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from mm1lab import MM1Config
from mm1lab.data.collate import Collator
from mm1lab.data.prompts import qa_text
from mm1lab.data.sample import Sample
from mm1lab.data.shapeworld import ShapeWorld, get_difficulty
from mm1lab.data.text import ask
from mm1lab.data.tokenizer import BOS, EOS, IMAGE, default_samples_dir, load_tokenizer
from mm1lab.eval.baselines import ConstantPredictor, OraclePredictor
from mm1lab.eval.harness import evaluate
from mm1lab.eval.items import shapeworld_items, vqav2_items
from mm1lab.eval.predictor import ModelPredictor, eval_config
from mm1lab.eval.report import plot_report, write_report
from mm1lab.eval.scoring import score_predictions
from mm1lab.eval.suites import get_suite
from mm1lab.load import load_model
from mm1lab.model import MM1Model

CLOSED = ("vqa", "color", "count", "shape", "position", "pope", "multi_image")
REQUIRED = {"task", "shots", "metric", "score", "baseline", "baseline_kind", "n", "extra", "examples"}
EVAL_SAMPLES = default_samples_dir() / "eval"


def micro_config() -> MM1Config:
    """A model small enough to train on colour questions in well under a minute on 2 CPU cores (32 px, 4 image
    tokens); the vocabulary matches the committed tokenizer."""
    return MM1Config.from_dict(dict(
        name="micro",
        vision=dict(image_size=32, patch_size=8, width=32, depth=1, heads=2, act="gelu"),
        connector=dict(kind="avgpool", num_tokens=4),
        lm=dict(vocab_size=2048, width=64, depth=2, heads=4, ffn_dim=128, max_seq_len=512),
    ))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def oracle_report():
    return evaluate(OraclePredictor(), suite="shapeworld-pretrain", shots=(0,), n=12,
                    tasks=("caption", *CLOSED, "text"))


# ---- oracle and constant ----------------------------------------------------------------------------------
def test_oracle_scores_full_marks(oracle_report):
    for task in (*CLOSED, "text"):
        assert oracle_report["tasks"][f"{task}@0shot"]["score"] == 1.0, task
    # A caption oracle predicts one of the item's references; CIDEr-D against all of them (itself included) is
    # high but below the metric's maximum of 10, since the other references word things differently.
    caption = oracle_report["tasks"]["caption@0shot"]
    assert caption["baseline_kind"] == "constant-caption"
    assert caption["score"] >= caption["baseline"]
    print(f"caption oracle CIDEr-D {caption['score']:.3f} vs most-common-caption baseline {caption['baseline']:.3f}")


def test_oracle_on_ocr():
    report = evaluate(OraclePredictor(), suite="shapeworld-pretrain", shots=(0,), n=6, tasks=("ocr",),
                      difficulty="medium")
    assert report["tasks"]["ocr@0shot"]["score"] == 1.0
    assert report["tasks"]["ocr@0shot"]["extra"]["cer"] == 0.0


def test_constant_scores_exactly_the_majority_baseline(oracle_report):
    constant = ConstantPredictor.from_report(oracle_report)
    report = evaluate(constant, suite="shapeworld-pretrain", shots=(0,), n=12, tasks=("caption", *CLOSED))
    for key, entry in report["tasks"].items():
        assert entry["score"] == oracle_report["tasks"][key]["baseline"], key      # measured through one path
        if entry["baseline_kind"] == "majority":                                    # and by construction
            assert entry["baseline"] == entry["extra"]["majority_share"], key
    for task in ("color", "count", "pope", "multi_image"):
        assert report["tasks"][f"{task}@0shot"]["baseline_kind"] == "majority"
    assert report["tasks"]["pope@0shot"]["baseline"] == 0.5   # POPE sets are balanced yes/no


def test_text_baseline_is_chance(oracle_report):
    text = oracle_report["tasks"]["text@0shot"]
    assert text["baseline_kind"] == "chance" and text["baseline"] == pytest.approx(0.25)


def test_every_task_states_its_baseline(oracle_report):
    assert set(oracle_report) >= {"suite", "checkpoint", "config", "created", "tasks"}
    for key, entry in oracle_report["tasks"].items():
        assert REQUIRED <= set(entry), key
        assert entry["n"] == 12 and len(entry["examples"]) == 5
        assert set(entry["examples"][0]) == {"id", "prediction", "answer"}
    json.dumps(oracle_report)   # plain JSON


# ---- prompts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["color", "caption", "multi_image"])
@pytest.mark.parametrize("shots", [0, 4, 8])
def test_kshot_prompts_hold_k_demonstrations_and_their_images(task, shots, tok):
    cfg = eval_config(micro_config())
    collator = Collator(tok, cfg)
    per_item = 2 if task == "multi_image" else 1
    for item in shapeworld_items(task, shots, n=2):
        marker = "Caption:" if task == "caption" else "Answer:"
        assert item["prompt"].count(marker) == shots + 1          # k answered demonstrations + the query
        assert item["prompt"].count(IMAGE) == len(item["images"]) == per_item * (shots + 1)
        enc = collator.encode_prompt(item["prompt"], item["images"])
        runs = [len(run) for run in "".join("x" if i == tok.image_id else " " for i in enc["input_ids"][0]).split()]
        assert sum(runs) == cfg.image_tokens * len(item["images"])   # adjacent images make one longer run
        assert all(r % cfg.image_tokens == 0 for r in runs) and len(runs) == shots + 1
        assert enc["images"].shape[0] == len(item["images"])


def test_chat_suite_is_zero_shot_and_suites_are_checked():
    assert get_suite("shapeworld-sft").entries()[0] == ("caption", 0)
    with pytest.raises(ValueError, match="zero-shot"):
        get_suite("shapeworld-sft").entries(shots=(0, 4))
    with pytest.raises(ValueError, match="unknown suite"):
        get_suite("imagenet")
    with pytest.raises(ValueError, match="no task"):
        get_suite("coco").entries(tasks=("color",))


# ---- the model predictor ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained(tok):
    torch.manual_seed(0)
    return MM1Model(micro_config()).eval()


def test_model_predictor_runs_end_to_end_and_is_deterministic(untrained, tok):
    kwargs = dict(suite="shapeworld-pretrain", shots=(0, 4), n=4, batch_size=3, tasks=("color", "count", "text"))
    first = evaluate(untrained, tok, **kwargs)
    second = evaluate(untrained, tok, **kwargs)
    assert first["tasks"] == second["tasks"]
    for entry in first["tasks"].values():
        assert 0.0 <= entry["score"] <= 1.0 and entry["n"] == 4


def test_model_predictor_sft_suite_and_ranked_choices(untrained, tok):
    report = evaluate(untrained, tok, suite="shapeworld-sft", n=3, tasks=("color", "pope"), rank_choices=True)
    for entry in report["tasks"].values():
        assert entry["examples"][0]["prediction"] in ("yes", "no", *get_difficulty("easy").color_names)


def test_batched_decoding_matches_one_at_a_time(untrained, tok):
    """Left padding must not change what the model says (or how likely it finds each choice)."""
    items = shapeworld_items("color", 4, n=3) + shapeworld_items("color", 0, n=2)
    predictor = ModelPredictor(untrained, tok)
    assert predictor(items) == [predictor([it])[0] for it in items]
    text = shapeworld_items("text", 2, n=3)
    batched = predictor.loglikelihoods(text)
    single = [predictor.loglikelihoods([it])[0] for it in text]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)


def test_newline_ends_a_pretraining_answer(tok):
    predictor = ModelPredictor(MM1Model(micro_config()), tok)
    assert tok.eos_id in predictor.stop_tokens
    assert all("\n" in tok.decode([i], skip_special=False) for i in predictor.stop_tokens if i != tok.eos_id)
    assert set(ModelPredictor(MM1Model(micro_config()), tok, chat=True).stop_tokens) == {tok.end_id, tok.eos_id}


# ---- report, checkpoint, CLI ------------------------------------------------------------------------------
def test_write_report_and_figure(oracle_report, tmp_path):
    json_path, png_path = write_report(oracle_report, tmp_path)
    assert json.loads(json_path.read_text())["tasks"].keys() == oracle_report["tasks"].keys()
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plot_report(oracle_report).axes) >= len({e["task"] for e in oracle_report["tasks"].values()})


def test_cli_writes_json_and_png_for_a_checkpoint_folder(tmp_path, untrained):
    from mm1lab.eval.cli import main
    ckpt = tmp_path / "ckpt"
    untrained.save_pretrained(ckpt)
    loaded = load_model(ckpt)
    for name, tensor in untrained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name

    out = tmp_path / "out"
    rc = main(["--checkpoint", str(ckpt), "--suite", "shapeworld-pretrain", "--shots", "0,4", "--n", "3",
               "--tasks", "color,text", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "eval_shapeworld-pretrain.json").read_text())
    assert set(report["tasks"]) == {"color@0shot", "color@4shot", "text@0shot", "text@4shot"}
    assert report["checkpoint"] == str(ckpt)
    for entry in report["tasks"].values():
        assert REQUIRED <= set(entry) and 0 <= entry["score"] <= 1
    assert (out / "eval_shapeworld-pretrain.png").stat().st_size > 0
    assert main(["--checkpoint", str(tmp_path / "nowhere"), "--n", "1"]) == 2   # an error, not a traceback


# ---- real benchmark files ---------------------------------------------------------------------------------
@pytest.mark.skipif(not (EVAL_SAMPLES / "coco").exists(), reason="data_samples/eval not written yet")
def test_coco_and_vqav2_suites_on_the_shipped_samples():
    coco = evaluate(OraclePredictor(), suite="coco", shots=(0, 2), n=4, coco_dir=EVAL_SAMPLES / "coco")
    for entry in coco["tasks"].values():
        assert entry["n"] == 4 and entry["score"] >= entry["baseline"]
    vqa = evaluate(OraclePredictor(), suite="vqav2", shots=(0, 2), n=4, vqav2_dir=EVAL_SAMPLES / "vqav2")
    assert vqa["tasks"]["vqa@2shot"]["score"] == 1.0
    item = vqav2_items(EVAL_SAMPLES / "vqav2", 2, n=1)[0]
    assert item["prompt"].count("Answer:") == 3 and len(item["images"]) == 3 and len(item["answers"]) == 10
    constant = evaluate(ConstantPredictor.from_report(vqa), suite="vqav2", shots=(0,), n=4,
                        vqav2_dir=EVAL_SAMPLES / "vqav2")
    assert constant["tasks"]["vqa@0shot"]["score"] == vqa["tasks"]["vqa@0shot"]["baseline"]
    with pytest.raises(ValueError, match="coco_dir"):
        evaluate(OraclePredictor(), suite="coco", n=1)


def test_scoring_rules():
    items = [dict(task="count", answer="3", answers=["3"]), dict(task="count", answer="2", answers=["2"])]
    assert score_predictions("count", ["three", "5"], items) == (0.5, {"mae": 1.5, "unparsed": 0.0})
    items = [dict(task="color", answer="red", answers=["red"])]
    assert score_predictions("color", ["Red."], items)[0] == 1.0   # VQA normalisation, one unanimous reference


# ---- a briefly trained model ------------------------------------------------------------------------------
def _colour_batches(tok, cfg, *, n: int = 512, batch: int = 32, difficulty: str = "easy") -> list[dict]:
    """Pre-collated batches of single-image "Question: What color ...? Answer: X" samples (training seeds,
    disjoint from the held-out eval seeds); only the answer and its <eos> take loss."""
    world = ShapeWorld(difficulty, 64)
    samples = []
    for seed in range(n):
        question, answer, _ = ask(world.scene(seed), "color", random.Random(seed), world.difficulty)
        samples.append(Sample(stream="caption", segments=[(BOS + qa_text(question), False), (f" {answer}{EOS}", True)],
                              images=[world.image(seed)], id=str(seed)))
    collator = Collator(tok, cfg)
    return [collator(samples[i:i + batch]) for i in range(0, n, batch)]


@pytest.mark.slow
def test_briefly_trained_model_scores_between_constant_and_oracle(tok):
    start, threads = time.time(), torch.get_num_threads()
    torch.set_num_threads(1)   # this model's ops are so small that a second thread costs more than it gives (~6x)
    try:
        torch.manual_seed(0)
        cfg = micro_config()
        model = MM1Model(cfg)
        batches = _colour_batches(tok, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        for step in range(STEPS):
            b = batches[step % len(batches)]
            loss = model(b["input_ids"], b["images"], labels=b["labels"], attention_mask=b["attention_mask"]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        report = evaluate(model, tok, suite="shapeworld-pretrain", shots=(0,), n=100, batch_size=50,
                          tasks=("color",))
    finally:
        torch.set_num_threads(threads)
    entry = report["tasks"]["color@0shot"]
    print(f"colour after {STEPS} steps: {entry['score']:.3f} (majority {entry['baseline']:.3f}, oracle 1.0), "
          f"{time.time() - start:.0f} s")
    assert entry["baseline"] < entry["score"] < 1.0


STEPS = 200
