"""What the training, decode and peak-memory benchmarks share: the batch, the models, greedy generation.

One sample = one image (k = num_patches placeholder ids, LLaVA's convention) followed by text tokens, so the same
batch feeds our model and the peer (transformers' LlavaForConditionalGeneration, `mm1lab.bench.peer`).
"""

from __future__ import annotations

import torch

from mm1lab.config import IGNORE, MM1Config


def make_batch(cfg: MM1Config, *, batch: int, text_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`batch` samples of [bos, k image placeholders, text]: input_ids, labels (IGNORE on placeholders), images."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.image_tokens
    text = torch.randint(4, cfg.lm.vocab_size, (batch, text_tokens), generator=g)
    ids = torch.cat([torch.full((batch, 1), cfg.bos_token_id), torch.full((batch, k), cfg.image_token_id), text], 1)
    labels = ids.masked_fill(ids == cfg.image_token_id, IGNORE)
    v = cfg.vision
    images = torch.randn(batch, v.channels, v.image_size, v.image_size, generator=g)
    return {"input_ids": ids, "labels": labels, "images": images}


# Our model with LoRA (mm1lab.lora; `mm1lab bench --only lora`): impl -> the LoRAConfig fields it applies
LORA_IMPLS = {"ours_lora": dict(r=8), "ours_qlora": dict(r=8, quantize="nf4")}


def build(impl: str, cfg: MM1Config, *, seed: int = 0) -> torch.nn.Module:
    """Our model ('ours'), the peer ('peer'), either under `torch.compile` ('ours_compiled', 'peer_compiled';
    compilation happens on the first step), or ours with LoRA adapters (`LORA_IMPLS`) at `cfg`, in training mode."""
    if impl in ("peer", "peer_compiled"):
        from mm1lab.bench.peer import build_peer
        model = build_peer(cfg, seed=seed).train()
        if impl == "peer_compiled":
            model.compile()
        return model
    from mm1lab.model import MM1Model
    torch.manual_seed(seed)
    model = MM1Model(cfg).train()
    if impl == "ours_compiled":
        model.compile()
    if impl in LORA_IMPLS:
        from mm1lab.lora import LoRAConfig, apply_lora
        apply_lora(model, LoRAConfig(**LORA_IMPLS[impl]))
    return model


def generate_greedy(impl: str, model, data: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
    """Exactly `new_tokens` greedy tokens per sample of `data` (no stop token), (b, new_tokens), ours or the peer's."""
    if impl == "peer":
        ids = data["input_ids"]
        out = model.generate(input_ids=ids, pixel_values=data["images"], attention_mask=torch.ones_like(ids),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=model.config.text_config.pad_token_id)
        return out[:, ids.shape[1]:]
    images = data["images"].to(next(model.parameters()).dtype)
    return model.generate(data["input_ids"], images, max_new_tokens=new_tokens, stop_tokens=[-1])
