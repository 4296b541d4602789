"""Every text template in one place, so that training data and evaluation prompts can never drift apart.

Chat (SFT and chat evaluation):
    <bos><|user|> {user text with <image> markers}<|end|><|assistant|> {answer}<|end|> ... <eos>
Pre-training (captions, interleaved documents, text): <bos>{text}<eos>, every text token in the loss.
Few-shot prompts for pre-trained models are interleaved image/answer demonstrations in the very format the
interleaved documents use, so k-shot prompting is in distribution:
    <image>Question: How many shapes are there? Answer: 3
    <image>Question: How many shapes are there? Answer:
A segment is `(text, in_loss)`; the collator tokenizes segments one by one and masks the ones not in the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mm1lab.data.tokenizer import ASSISTANT, BOS, END, EOS, IMAGE, USER

Segment = tuple[str, bool]
SHORT_ANSWER = "Answer with a single word or number."   # LLaVA-1.5 style suffix for short-answer questions
DEMO_SEPARATOR = "\n"


# ---- chat ------------------------------------------------------------------------------------------------
def chat_segments(turns: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> list[Segment]:
    """Segments of a conversation; only assistant answers (with their `<|end|>`) and the final `<eos>` are in the loss.

    Args:
        turns: [{"role": "user" | "assistant", "content": str}, ...], starting with a user turn.
        add_generation_prompt: end with `<|assistant|>` (for generation) instead of `<eos>`.
    """
    segments: list[Segment] = [(BOS, False)]
    for i, turn in enumerate(turns):
        role, content = turn["role"], turn["content"].strip()
        if role == "user":
            segments.append((f"{USER} {content}{END}", False))
        elif role == "assistant":
            segments += [(ASSISTANT, False), (f" {content}{END}", True)]
        else:
            raise ValueError(f"turn {i}: role must be 'user' or 'assistant', got {role!r}")
    if add_generation_prompt:
        segments.append((ASSISTANT, False))
    else:
        segments.append((EOS, True))
    return segments


def chat_prompt(turns: Sequence[dict[str, str]] | str, *, add_generation_prompt: bool = True) -> str:
    """The chat text of `turns` (a single string is one user turn), ready to be answered by default."""
    if isinstance(turns, str):
        turns = [{"role": "user", "content": turns}]
    return "".join(text for text, _ in chat_segments(turns, add_generation_prompt=add_generation_prompt))


def user_content(question: str, num_images: int = 1, *, short: bool = False) -> str:
    """A user turn: one `<image>` marker per image, a newline, the question (plus the short-answer suffix)."""
    suffix = f" {SHORT_ANSWER}" if short else ""
    return IMAGE * num_images + "\n" + question + suffix if num_images else question + suffix


def chat_vqa_prompt(question: str, num_images: int = 1, *, short: bool = True) -> str:
    """A zero-shot chat prompt for a fine-tuned model; the answer is generated after `<|assistant|>`."""
    return chat_prompt(user_content(question, num_images, short=short))


# ---- pre-training -----------------------------------------------------------------------------------------
def pretrain_segments(text: str) -> list[Segment]:
    """A pre-training document: `<bos>text<eos>`, all text in the loss (the collator masks image tokens)."""
    return [(BOS + text.strip() + EOS, True)]


def caption_text(caption: str | None = None, num_images: int = 1) -> str:
    """An image-caption pair as pre-training text; with `caption=None`, the prompt that asks for one."""
    head = IMAGE * num_images + "Caption:"
    return head if caption is None else f"{head} {caption}"


def qa_text(question: str, answer: str | None = None, num_images: int = 1) -> str:
    """A question/answer passage after its image(s); with `answer=None`, the prompt that asks for the answer."""
    head = IMAGE * num_images + f"Question: {question} Answer:"
    return head if answer is None else f"{head} {answer}"


def kshot_prompt(demonstrations: Sequence[dict[str, Any]], query: dict[str, Any], *,
                 kind: str = "vqa") -> tuple[str, list[Any]]:
    """Build a k-shot prompt for a pre-trained model. Returns (text with `<image>` markers, images in order).

    Args:
        demonstrations: k dicts with "images" (list), "question" (for kind="vqa") and "answer".
        query: a dict with "images" and, for kind="vqa", "question".
        kind: "vqa" (Question/Answer) or "caption".
    The text starts with `<bos>` and ends right after "Answer:" / "Caption:"; the model continues with the answer.
    """
    if kind not in ("vqa", "caption"):
        raise ValueError(f"kind must be 'vqa' or 'caption', got {kind!r}")
    parts, images = [], []
    for item in [*demonstrations, query]:
        n = len(item["images"])
        answer = item.get("answer") if item is not query else None
        text = qa_text(item["question"], answer, n) if kind == "vqa" else caption_text(answer, n)
        parts.append(text)
        images += list(item["images"])
    return BOS + DEMO_SEPARATOR.join(parts), images


def text_choice_prompt(context: str) -> str:
    """A text-only benchmark context for log-likelihood ranking of its choices (no image, no chat)."""
    return BOS + context
