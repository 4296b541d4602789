"""ShapeWorld: deterministic scenes, resolution-independent rendering, the render cache, and the eval sets."""

import warnings

import numpy as np
import pytest

from mm1lab.data.evalsets import EVAL_BASE, TASKS, eval_set
from mm1lab.data.shapeworld import DIFFICULTIES, ShapeWorld, make_scene, render


@pytest.mark.parametrize("difficulty", list(DIFFICULTIES))
def test_scenes_are_deterministic_and_respect_the_knobs(difficulty):
    d = DIFFICULTIES[difficulty]
    for seed in range(50):
        scene = make_scene(seed, difficulty)
        assert scene == make_scene(seed, difficulty)
        assert d.min_objects <= len(scene.objects) <= d.max_objects
        assert {o.color for o in scene.objects} <= set(d.color_names)
        assert {o.shape for o in scene.objects} <= set(d.shape_names)
        if d.one_color:
            assert len({o.color for o in scene.objects}) == 1
    assert make_scene(1, difficulty) != make_scene(2, difficulty)


def test_same_scene_at_any_resolution():
    scene = make_scene(7, "hard")
    small, large = np.asarray(render(scene, 64), float), np.asarray(render(scene, 256), float)
    assert small.shape == (64, 64, 3) and large.shape == (256, 256, 3)
    pooled = large.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))   # only the pixels change
    assert np.abs(pooled - small).mean() < 12


def test_small_text_renders_with_the_bundled_font():
    scene = next(make_scene(s, "hard") for s in range(100) if make_scene(s, "hard").signs)
    scene.objects = []
    scene.signs[0].height = 0.06
    for res in (64, 256):
        image = np.asarray(render(scene, res), float)
        assert image.std() > 1, "text left no ink"


def test_cache_is_used_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("MM1LAB_CACHE", str(tmp_path))
    world = ShapeWorld("easy", 32, block_size=8)
    first = world.array(11)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and "easy-" in str(files[0]) and "32px" in str(files[0])
    again = ShapeWorld("easy", 32, block_size=8).array(11)   # a fresh instance reads the file
    assert np.array_equal(first, again)
    assert np.array_equal(first, np.asarray(render(make_scene(11, "easy"), 32)))
    ShapeWorld("medium", 32, block_size=8).array(11)
    assert len(list(tmp_path.rglob("*.npy"))) == 2


def test_a_cache_that_cannot_be_written_warns_once_and_rendering_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache's folder should be, as a full disk refuses a write")
    world = ShapeWorld("easy", 32, cache_dir=blocker, block_size=8)
    with pytest.warns(UserWarning, match=r"could not write its render cache in .*not-a-folder.*MM1LAB_CACHE"):
        first = world.array(11)
    assert np.array_equal(first, np.asarray(render(make_scene(11, "easy"), 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # once is enough: later blocks render quietly
        later = world.array(100)
    assert np.array_equal(later, np.asarray(render(make_scene(100, "easy"), 32)))
    assert blocker.is_file() and not list(tmp_path.rglob("*.tmp"))


def test_the_ocr_stream_packs_its_scenes_into_few_cache_blocks():
    from mm1lab.data.streams import OCR_GROUP, ShapeWorldStreams

    medium = ShapeWorldStreams("medium", 64, cache=False)
    seeds = [medium.ocr_seed(i) for i in range(2 * medium.ocr_items_per_group)]
    assert len(set(seeds)) == len(seeds) and all(medium.world.scene(s).signs for s in seeds)
    # two groups' items come from two groups of seeds: 2 x 256 renders for 128 items, not 64 per item
    assert len({s // OCR_GROUP for s in seeds}) == 2


@pytest.mark.parametrize("task", TASKS)
def test_eval_sets_are_stable_and_held_out(task, tmp_path):
    difficulty = "medium" if task == "ocr" else "easy"
    items = eval_set(task, n=6, seed=0, difficulty=difficulty, shots=4, cache_dir=tmp_path)
    again = eval_set(task, n=6, seed=0, difficulty=difficulty, shots=4, cache_dir=tmp_path)
    assert [i["prompt"] for i in items] == [i["prompt"] for i in again]
    for item in items:
        assert {"id", "images", "prompt", "answer", "answers", "choices", "ground_truth"} <= set(item)
        assert item["prompt"].count("<image>") == len(item["images"])
        assert item["chat_prompt"].count("<image>") == len(item["query_images"])
        if item["choices"] is not None:
            assert item["answer"] in item["choices"]
        if task != "text":
            assert all(g["seed"] >= EVAL_BASE for g in item["ground_truth"])


def test_pope_is_balanced_and_color_count_answers_match_the_scene(tmp_path):
    pope = eval_set("pope", n=20, difficulty="easy", cache_dir=tmp_path)
    assert sum(i["answer"] == "yes" for i in pope) == 10
    for item in eval_set("count", n=10, difficulty="easy", cache_dir=tmp_path):
        assert item["answer"] == str(len(item["ground_truth"][0]["objects"]))
    for item in eval_set("color", n=10, difficulty="easy", cache_dir=tmp_path):
        assert item["answer"] == item["ground_truth"][0]["objects"][0]["color"]
