"""Tokenizer (fixed special ids, deterministic training) and the prompt templates shared by training and eval."""

import pytest

from mm1lab.data import prompts
from mm1lab.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_special_ids_match_config(tok):
    from mm1lab.config import MM1Config

    cfg = MM1Config.preset("tiny")
    assert SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<image>", "<|user|>", "<|assistant|>", "<|end|>")
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id) == (cfg.pad_token_id, cfg.bos_token_id,
                                                                   cfg.eos_token_id, cfg.image_token_id)
    assert (tok.user_id, tok.assistant_id, tok.end_id) == (4, 5, 6)
    assert tok.vocab_size <= cfg.lm.vocab_size


def test_encode_decode_round_trip(tok):
    text = "How many shapes are there? Answer: 3"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("<bos><|user|> <image>\nWhat color?<|end|><|assistant|> red<|end|><eos>")
    assert ids[:3] == [1, 4, 3] and ids[-1] == 2 and ids.count(3) == 1
    assert tok.encode("<image> Question") == tok.encode("<image>Question")   # spaces at markers are dropped


def test_training_is_deterministic(tmp_path):
    texts = [f"{n} red circles and {n + 1} blue squares" for n in range(200)]
    a = train_tokenizer(texts, vocab_size=400, path=tmp_path / "a.json")
    b = train_tokenizer(texts, vocab_size=400, path=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.encode("<image>") == [3] and b.vocab_size <= 400


def test_missing_tokenizer_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="mm1lab data samples"):
        load_tokenizer(tmp_path / "nope.json")


def test_chat_format_is_exact():
    turns = [{"role": "user", "content": "<image>\nWhat color?"}, {"role": "assistant", "content": "red"}]
    segments = prompts.chat_segments(turns)
    assert "".join(t for t, _ in segments) == "<bos><|user|> <image>\nWhat color?<|end|><|assistant|> red<|end|><eos>"
    assert [t for t, in_loss in segments if in_loss] == [" red<|end|>", "<eos>"]
    assert prompts.chat_prompt("<image>\nHi") == "<bos><|user|> <image>\nHi<|end|><|assistant|>"


def test_kshot_prompt_orders_images_and_ends_at_answer():
    demos = [{"images": ["a"], "question": "How many shapes are there?", "answer": "3"},
             {"images": ["b", "c"], "question": "Which image has more circles?", "answer": "first"}]
    text, images = prompts.kshot_prompt(demos, {"images": ["q"], "question": "How many shapes are there?"})
    assert images == ["a", "b", "c", "q"] and text.count("<image>") == 4
    assert text.startswith("<bos><image>Question: How many shapes are there? Answer: 3\n")
    assert text.endswith("<image>Question: How many shapes are there? Answer:")
    text, images = prompts.kshot_prompt([], {"images": ["q"]}, kind="caption")
    assert text == "<bos><image>Caption:" and images == ["q"]
