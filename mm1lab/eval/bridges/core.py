"""What both harness bridges share: an mm1lab checkpoint that turns interleaved text and images into a prompt,
generates until stop strings, and scores continuations.

The bridges (`mm1lab.eval.bridges.lmms`, `mm1lab.eval.bridges.vlmevalkit`) only translate their harness's request
format into `parts` (a list of strings and images, in reading order) and call `BridgeModel`. Prompt formats come
from `mm1lab.data.prompts`, so a harness sees the model exactly as mm1lab's own harness does:

    chat  (fine-tuned):  <bos><|user|> <image>\\n{text}<|end|><|assistant|>        = prompts.chat_prompt
    plain (pre-trained): <bos><image>{text}                                       = prompts.qa_text / caption_text

b - batch, n - sequence, v - vocabulary
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mm1lab.data.prompts import DEMO_SEPARATOR, chat_prompt
from mm1lab.data.tokenizer import BOS, IMAGE

Part = Any   # text (str) or an image (PIL image, uint8 array, or a pathlib.Path to an image file)


@dataclass(frozen=True)
class PromptFormat:
    """How interleaved parts become model text: what follows a run of images before text, and the wrapper."""

    after_images: str
    wrap: Callable[[str], str]
    chat: bool                   # decoding also stops at <|end|>, which ends an assistant turn
    until: tuple[str, ...]       # stop strings for harnesses that send none (VLMEvalKit)


PROMPT_FORMATS = {
    # prompts.user_content's layout; an answer ends with the turn
    "chat": PromptFormat(after_images="\n", wrap=chat_prompt, chat=True, until=()),
    # prompts.qa_text's layout; a line break ends an answer, as it ends a k-shot demonstration
    "plain": PromptFormat(after_images="", wrap=lambda text: text if text.startswith(BOS) else BOS + text,
                          chat=False, until=(DEMO_SEPARATOR,)),
}


def open_part(part: Part) -> Any:
    """An image part as something the collator reads: paths are decoded (RGB, mm1lab's guarded decoder), images
    pass through."""
    if not isinstance(part, Path):
        return part
    from mm1lab.data.guards import open_image
    from mm1lab.data.sample import SkipSample

    try:
        return open_image(part, "image")
    except SkipSample as skip:   # a harness request cannot be skipped: it fails, naming the file
        raise ValueError(f"cannot read {skip}") from None


class BridgeModel:
    """An mm1lab checkpoint behind a harness: prompts from interleaved parts, generation, continuation scores.

    Args:
        path: a run, checkpoint, exported or notebook run folder (`mm1lab.load_model`).
        prompt: "chat" for fine-tuned models, "plain" for pre-trained ones (`PROMPT_FORMATS`).
        device, dtype: where and in which precision the model runs (dtype None keeps the checkpoint's).
        batch_size: requests per forward pass.
    """

    def __init__(self, path: str | Path, *, prompt: str = "chat", device: str = "cpu",
                 dtype: torch.dtype | None = None, batch_size: int = 1):
        from mm1lab.data.collate import Collator
        from mm1lab.data.tokenizer import as_mm1_tokenizer
        from mm1lab.eval.predictor import eval_config
        from mm1lab.load import load_model

        if prompt not in PROMPT_FORMATS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_FORMATS)}, got {prompt!r} (chat for a "
                             "fine-tuned checkpoint, plain for a pre-trained one)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_model(path, device=device, dtype=dtype)
        self.model, self.path, self.device = loaded.model, loaded.path, torch.device(device)
        self.tok = as_mm1_tokenizer(loaded.tokenizer)
        self.format, self.batch_size = PROMPT_FORMATS[prompt], batch_size
        self.collator = Collator(self.tok, eval_config(self.model.cfg))
        self._stops: dict[tuple[str, ...], list[int]] = {}

    # ---- prompts ------------------------------------------------------------------------------------------
    def render(self, parts: Sequence[Part]) -> tuple[str, list]:
        """(prompt text with `<image>` markers, images in order) for interleaved parts in reading order: a `str` is
        text, anything else an image (a `pathlib.Path` is opened)."""
        text, images = "", []
        for i, part in enumerate(parts):
            if isinstance(part, str):
                text += part
                continue
            images.append(open_part(part))
            text += IMAGE
            follows = parts[i + 1] if i + 1 < len(parts) else None
            if isinstance(follows, str) and follows and not follows.startswith(self.format.after_images):
                text += self.format.after_images
        return self.format.wrap(text), images

    def render_marked(self, text: str, images: Sequence[Part]) -> tuple[str, list]:
        """A text that already holds one `<image>` marker per image (an interleaved harness context), wrapped."""
        if text.count(IMAGE) != len(images):
            raise ValueError(f"the prompt has {text.count(IMAGE)} {IMAGE} markers for {len(images)} images; "
                             f"put one marker where each image goes, or none to put all images first")
        return self.format.wrap(text), [open_part(im) for im in images]

    # ---- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[tuple[str, list]], *, until: Sequence[str] = (), max_new_tokens: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
        """Continuations of rendered prompts, each cut before the first of the `until` strings (greedy by default).

        Decoding stops at eos (and `<|end|>` for chat), and early at any token whose text holds an `until` string;
        a stop string spread over several tokens is cut from the text afterwards.
        """
        from mm1lab.generate import left_pad

        stops = [self.tok.eos_id] + ([self.tok.end_id] if self.format.chat else []) + self._stop_ids(tuple(until))
        out = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            encoded = [self.collator.encode_prompt(text, list(images)) for text, images in batch]
            ids, mask = left_pad([e["input_ids"][0].tolist() for e in encoded], pad_id=self.tok.pad_id)
            images = [e["images"] for e in encoded if e["images"] is not None]
            new = self.model.generate(ids.to(self.device), torch.cat(images).to(self.device) if images else None,
                                      attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                                      temperature=temperature, top_p=top_p, stop_tokens=stops)
            out += [cut_at(self.tok.decode(row), until) for row in new.tolist()]
        return out

    def _stop_ids(self, until: tuple[str, ...]) -> list[int]:
        """Token ids whose text contains a stop string (a vocabulary scan, once per set of stop strings)."""
        if until not in self._stops:
            self._stops[until] = [i for i in range(self.tok.vocab_size)
                                  if any(s and s in self.tok.decode([i], skip_special=False) for s in until)]
        return self._stops[until]

    # ---- scoring ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, list, str]]) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether greedy decoding would produce it) per
        (rendered prompt, images, continuation).

        A continuation gets a leading space unless it has one, as in `ModelPredictor.loglikelihoods`: answers
        follow "Answer:" / `<|assistant|>` that way in training, and the byte-level BPE keeps the space on the word.
        """
        out = []
        for start in range(0, len(requests), self.batch_size):
            rows, conts, images = [], [], []
            for text, ims, continuation in requests[start:start + self.batch_size]:
                e = self.collator.encode_prompt(text, list(ims))
                cont = self.tok.encode(continuation if continuation[:1].isspace() else " " + continuation)
                if not cont:
                    raise ValueError(f"empty continuation {continuation!r}: nothing to score")
                rows.append(e["input_ids"][0].tolist() + cont)
                conts.append(len(cont))
                if e["images"] is not None:
                    images.append(e["images"])
            limit = self.model.cfg.lm.max_seq_len
            if max(len(r) for r in rows) > limit:
                raise ValueError(f"a prompt plus continuation of {max(len(r) for r in rows)} tokens exceeds the "
                                 f"model's context (lm.max_seq_len={limit}); shorten the task's prompt")
            ids = torch.full((len(rows), max(len(r) for r in rows)), self.tok.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids, dtype=torch.bool)   # right-padded: positions stay 0.. as in training
            for b, row in enumerate(rows):
                ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), True
            logits = self.model(ids.to(self.device), torch.cat(images).to(self.device) if images else None,
                                attention_mask=mask.to(self.device)).logits.float().cpu()
            for b, (row, k) in enumerate(zip(rows, conts)):
                step = logits[b, len(row) - k - 1:len(row) - 1]        # position t predicts token t + 1
                target = ids[b, len(row) - k:len(row)]
                logp = F.log_softmax(step, dim=-1).gather(-1, target[:, None]).sum()
                out.append((float(logp), bool((step.argmax(-1) == target).all())))
        return out


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to (not including) the first occurrence of any stop string."""
    ends = [text.find(s) for s in until if s and s in text]
    return text[:min(ends)] if ends else text

