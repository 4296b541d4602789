"""The MM1 model: image encoder -> connector -> decoder LM, with images placed inside the text sequence.

b - batch, n - sequence, N - images in the batch, k - LM tokens per image, d - LM width, v - vocabulary

Each image fills k = `cfg.image_tokens` consecutive placeholder tokens (`cfg.image_token_id`) in `input_ids`;
the collator (`mm1lab.data`) expands one `<image>` marker into those k ids. All images of a batch are encoded
in one batched call and scattered into the placeholder positions in reading order (sample 0 first, left to
right), so samples may hold different numbers of images, including none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mm1lab.config import IGNORE, PARTS, ConfigError, MM1Config
from mm1lab.connectors import ConnectorInfo, build_connector
from mm1lab.lm import DecoderLM, KVCache, document_positions, positions_from_mask
from mm1lab.moe import RouterInfo
from mm1lab.safetensors_io import (
    CheckpointError,
    SafetensorsReader,
    atomic_folder,
    cast_parameters,
    no_init,
    read_json,
    save_state_dict,
)
from mm1lab.vision import VisionEncoder, VisionOutput

MODEL_TYPE = "mm1lab"              # config.json marker of a folder written by save_pretrained
TIED_HEAD = "lm.lm_head.weight"    # stored once, as the embeddings, when the LM ties them



def _init_weights(module: nn.Module) -> None:
    """GPT/Llama-style init: N(0, 0.02) for linear and embedding weights, zero biases (the PyTorch default of
    N(0, 1) embeddings would make tied-head logits huge at step 0). Norms and conv layers keep their defaults."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


@dataclass
class MM1Output:
    """loss: total (cross-entropy + MoE auxiliary losses); logits (b, n, v); aux: named scalar losses;
    sample_loss: (b,) mean cross-entropy per sample and token_loss (b, n) per position (per-stream logging).
    Probing fields are filled only on request: lm_attentions per layer (b, h, n, s), vision (encoder output with
    attentions), connector info, and routers (one RouterInfo per MoE layer, always present for MoE models)."""

    logits: Tensor
    loss: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)
    sample_loss: Tensor | None = None
    token_loss: Tensor | None = None     # (b, n): loss of predicting token i + 1 at position i (0 where not counted)
    token_counted: Tensor | None = None  # (b, n) bool: which entries of token_loss are counted
    lm_attentions: list[Tensor] | None = None
    vision: VisionOutput | None = None
    connector: ConnectorInfo | None = None
    routers: list[RouterInfo] = field(default_factory=list)


