"""Harness bridges: lmms-eval's real evaluator with the mm1lab plugin on the local sample tasks, and the VLMEvalKit
class, each checked against mm1lab's own generation and scoring (`ModelPredictor`) on the same prompts.

The model is MM1 from the committed stage-0 parts (CLIP encoder, ShapeWorld LM, a fresh connector): its answers
are words that differ between questions, so equal outputs mean something. lmms-eval is installed by `make setup`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from PIL import Image

from mm1lab.data.prompts import SHORT_ANSWER, chat_prompt, kshot_prompt
from mm1lab.data.tokenizer import IMAGE, default_samples_dir
from mm1lab.demo import STAGE0
from mm1lab.eval.items import coco_items, vqav2_items
from mm1lab.eval.predictor import ModelPredictor
from mm1lab.eval.scoring import score_predictions
from mm1lab.load import load_model

pytestmark = pytest.mark.xdist_group("bridges")   # one worker builds the model and imports lmms-eval once

EVAL = default_samples_dir() / "eval"
TASKS = default_samples_dir().parent / "mm1lab" / "eval" / "bridges" / "tasks"
LIMIT = 4   # docs per task through lmms-eval


def require_lmms_eval() -> None:
    """Skip, saying why, where lmms-eval is not importable (`make setup` installs it)."""
    try:
        import lmms_eval.evaluator  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"lmms-eval is not installed ({exc}); `make setup` installs it (docs/harnesses.md)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An exported MM1 from the stage-0 parts (seeded connector), as `lmms-eval --model_args pretrained=` takes."""
    from mm1lab.pretrained import build_mm1_from_parts

    torch.manual_seed(0)
    model, tok = build_mm1_from_parts(STAGE0 / "clip-tiny", STAGE0 / "lm-tiny", dict(kind="avgpool", num_tokens=4))
    return model.save_pretrained(tmp_path_factory.mktemp("bridges") / "mm1", tokenizer=tok)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """mm1lab's own path: the loaded checkpoint and its `ModelPredictor`s (k-shot/plain and chat)."""
    model, tok = load_model(checkpoint)
    return dict(model=model, tok=tok, plain=ModelPredictor(model, tok), chat=ModelPredictor(model, tok, chat=True))


