"""MM1's lessons: the verdict logic on planted results, resuming a partly finished lesson, every lesson in
smoke mode."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from mm1lab.ablate.lessons import LESSONS, lesson_arms
from mm1lab.ablate.verdict import Effect, interval, judge, t_quantile


def planted(lesson: str, values: dict[str, dict[str, list[float]]], scale: str = "gpu") -> dict:
    """Every arm of `lesson` at `scale` at a flat 50 on every metric, except what `values` sets."""
    flat = {m: [50.0, 50.5, 49.5] for m in ("0shot", "4shot", "8shot", "text")}
    return {arm: {**flat, **values.get(arm, {})} for arm in lesson_arms(lesson, scale)}


def shift(delta: float, noise=(0.0, 0.3, -0.3)) -> dict[str, list[float]]:
    return {m: [50.0 + delta + n for n in noise] for m in ("0shot", "4shot", "8shot", "text")}


def test_interval_is_students_t():
    m, low, high = interval([1.0, 2.0, 3.0])
    assert m == 2.0 and high - m == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-4)
    assert interval([5.0])[1] == -math.inf and t_quantile(2) == 4.303
    assert Effect("x", [1.0, 1.2, 0.9]).sign == 1 and Effect("x", [1.0, -1.0, 0.1]).sign == 0


@pytest.mark.parametrize("lesson,values,expected", [
    ("data-synthetic", {"dense-7": shift(3)}, "reproduced"),
    ("data-synthetic", {"dense-7": shift(-3)}, "not reproduced"),
    ("data-synthetic", {"dense-7": shift(0.1, (2.0, -2.0, 0.5))}, "inconclusive"),
    ("encoder", {"clip-128": shift(5), "clip-small-64": shift(1), "aim-64": shift(-1)}, "reproduced"),
    ("encoder", {"clip-128": shift(1), "clip-small-64": shift(5)}, "not reproduced"),
    ("connector", {"tokens-64": shift(6), "res-128": shift(6), "avgpool": shift(0.2)}, "reproduced"),
    ("connector", {"tokens-64": shift(0.1), "res-128": shift(6), "attnpool": shift(8)}, "not reproduced"),
    ("connector-cpu", {"tokens-64": shift(6), "res-128": shift(6), "attnpool": shift(-0.3)}, "reproduced"),
    ("data-captions", {"captions-100": {"0shot": [60, 61, 59], "4shot": [40, 41, 39], "8shot": [40, 40.5, 39.5]}},
     "reproduced"),
    ("data-captions", {"captions-100": {"0shot": [40, 41, 39]}}, "not reproduced"),
    ("data-text", {"text-30": shift(4)}, "reproduced"),
    ("data-mixture", {"5:5:1": {m: [55, 55.3, 54.7] for m in ("0shot", "4shot", "8shot")}}, "reproduced"),
    ("data-mixture", {"1:10:1": shift(5)}, "not reproduced"),
])
def test_verdicts_on_planted_results(lesson, values, expected):
    scale = "cpu" if lesson.endswith("-cpu") else "gpu"   # the cpu scale has fewer connector arms
    lesson = lesson.removesuffix("-cpu")
    verdict = judge(LESSONS[lesson].rule, planted(lesson, values, scale))
    assert verdict.verdict == expected, (verdict.reason, [(e.name, e.mean, e.low, e.high) for e in verdict.effects])
    assert verdict.effects and verdict.reason


def test_captioning_alone_is_reported_beside_the_caption_verdict_and_never_decides_it():
    """Captions-only lifts 0-shot captioning but not the VQA-heavy 0-shot average: the verdict follows the average."""
    flat = [50.0, 50.5, 49.5]
    values = {"captions-100": {"0shot": [40, 41, 39], "caption0": [80, 82, 79]}, "captions-0": {"caption0": flat},
              "captions-50": {"caption0": flat}}
    verdict = judge(LESSONS["data-captions"].rule, planted("data-captions", values))
    assert verdict.verdict == "not reproduced"
    beside = verdict.effects[-1]
    assert beside.name.startswith("0-shot captioning alone") and beside.sign == 1
    assert judge(LESSONS["data-captions"].rule, planted("data-captions", {})).effects[-1].name.startswith("text")


def test_every_lesson_has_arms_at_both_scales():
    for name, lesson in LESSONS.items():
        for scale in ("cpu", "gpu"):
            arms = lesson_arms(name, scale)
            expected = set(lesson.arms) - (set(lesson.gpu_only) if scale == "cpu" else set())
            assert set(arms) == expected and all("STEPS" in p for p in arms.values())
        assert lesson.claim and lesson.paper
    assert "d-abstractor" not in lesson_arms("connector", "cpu") and "d-abstractor" in lesson_arms("connector", "gpu")


@pytest.mark.slow
@pytest.mark.xdist_group("ablate")
def test_a_killed_lesson_resumes_without_redoing_finished_runs(tmp_path):
    from mm1lab.ablate.suite import run_folder, run_lesson

    # The first call runs two at a time, in two processes; the second redoes one run alone.
    first = run_lesson("data-synthetic", seeds=2, out=tmp_path, smoke=True, jobs=2, progress=lambda s: None)
    assert first["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    lesson_dir = tmp_path / "ablate-data-synthetic-cpu-smoke"
    kept = run_folder(lesson_dir, "dense-0", 0)
    stamp = (kept / "status.json").read_text()
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    assert json.loads(stamp)["threads"] == threads      # the thread count its kernel ran on
    broken = run_folder(lesson_dir, "dense-7", 1)
    (broken / "status.json").unlink()                   # as if killed during this run
    said = []
    again = run_lesson("data-synthetic", seeds=2, out=tmp_path, smoke=True, jobs=1, progress=said.append)
    assert (kept / "status.json").read_text() == stamp  # not redone
    assert sum("kept" in s for s in said) == 3 and any("dense-7 seed 1: ok" in s for s in said)
    # Redone alone, on the same thread count, the run gives exactly what it gave side by side with another.
    assert again["scores"] == first["scores"]
    assert again["scores"]["dense-7"]["0shot"] and (lesson_dir / "lesson.png").exists()
    assert json.loads((lesson_dir / "lesson.json").read_text())["verdict"] == again["verdict"]


# Every arm of every lesson at both scales is a run notebook 02 accepts (declared parameter names, plain values,
# known parts and connectors); the smoke runs below check the cpu arms also run.
@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_arm_is_a_run_notebook_02_accepts(scale):
    from mm1lab.ablate.suite import NOTEBOOK
    from mm1lab.config import CONNECTORS
    from mm1lab.runner import check_notebook
    from mm1lab.stage0.presets import STAGE0_PRESETS

    for name in LESSONS:
        for arm, params in lesson_arms(name, scale).items():
            check_notebook(NOTEBOOK, {**params, "SEED": 0})
            assert params.get("CONNECTOR", "c-abstractor") in CONNECTORS, (name, arm)
            init = params.get("VISION_INIT")
            if init and scale == "cpu":
                assert Path(init).name in STAGE0_PRESETS, (name, arm, init)


@pytest.mark.slow
@pytest.mark.xdist_group("ablate")
@pytest.mark.parametrize("lesson", [name for name in LESSONS if name != "data-synthetic"])
def test_every_lesson_runs_in_smoke_mode(lesson, tmp_path):
    from mm1lab.ablate.suite import run_lesson

    result = run_lesson(lesson, seeds=1, out=tmp_path, smoke=True, progress=lambda s: None)
    assert result["verdict"] != "incomplete", result["reason"]
    assert set(result["scores"]) == set(lesson_arms(lesson, "cpu"))   # the cpu arms (d-abstractor: gpu only)


def test_identical_arms_across_lessons_share_one_key():
    from mm1lab.ablate.suite import run_key

    def key(lesson, arm, seed=0):
        return run_key({**lesson_arms(lesson, "cpu")[arm], "SEED": seed, "SMOKE": False})

    assert key("data-captions", "captions-50") == key("data-text", "text-10") == key("data-synthetic", "dense-7")
    assert key("data-text", "text-0") == key("data-mixture", "1:1:0")          # 50:50:0 is 1:1:0
    assert key("data-text", "text-0") != key("data-text", "text-0", seed=1)
    assert key("data-mixture", "5:5:1") != key("data-text", "text-10")         # 5:5:1 is not 45:45:10
    # The connector lesson names the notebook's defaults (45:45:10 is 02_pretrain's MIXTURE, 16 the tiny preset's
    # tokens) where the data lessons leave them out: the same run.
    assert key("connector", "c-abstractor") == key("data-text", "text-10")
    assert key("connector", "tokens-64") != key("connector", "c-abstractor")


def test_effective_parameters_fill_the_notebooks_defaults_and_the_presets_sizes():
    from mm1lab.ablate.suite import effective, notebook_defaults

    defaults = notebook_defaults()
    assert defaults["CONNECTOR"] == "c-abstractor" and defaults["IMAGE_TOKENS"] is None   # read from 02_pretrain
    tiny = effective({"PRESET": "tiny"})
    assert (tiny["IMAGE_TOKENS"], tiny["RESOLUTION"]) == (16, 64)
    assert effective({"PRESET": "tiny", "CONNECTOR": "mlp"})["IMAGE_TOKENS"] is None   # mlp: every patch, not 16
    assert effective({"PRESET": "tiny", "RESOLUTION": 128})["RESOLUTION"] == 128


def test_seeds_per_lesson_on_the_command_line():
    from mm1lab.ablate.cli import lesson_seeds

    assert lesson_seeds("connector,data-text:5", 3) == {"connector": 3, "data-text": 5}
    assert lesson_seeds("all", 4) == dict.fromkeys(LESSONS, 4)
    for bad in ("data-txt", "data-text:0", "data-text:x"):
        with pytest.raises(SystemExit, match="data-t"):
            lesson_seeds(bad, 3)


def test_a_run_another_lesson_finished_is_reused_not_redone(tmp_path):
    """Plant finished runs with data-synthetic's exact parameters in another lesson's folder: the lesson copies them,
    marks them, runs no notebook and counts no time for them."""
    import yaml

    from mm1lab.ablate.suite import run_folder, run_lesson

    for i, (arm, params) in enumerate(lesson_arms("data-synthetic", "cpu").items()):
        source = run_folder(tmp_path / "ablate-data-captions-cpu-smoke", f"planted-{arm}", 0)
        source.mkdir(parents=True)
        (source / "parameters.yaml").write_text(yaml.safe_dump({**params, "SEED": 0, "SMOKE": True}))
        (source / "status.json").write_text(json.dumps({"status": "ok", "duration_s": 99.0}))
        (source / "metrics.json").write_text(json.dumps({"average": {"0shot": 40.0 + i, "4shot": 41.0 + i,
                                                                      "8shot": 42.0 + i}}))
    other_scale = run_folder(tmp_path / "ablate-data-text-gpu-smoke", "x", 0)   # another scale: never reused
    other_scale.mkdir(parents=True)
    said = []
    result = run_lesson("data-synthetic", seeds=1, out=tmp_path, smoke=True, progress=said.append)
    assert sum("reused" in s for s in said) == 2, said
    assert result["scores"]["dense-7"]["0shot"] == [41.0] and result["scores"]["dense-0"]["8shot"] == [42.0]
    assert result["seconds"] == 0.0
    copied = run_folder(tmp_path / "ablate-data-synthetic-cpu-smoke", "dense-7", 0)
    assert json.loads((copied / "reused.json").read_text())["from"].endswith("planted-dense-7-seed0")


def test_an_encoder_the_lesson_trains_reaches_its_runs_as_an_absolute_path(tmp_path, monkeypatch):
    """Each run's notebook executes in its own folder, so a lesson folder given relative to the working directory
    (`--out papermill_runs`, the default) must not leak into VISION_INIT as a relative path."""
    from mm1lab.ablate.lessons import STAGE0
    from mm1lab.ablate.suite import ensure_parts

    monkeypatch.chdir(tmp_path)
    assert not (STAGE0 / "aim-small").exists()          # a stage-0 preset that stage0/ does not ship
    arms = {"aim-small-64": {"VISION_INIT": str(STAGE0 / "aim-small")}}
    ensure_parts(arms, Path("ablate-encoder-cpu-smoke"), smoke=True, progress=lambda s: None)
    path = Path(arms["aim-small-64"]["VISION_INIT"])
    assert path.is_absolute() and (path / "config.json").exists(), path


def test_publishing_one_lesson_keeps_the_others_sections(tmp_path):
    from mm1lab.ablate.report import publish
    from mm1lab.ablate.verdict import interval

    def result(lesson: str, verdict: str, value: float) -> dict:
        arms = list(lesson_arms(lesson, "cpu"))
        scores = {arm: {"0shot": [value, value + 1, value - 1]} for arm in arms}
        return dict(lesson=lesson, claim="c", paper="p", seeds=3, arms=arms, scores=scores, effects=[],
                    intervals={a: {m: interval(v) for m, v in s.items()} for a, s in scores.items()},
                    verdict=verdict, reason=f"planted {verdict}", seconds=60.0)

    docs = tmp_path / "ablations.md"
    docs.write_text("# Ablations\n\nhand-written text\n")
    publish([result("data-text", "inconclusive", 40.0), result("encoder", "reproduced", 50.0)], docs,
            images=tmp_path / "img")
    first = docs.read_text()
    assert first.index("### encoder") < first.index("### data-text")          # LESSONS order, not call order
    publish([result("data-text", "not reproduced", 30.0)], docs, images=tmp_path / "img")
    again = docs.read_text()
    assert again.startswith("# Ablations\n\nhand-written text\n")
    encoder = first[first.index("### encoder"):first.index("### data-text")]
    assert encoder in again and "| encoder | reproduced | planted reproduced |" in again   # kept as it was
    assert "| data-text | not reproduced | planted not reproduced |" in again and "planted inconclusive" not in again
    assert again.count("### data-text") == 1 and "30.0 [" in again
    publish([], docs, images=tmp_path / "img")
    assert docs.read_text() == again                                           # republishing nothing changes nothing
