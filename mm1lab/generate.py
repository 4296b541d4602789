"""Generation: greedy or nucleus sampling with a KV cache, for a batch of (left-padded) prompts with images.

b - batch, n - prompt length, t - generated tokens, v - vocabulary
"""

from __future__ import annotations

import torch
from torch import Tensor

from mm1lab.decode_step import PackedDecoder
from mm1lab.lm import KVCache, positions_from_mask


def left_pad(prompts: list[list[int]], *, pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists of different lengths -> (input_ids, attention_mask), padded on the left for generation."""
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.bool)
    for i, p in enumerate(prompts):
        if p:
            ids[i, n - len(p):] = torch.tensor(p)
            mask[i, n - len(p):] = True
    return ids, mask


def sample_next(logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Greedy when temperature == 0; otherwise sample from the top-p nucleus of softmax(logits / T)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p   # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _hooked(module) -> bool:
    """True when a forward hook or pre-hook is registered on `module` or any module inside it."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def generate(model, input_ids: Tensor, images: Tensor | list | None = None, *, attention_mask: Tensor | None = None,
             max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             stop_tokens: list[int] | None = None, generator: torch.Generator | None = None,
             return_logits: bool = False, packed: bool = True):
    """Generate up to `max_new_tokens` after each prompt; returns the new tokens (b, t), `pad` after a stop.

    input_ids: (b, n) prompts, left-padded when their lengths differ (see `left_pad`), with `attention_mask`.
    stop_tokens: ids that end a sequence (default: eos); the stop token itself is kept in the output.
    return_logits: also return the logits (b, t, v) each token was chosen from.
    packed: run decode steps through `mm1lab.decode_step.PackedDecoder` (faster; holds a stacked copy of the
        q/k/v and gate/up weights); False runs every step through `model.forward`, as do hooked LMs.
    """
    # inference_mode skips autograd's version counters and view tracking (cheaper per op than no_grad); the
    # results are cloned on the way out so callers may use them in autograd later (e.g. train on the samples).
    with torch.inference_mode():
        new, scores = _generate(model, input_ids, images, attention_mask=attention_mask,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                stop_tokens=stop_tokens, generator=generator, return_logits=return_logits,
                                packed=packed)
    return (new.clone(), scores.clone()) if return_logits else new.clone()


def _generate(model, input_ids, images, *, attention_mask, max_new_tokens, temperature, top_p, stop_tokens,
              generator, return_logits, packed) -> tuple[Tensor, Tensor | None]:
    cfg = model.cfg
    b, n = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    attention_mask = attention_mask.bool()
    if not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
        raise ValueError("generate() needs left-padded prompts (padding before the text); use mm1lab.generate.left_pad")
    max_new_tokens = min(max_new_tokens, cfg.lm.max_seq_len - n)
    if max_new_tokens <= 0:
        raise ValueError(f"prompt of {n} tokens leaves no room in the context (lm.max_seq_len={cfg.lm.max_seq_len})")
    stops = torch.tensor(stop_tokens if stop_tokens is not None else [cfg.eos_token_id], device=input_ids.device)
    param = next(model.parameters())
    cache = KVCache(cfg.lm, batch=b, max_len=n + max_new_tokens, device=param.device, dtype=param.dtype)
    # Never emit an image placeholder or padding: they are not text.
    banned = torch.tensor([cfg.image_token_id, cfg.pad_token_id], device=input_ids.device)

    out = model(input_ids, images, attention_mask=attention_mask, cache=cache, logits_to_keep=1)
    logits = out.logits[:, -1]
    # Forward hooks inside the LM (mm1lab.interpret) must fire on every step: the packed step would bypass them.
    decoder = PackedDecoder.of(model.lm) if packed and not _hooked(model.lm) else None
    positions = positions_from_mask(attention_mask, input_ids)[:, -1]
    padded = not bool(attention_mask.all())   # without padding, decode steps need no mask (positions suffice)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    tokens, scores = [], []
    for step in range(max_new_tokens):
        logits = logits.float()
        scores.append(logits)
        logits = logits.index_fill(-1, banned, float("-inf"))
        nxt = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)
        nxt = nxt.masked_fill(done, cfg.pad_token_id)
        tokens.append(nxt)
        done |= torch.isin(nxt, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if padded:
            attention_mask = torch.cat([attention_mask, torch.ones(b, 1, dtype=torch.bool, device=done.device)], 1)
        positions = positions + 1
        if decoder is not None:
            logits = decoder(nxt, positions, cache, key_mask=attention_mask if padded else None)
        else:
            logits = model(nxt[:, None], attention_mask=attention_mask if padded else None,
                           position_ids=positions[:, None], cache=cache).logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(scores, 1) if return_logits else None