class MM1Model(nn.Module):
    """MM1: `model(input_ids, images=..., labels=...)` -> MM1Output; `model.generate(...)` -> new token ids."""

    def __init__(self, cfg: MM1Config):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.connector = build_connector(cfg.connector, d_vision=cfg.vision.width, d_lm=cfg.lm.width,
                                         grid=cfg.vision.grid_size)
        self.lm = DecoderLM(cfg.lm)
        # Connectors keep their own init (e.g. the D-Abstractor starts its offsets at zero).
        self.vision.apply(_init_weights)
        self.lm.apply(_init_weights)

    # ---- parts -----------------------------------------------------------------------------------------
    def freeze(self, **parts: bool) -> MM1Model:
        """`model.freeze(vision=True, connector=False)`: switch gradients off (True) or on (False) per part."""
        for name, frozen in parts.items():
            if name not in PARTS:
                raise ValueError(f"unknown part {name!r}; parts are {', '.join(PARTS)}")
            getattr(self, name).requires_grad_(not frozen)
        return self

    def encode_images(self, images: Tensor, *, return_attention: bool = False):
        """(N, c, H, W) pixels -> (N, k, d) LM-space image tokens (plus encoder/connector intermediates)."""
        vis = self.vision(images, return_attention=return_attention)
        if not return_attention:
            return self.connector(vis.features)
        tokens, info = self.connector(vis.features, return_attention=True)
        return tokens, vis, info

    def embed(self, input_ids: Tensor, image_embeds: Tensor | None) -> Tensor:
        """Text embeddings with each image's k tokens written over its k placeholders, in reading order."""
        embeds = self.lm.embed(input_ids)
        if image_embeds is None:
            return embeds
        slots = input_ids == self.cfg.image_token_id
        return embeds.masked_scatter(slots[..., None], image_embeds.to(embeds.dtype))

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, images: Tensor | list | None = None, *, labels: Tensor | None = None,
                loss_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, segment_ids: Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, return_attention: bool = False, return_logits: bool = True) -> MM1Output:
        """Logits for `input_ids` (b, n), with `images` (N, c, H, W) filling the placeholders.

        labels: (b, n) targets, not shifted (the model shifts); IGNORE (-100), image placeholders and padding
            take no loss. loss_mask: optional (b, n) bool, True where a token is trained (SFT: assistant turns).
        attention_mask: (b, past + n) bool over cached and new positions, False on padding.
        segment_ids: (b, n) packed rows (the collator's `segment_ids`: 1, 2, ... per document, 0 on padding). Each
            document attends only to itself and its positions restart at 0, so its logits are those it has alone.
        return_attention: also return attention maps,
            encoder and connector intermediates (slower: attention is materialised).
        return_logits: False (training, with `labels`) runs the LM head only on the positions that take a loss and
            leaves `logits` empty. Image placeholders are up to half of a pre-training row, so this saves up to
            half of the head's matmul and of the softmax over the vocabulary.
        """
        images = self._check_inputs(input_ids, images, past=cache.length if cache is not None else 0)
        out = MM1Output(logits=input_ids.new_empty(0))
        image_embeds = None
        if images is not None:
            if return_attention:
                image_embeds, out.vision, out.connector = self.encode_images(images, return_attention=True)
            else:
                image_embeds = self.encode_images(images)
            image_embeds = rearrange(image_embeds, 'N k d -> (N k) d')
        embeds = self.embed(input_ids, image_embeds)
        past, n = (cache.length if cache is not None else 0), input_ids.shape[1]
        key_mask = attention_mask.bool() if attention_mask is not None else None
        if key_mask is not None and key_mask.shape[1] != past + n:
            raise ValueError(f"attention_mask covers {key_mask.shape[1]} positions; with {past} cached and {n} new "
                             f"tokens it must cover {past + n}")
        if position_ids is None:
            position_ids = document_positions(segment_ids) if segment_ids is not None else \
                positions_from_mask(key_mask, input_ids, past=past)
        if not return_logits and labels is None:
            raise ValueError("return_logits=False needs labels: without a loss there is nothing to return")
        lm_out = self.lm(embeds, position_ids, cache=cache, key_mask=key_mask, segment_ids=segment_ids,
                         logits_to_keep=logits_to_keep, head=return_logits, return_attention=return_attention)
        out.logits, out.lm_attentions, out.routers = lm_out.logits, lm_out.attentions, lm_out.routers
        if labels is not None:
            self._loss(out, input_ids, labels, loss_mask, None if key_mask is None else key_mask[:, past:],
                       hidden=None if return_logits else lm_out.hidden)
        return out

    def _loss(self, out: MM1Output, input_ids, labels, loss_mask, attention_mask, *, hidden=None) -> None:
        labels = labels.masked_fill(input_ids == self.cfg.image_token_id, IGNORE)
        if loss_mask is not None:
            labels = labels.masked_fill(~loss_mask.bool(), IGNORE)
        if attention_mask is not None:
            labels = labels.masked_fill(~attention_mask.bool(), IGNORE)
        # Shift the labels, not the logits: the last position's target is IGNORE. This avoids copying the sliced
        # logits (and a zero-filled logits-sized gradient in backward); rows of (b n, v) keep the softmax over a
        # contiguous axis, ~2x faster on CPU than over v in (b, v, n).
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        counted = (targets != IGNORE).float()
        if hidden is None:
            token_loss = F.cross_entropy(rearrange(out.logits.float(), 'b n v -> (b n) v'),
                                         rearrange(targets, 'b n -> (b n)'), ignore_index=IGNORE, reduction="none")
            token_loss = rearrange(token_loss, '(b n) -> b n', b=targets.shape[0])
        else:   # the head only where a loss is taken; the other positions' losses are 0, as with ignore_index
            rows = targets != IGNORE
            logits = self.lm.lm_head(hidden[rows])
            token_loss = hidden.new_zeros(targets.shape, dtype=torch.float32).masked_scatter(
                rows, F.cross_entropy(logits.float(), targets[rows], reduction="none"))
        ce = token_loss.sum() / counted.sum().clamp(min=1)
        out.sample_loss = token_loss.sum(1) / counted.sum(1).clamp(min=1)
        out.token_loss, out.token_counted = token_loss, targets != IGNORE
        out.aux["ce"] = ce
        total = ce
        moe = self.cfg.lm.moe
        if out.routers:
            out.aux["moe_balance"] = torch.stack([r.balance_loss for r in out.routers]).mean()
            out.aux["moe_z"] = torch.stack([r.z_loss for r in out.routers]).mean()
            total = total + moe.balance_coef * out.aux["moe_balance"] + moe.z_coef * out.aux["moe_z"]
        out.loss = total

    def _check_inputs(self, input_ids: Tensor, images, *, past: int) -> Tensor | None:
        """Validate shapes and placeholder counts; returns the images as one (N, c, H, W) tensor or None."""
        cfg, k = self.cfg, self.cfg.image_tokens
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a (batch, sequence) long tensor, got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        if past + input_ids.shape[1] > cfg.lm.max_seq_len:
            raise ValueError(f"sequence of {past + input_ids.shape[1]} tokens is longer than the context "
                             f"(lm.max_seq_len={cfg.lm.max_seq_len}); truncate it or raise max_seq_len")
        per_sample = (input_ids == cfg.image_token_id).sum(1)
        if isinstance(images, (list, tuple)):
            counts = [0 if x is None else len(x) for x in images]
            for i, (n_img, n_slot) in enumerate(zip(counts, per_sample.tolist())):
                if n_slot != n_img * k:
                    raise ValueError(f"sample {i}: {n_slot} image placeholder tokens (id {cfg.image_token_id}) but "
                                     f"{n_img} image(s) x {k} tokens = {n_img * k} expected; each image needs "
                                     f"{k} consecutive placeholders (the collator expands one <image> marker)")
            kept = [x for x in images if x is not None and len(x)]
            images = torch.cat(kept) if kept else None
        n_images = 0 if images is None else images.shape[0]
        total = int(per_sample.sum())
        if total != n_images * k:
            raise ValueError(f"input_ids hold {total} image placeholder tokens (id {cfg.image_token_id}) but "
                             f"{n_images} image(s) x {k} tokens = {n_images * k} were expected; each image needs "
                             f"{k} consecutive placeholders (the collator expands one <image> marker)")
        return images

    # ---- HF-style folders (config.json + model.safetensors + tokenizer files) --------------------------
    def save_pretrained(self, folder: str | Path, *, tokenizer=None) -> Path:
        """Write config.json (`MM1Config` plus `"model_type": "mm1lab"`), model.safetensors (mm1lab's own names;
        a tied LM head stored once) and, when given, the tokenizer, into `folder`, atomically: the files go to a
        temporary sibling that is renamed into place, so an interrupted save never leaves half a checkpoint."""
        folder = Path(folder)
        state = self.state_dict()
        if self.cfg.lm.tie_embeddings:
            state.pop(TIED_HEAD)                           # the same tensor as lm.embed.weight
        with atomic_folder(folder) as tmp:
            (tmp / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **self.cfg.to_dict()}, indent=2))
            save_state_dict(state, tmp / "model.safetensors", metadata={"model_type": MODEL_TYPE})
            if tokenizer is not None:   # mm1lab's MM1Tokenizer (`save`) or a transformers one (`save_pretrained`)
                tokenizer.save(tmp / "tokenizer.json") if hasattr(tokenizer, "save") else tokenizer.save_pretrained(tmp)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | None = None) -> MM1Model:
        """Load a folder written by `save_pretrained` (safetensors only, never pickle); every parameter must be
        present with its saved shape. `mm1lab.load_model` also finds the tokenizer and reads training runs."""
        folder = Path(folder)
        cfg = read_folder_config(folder)
        with no_init():
            model = cast_parameters(cls(cfg), dtype)
        reader = SafetensorsReader(folder)
        target = model.state_dict()
        expected = set(target) - ({TIED_HEAD} if cfg.lm.tie_embeddings else set())
        missing, unexpected = sorted(expected - set(reader.keys())), sorted(set(reader.keys()) - expected)
        mismatched = [f"{k}: saved {tuple(reader.get(k).shape)}, config gives {tuple(target[k].shape)}"
                      for k in sorted(expected & set(reader.keys())) if reader.get(k).shape != target[k].shape]
        if missing or unexpected or mismatched:
            raise CheckpointError(f"{folder}: checkpoint does not match its config.json:\n  missing: {missing}\n"
                                  f"  unexpected: {unexpected}\n  shape mismatches: {mismatched}")
        with torch.no_grad():
            for key in expected:
                target[key].copy_(reader.get(key))
        return model.eval()

    # ---- generation ------------------------------------------------------------------------------------
    def generate(self, input_ids: Tensor, images: Tensor | list | None = None, **kwargs):
        """New tokens after each prompt; see `mm1lab.generate.generate` for the arguments."""
        from mm1lab.generate import generate
        return generate(self, input_ids, images, **kwargs)


def read_folder_config(folder: str | Path) -> MM1Config:
    """The MM1Config of a folder written by `MM1Model.save_pretrained` (checks the model_type marker)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json; an mm1lab folder holds config.json and model.safetensors")
    data = read_json(path)
    model_type = data.pop("model_type", None) if isinstance(data, dict) else None
    if model_type != MODEL_TYPE:
        raise CheckpointError(f"{folder}: config.json has model_type={model_type!r}, not {MODEL_TYPE!r}; load "
                              "pretrained parts with mm1lab.pretrained (load_hf_lm, load_hf_vision, "
                              "build_mm1_from_parts) instead")
    data.pop("transformers_version", None)
    try:
        return MM1Config.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