@pytest.fixture(scope="module")
def lmms(checkpoint, tmp_path_factory):
    """lmms-eval's `simple_evaluate` on the local tasks: every task with the plain model, VQAv2 with the chat one."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            env.setenv(name, "1")
        require_lmms_eval()
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        def run(model: str, tasks: list[str]) -> dict:
            manager = TaskManager(include_path=str(TASKS), include_defaults=False, model_name=model)
            return simple_evaluate(model=model, model_args=f"pretrained={checkpoint}", tasks=tasks, limit=LIMIT,
                                   batch_size=2, task_manager=manager, log_samples=True)

        return dict(plain=run("mm1lab_pretrained", ["mm1lab_samples"]), chat=run("mm1lab", ["mm1lab_vqav2_sample"]))


def answers(result: dict, task: str) -> list[str]:
    """The model's answers in doc order, as the task's process_results saw them (stripped)."""
    return [s["filtered_resps"][0].strip() for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


# ---- lmms-eval ----------------------------------------------------------------------------------------------
def test_entry_point_names_both_models():
    found = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert found.get("mm1lab") == "mm1lab.eval.bridges.lmms:lmms_models", (
        "the lmms_eval.models entry point is missing: reinstall mm1lab (`make setup` or `pip install -e .`)")
    require_lmms_eval()
    from lmms_eval.models import get_model

    from mm1lab.eval.bridges.lmms import MM1Chat, MM1Pretrained

    assert get_model("mm1lab") is MM1Chat and get_model("mm1lab_pretrained") is MM1Pretrained


def test_lmms_eval_scores_every_local_task(lmms):
    results = lmms["plain"]["results"]
    assert set(results) == {"mm1lab_vqav2_sample", "mm1lab_vqav2_sample_mc", "mm1lab_coco_sample"}
    for task, metrics in (("mm1lab_vqav2_sample", ("vqa_accuracy",)), ("mm1lab_vqav2_sample_mc", ("acc",)),
                          ("mm1lab_coco_sample", ("cider_d", "bleu4"))):
        for metric in metrics:
            value = results[task][f"{metric},none"]
            assert 0.0 <= value <= (10.0 if metric == "cider_d" else 1.0), (task, metric, value)
        assert len(lmms["plain"]["samples"][task]) == LIMIT
    assert "vqa_accuracy,none" in lmms["chat"]["results"]["mm1lab_vqav2_sample"]


def test_generate_until_matches_mm1lab_generation_and_scores(lmms, reference):
    vqa = vqav2_items(EVAL / "vqav2", 0, n=LIMIT)
    ours = answers(lmms["plain"], "mm1lab_vqav2_sample")
    assert ours == reference["plain"](vqa)
    assert len(set(ours)) > 1, f"the stage-0 model should answer different questions differently, got {ours}"
    accuracy = lmms["plain"]["results"]["mm1lab_vqav2_sample"]["vqa_accuracy,none"]
    assert accuracy == pytest.approx(score_predictions("vqa", ours, vqa)[0])
    captions = coco_items(EVAL / "coco", 0, n=LIMIT)
    ours = answers(lmms["plain"], "mm1lab_coco_sample")
    assert ours == reference["plain"](captions)
    result = lmms["plain"]["results"]["mm1lab_coco_sample"]
    score, extra = score_predictions("caption", ours, captions)
    assert (result["cider_d,none"], result["bleu4,none"]) == pytest.approx((score, extra["bleu4"]))
    # chat: the SFT prompt (<|user|> <image>\n... <|end|><|assistant|>) and decoding to the end of the turn
    assert answers(lmms["chat"], "mm1lab_vqav2_sample") == reference["chat"](vqa)


def test_multiple_choice_ranks_like_mm1lab(lmms, reference):
    samples = sorted(lmms["plain"]["samples"]["mm1lab_vqav2_sample_mc"], key=lambda s: s["doc_id"])
    items = vqav2_items(EVAL / "vqav2", 0, n=LIMIT)
    for item, sample in zip(items, samples):
        item["choices"] = sample["doc"]["choices"]
    expected = reference["plain"].loglikelihoods(items)
    for sample, item, logps, pick in zip(samples, items, expected, reference["plain"].score_choices(items)):
        scores = [score for score, _ in sample["filtered_resps"]]
        # lmms-eval ranks multiple choice by argmin, so the plugin hands it negative log-probabilities
        assert [-s for s in scores] == pytest.approx(logps, abs=1e-4)
        assert sample["acc"] == float(item["choices"][pick] == item["answer"])


def test_loglikelihood_is_the_summed_logprob_and_greedy_flag(checkpoint, reference, lmms):
    from lmms_eval.api.instance import Instance

    from mm1lab.data.guards import read_json_file
    from mm1lab.eval.bridges.lmms import MM1Pretrained
    from mm1lab.eval.bridges.tasks.utils import VQAV2_FILES, doc_to_visual, vqav2_doc_to_text, vqav2_docs

    docs = vqav2_docs(read_json_file(EVAL / "vqav2" / VQAV2_FILES[0])["questions"][:1])
    item = vqav2_items(EVAL / "vqav2", 0, n=1)[0]
    greedy = reference["plain"]([item])[0]                # the model's own answer is its greedy continuation
    other = next(c for c in docs[0]["choices"] if c != greedy)
    plugin = MM1Pretrained(pretrained=str(checkpoint), batch_size=2)
    plugin.task_dict = {"vqa": {"validation": docs}}
    context = vqav2_doc_to_text(docs[0], {"mm1lab_prompt": "plain"})
    requests = [Instance("loglikelihood", (context, lambda doc, t=target: t, doc_to_visual, 0, "vqa", "validation"),
                         idx=0, metadata=dict(task="vqa", doc_id=0, repeats=1)) for target in (greedy, other)]
    out = [r.text for r in plugin.loglikelihood(requests)]   # (log-prob, is_greedy), see MM1Lmms.loglikelihood
    expected = reference["plain"].loglikelihoods([dict(item, choices=[greedy, other])])[0]
    assert [logp for logp, _ in out] == pytest.approx(expected, abs=1e-4)
    assert [flag for _, flag in out] == [True, False]


def test_prompts_are_mm1labs_own(checkpoint):
    from mm1lab.eval.bridges.core import BridgeModel

    image = object()   # render() only places images; open_part passes non-paths through
    plain = BridgeModel(checkpoint, prompt="plain")
    text, images = plain.render([image, "Question: What color is the star? Answer:"])
    query = dict(images=[image], question="What color is the star?")
    assert (text, images) == kshot_prompt([], query)
    chat = BridgeModel(checkpoint, prompt="chat")
    text, _ = chat.render(["First:", image, "Second:", image, "Same shape?"])
    assert text == chat_prompt(f"First:{IMAGE}\nSecond:{IMAGE}\nSame shape?")
    with pytest.raises(ValueError, match="2 <image> markers for 1 images"):
        chat.render_marked(f"{IMAGE}{IMAGE} Same?", [image])


# ---- VLMEvalKit -------------------------------------------------------------------------------------------
def test_vlmevalkit_generate_inner_matches_mm1lab(checkpoint, reference):
    from mm1lab.eval.bridges.vlmevalkit import MM1VLM

    items = vqav2_items(EVAL / "vqav2", 0, n=LIMIT)
    images = [EVAL / "vqav2" / "val2014" / f"COCO_val2014_{q // 10:012d}.jpg" for q in (10, 11, 12, 20)]
    chat = MM1VLM(str(checkpoint), prompt="chat", max_new_tokens=8)
    ours = [chat.generate_inner([dict(type="image", value=str(path)),
                                 dict(type="text", value=f"{item['question']} {SHORT_ANSWER}")], dataset="VQAv2")
            for item, path in zip(items, images)]
    assert ours == reference["chat"](items)
    plain = MM1VLM(str(checkpoint), prompt="plain", max_new_tokens=8)
    ours = [plain.generate([str(path), f"Question: {item['question']} Answer:"]) for item, path in zip(items, images)]
    assert ours == reference["plain"](items)


def test_vlmevalkit_interleaves_images_where_they_stand(checkpoint, reference):
    from mm1lab.eval.bridges.vlmevalkit import MM1VLM
    from mm1lab.generate import left_pad

    first, second = (EVAL / "vqav2" / "val2014" / f"COCO_val2014_{i:012d}.jpg" for i in (1, 4))
    message = [dict(type="text", value="First:"), dict(type="image", value=str(first)),
               dict(type="text", value="Second:"), dict(type="image", value=str(second)),
               dict(type="text", value="Do they show the same shape?")]
    ours = MM1VLM(str(checkpoint), prompt="chat", max_new_tokens=12).generate_inner(message)
    model, tok, collator = reference["model"], reference["tok"], reference["chat"].collator
    encoded = collator.encode_prompt(chat_prompt(f"First:{IMAGE}\nSecond:{IMAGE}\nDo they show the same shape?"),
                                     [Image.open(first).convert("RGB"), Image.open(second).convert("RGB")])
    ids, mask = left_pad([encoded["input_ids"][0].tolist()], pad_id=tok.pad_id)
    new = model.generate(ids, encoded["images"], attention_mask=mask, max_new_tokens=12,
                         stop_tokens=[tok.eos_id, tok.end_id])
    assert ours == tok.decode(new[0].tolist()).strip()
