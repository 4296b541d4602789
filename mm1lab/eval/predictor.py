"""Predictors: what answers eval items. The `Predictor` protocol, and `ModelPredictor` for an MM1Model.

A `Predictor` maps a batch of items to answer strings and, for log-likelihood tasks, to choice indices.
`ModelPredictor` wraps an MM1Model (batched greedy decoding, log-likelihood choice ranking); `OraclePredictor` and
`ConstantPredictor` (`mm1lab.eval.baselines`) are the two reference points. All of them are scored by the same
code (`mm1lab.eval.scoring`), so their numbers compare directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from mm1lab.eval.items import Item
from mm1lab.eval.suites import DEFAULT_NEW_TOKENS, SHORT_NEW_TOKENS


class Predictor(Protocol):
    """Anything that answers eval items: a model, an oracle, a constant."""

    def __call__(self, items: Sequence[Item]) -> list[str]:
        """One answer string per item (generated after the item's prompt)."""

    def score_choices(self, items: Sequence[Item]) -> list[int]:
        """One index into `item["choices"]` per item (e.g. the most likely choice)."""


EVAL_MAX_IMAGES = 64


def eval_config(cfg):
    """`cfg` with `max_images` raised to `EVAL_MAX_IMAGES` for prompt encoding: MM1's 16 images per sequence is a
    pre-training data cap, and an 8-shot two-image prompt holds 18; the context length still bounds a prompt."""
    return dataclasses.replace(cfg, max_images=max(cfg.max_images, EVAL_MAX_IMAGES))


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ModelPredictor:
    """Batched, left-padded greedy decoding (deterministic) and log-likelihood choice ranking for an MM1Model.

    Args:
        model, tokenizer: an `MM1Model` and its `MM1Tokenizer`.
        collator: a `mm1lab.data.collate.Collator` (default: one built from tokenizer and model.cfg).
        chat: read `chat_prompt` + `query_images` (SFT) instead of the k-shot `prompt` + `images`; decoding stops
            at `<|end|>` / eos, else at the first newline (the demonstration separator) / eos.
        max_new_tokens: per answer; default `DEFAULT_NEW_TOKENS` by task, else `SHORT_NEW_TOKENS`.
    """

    def __init__(self, model, tokenizer, collator=None, *, chat: bool = False, max_new_tokens: int | None = None):
        from mm1lab.data.collate import Collator

        self.model, self.tok, self.chat, self.max_new_tokens = model, tokenizer, chat, max_new_tokens
        self.collator = collator if collator is not None else Collator(tokenizer, eval_config(model.cfg))
        if chat:
            self.stop_tokens = [tokenizer.end_id, tokenizer.eos_id]
        else:   # every token that contains a newline ends the answer, as it ends a demonstration
            self.stop_tokens = [tokenizer.eos_id] + [
                i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i], skip_special=False)]

    def _prompt(self, item: Item) -> tuple[str, list]:
        if not self.chat:
            return item["prompt"], list(item["images"])
        if item.get("chat_prompt") is None:
            raise ValueError(f"item {item.get('id')} ({item['task']}) has no chat prompt; evaluate it with k-shot "
                             "prompts (a pre-training suite) instead")
        return item["chat_prompt"], list(item["query_images"])

    def _encode(self, item: Item) -> dict[str, Any]:
        try:
            return self.collator.encode_prompt(*self._prompt(item))
        except ValueError as exc:
            raise ValueError(f"eval item {item.get('id')}: {exc}") from None

    @torch.no_grad()
    def __call__(self, items: Sequence[Item]) -> list[str]:
        from mm1lab.generate import left_pad

        encoded = [self._encode(it) for it in items]
        ids, mask = left_pad([e["input_ids"][0].tolist() for e in encoded], pad_id=self.tok.pad_id)
        images = [e["images"] for e in encoded if e["images"] is not None]
        task = items[0]["task"]
        budget = self.max_new_tokens or DEFAULT_NEW_TOKENS.get(task, SHORT_NEW_TOKENS)
        device = next(self.model.parameters()).device
        with _eval_mode(self.model):
            new = self.model.generate(ids.to(device), torch.cat(images).to(device) if images else None,
                                      attention_mask=mask.to(device), max_new_tokens=budget,
                                      stop_tokens=self.stop_tokens)
        texts = [self.tok.decode(row) for row in new.tolist()]
        return [t.strip() if self.chat else t.split("\n")[0].strip() for t in texts]

    @torch.no_grad()
    def loglikelihoods(self, items: Sequence[Item]) -> list[list[float]]:
        """Summed log-probability of each choice's tokens after the item's prompt (one list per item).

        A choice gets a leading space unless it has one: answers follow "Answer:" / `<|assistant|>` that way in
        training, and the byte-level BPE keeps the space on the word ("Ġred").
        """
        rows, conts, images = [], [], []
        for item in items:
            e = self._encode(item)
            context = e["input_ids"][0].tolist()
            for choice in item["choices"]:
                cont = self.tok.encode(choice if choice[:1].isspace() else " " + choice)
                rows.append(context + cont)
                conts.append(len(cont))
                if e["images"] is not None:
                    images.append(e["images"])
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.tok.pad_id, dtype=torch.long)   # right-padded: positions stay 0..
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for b, row in enumerate(rows):
            ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), True
        device = next(self.model.parameters()).device
        with _eval_mode(self.model):
            logits = self.model(ids.to(device), torch.cat(images).to(device) if images else None,
                                attention_mask=mask.to(device)).logits.float().cpu()
        scores = []
        for b, (row, k) in enumerate(zip(rows, conts)):
            logp = F.log_softmax(logits[b, len(row) - k - 1:len(row) - 1], dim=-1)   # position t predicts t + 1
            scores.append(float(logp.gather(-1, ids[b, len(row) - k:len(row), None]).sum()))
        out, at = [], 0
        for item in items:
            out.append(scores[at:at + len(item["choices"])])
            at += len(item["choices"])
        return out

    def score_choices(self, items: Sequence[Item]) -> list[int]:
        """The most likely choice per item (ties go to the first)."""
        return [max(range(len(s)), key=s.__getitem__) for s in self.loglikelihoods(items)]
