"""Interleaved documents: how many of their passages ask a question, and how many compare two images."""

from __future__ import annotations

import random

import pytest

from mm1lab.config import ConfigError
from mm1lab.data.shapeworld import ShapeWorld
from mm1lab.data.text import interleaved_document
from mm1lab.train import TrainConfig

WORLD = ShapeWorld("easy", 64)


def passages(n_docs: int, **options) -> list[str]:
    """Every passage after the opening line, over `n_docs` documents of four scenes each."""
    out = []
    for i in range(n_docs):
        scenes = [WORLD.scene(7000 + 4 * i + m) for m in range(4)]
        out += interleaved_document(scenes, random.Random(i), WORLD.difficulty, **options).split("\n")[1:]
    return out


@pytest.mark.parametrize("qa_share", [0.0, 0.45, 0.9, 1.0])
def test_qa_share_is_the_share_of_one_image_passages_that_ask(qa_share):
    parts = passages(300, qa_share=qa_share)
    assert len(parts) == 1200                                  # one passage per image, no comparisons
    asked = sum(p.startswith("<image>Question: ") and " Answer: " in p for p in parts) / len(parts)
    assert abs(asked - qa_share) < 0.05, (qa_share, asked)
    captions = [p for p in parts if not p.startswith("<image>Question: ")]
    assert all(p.startswith("<image> ") and len(p) > len("<image> ") for p in captions)


def test_qa_share_defaults_to_the_old_fixed_0_45_and_changes_the_documents():
    assert passages(50) == passages(50, qa_share=0.45)
    assert passages(50) != passages(50, qa_share=0.9)


def test_compare_share_pairs_images_into_two_image_questions():
    parts = passages(300, compare_share=1.0)
    assert all(p.startswith("<image><image>Question: ") for p in parts) and len(parts) == 600


def test_a_qa_share_outside_zero_to_one_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"TrainConfig.data.qa_share must be in \[0, 1\], got 1.5"):
        TrainConfig.from_dict(dict(name="t", model="tiny", steps=1, batch_size=1, data=dict(qa_share=1.5)))
