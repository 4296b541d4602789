"""What is trained, and on what loss: the one place the training loop asks. One loop, several objectives.

- `vlm`: MM1 itself, next-token cross-entropy over text (image placeholders take no loss), per-stream losses and
  the MoE auxiliary losses. Text-only LM pre-training (stage 0) is this objective on the text streams.
- `clip`: stage 0's contrastive encoder pre-training (CLIP's InfoNCE or SigLIP's sigmoid loss).
- `aim`: stage 0's autoregressive image pre-training (next-patch pixel regression).

The loop (`mm1lab.train.trainer`) weights each micro-batch's mean loss by its share of the global batch's loss
units (`weight`): tokens for the LM, images for the encoders, so splitting a step into ranks and micro-batches does
not reweight the samples (the limits with packed rows are in docs/distributed.md). A contrastive loss is not a
mean over independent items (every pair is a negative for the others), so `clip` runs each step as one
micro-batch per rank and sees the negatives of its own rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm1lab.config import MM1Config
from mm1lab.safetensors_io import read_json
from mm1lab.train.config import OBJECTIVE_PARTS

STREAM_KEYS = ("caption", "dense", "interleaved", "text", "sft", "other")   # "other": a stream not listed


@dataclass
class StepLoss:
    """One micro-batch's result: `mean` (averaged over its `weight` loss units), `aux` (added once per micro-batch,
    e.g. MoE losses) and `stats` (sums the loop adds over micro-batches and ranks; keys as `Objective.stat_keys`)."""

    mean: Tensor
    aux: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class Objective:
    """The interface: model config, model, data, loss units, loss and what goes into the metrics record."""

    name = ""
    stat_keys: tuple[str, ...] = ("tokens", "images")
    averaged: tuple[str, ...] = ()          # stats that are per-micro-batch means (divided by ranks after the sum)
    one_micro_batch = False                 # the loss does not split into micro-batches (contrastive)

    @property
    def parts(self) -> tuple[str, ...]:
        return OBJECTIVE_PARTS[self.name]

    def __init__(self, model_cfg):
        self.model_cfg = model_cfg

    def build(self) -> nn.Module:
        """A freshly initialised model of `model_cfg` (seeded by the caller)."""
        raise NotImplementedError

    def compile(self, model: nn.Module) -> None:
        """`compile: true`: compile what has fixed shapes."""
        model.compile()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Transformer blocks FSDP2 shards one by one."""
        return list(model.vision.blocks)

    def data(self, cfg) -> tuple[Any, Callable]:
        """(sample source with state_dict/load_state_dict, collate function) for `cfg.data`."""
        raise NotImplementedError

    def load_init(self, model: nn.Module, path: str) -> None:
        """Load `init_from`'s weights into a freshly built `model` (objectives that can continue a run)."""
        raise NotImplementedError(f"objective {self.name!r} cannot continue from init_from")

    def weight(self, mb: dict[str, Any]) -> int:
        """Loss units in a micro-batch."""
        return len(mb["images"])

    def loss(self, forward, mb: dict[str, Any], device, n_micro: int) -> StepLoss:
        raise NotImplementedError

    def record(self, sums: dict[str, float], steps: int) -> dict[str, Any]:
        """Extra fields of a metrics record from the stats summed over `steps` steps."""
        return {}


# ---- MM1 (and text-only LM pre-training) ------------------------------------------------------------------
class VLMObjective(Objective):
    """MM1's next-token loss (`MM1Model(..., labels=...)`), counted over tokens."""

    name = "vlm"
    stat_keys = ("tokens", "images", "moe_balance", "moe_z", *[f"{k}/{s}" for s in STREAM_KEYS
                                                               for k in ("stream_sum", "stream_tok")])
    averaged = ("moe_balance", "moe_z")

    model_cfg: MM1Config

    def build(self):
        from mm1lab.model import MM1Model

        return MM1Model(self.model_cfg)

    def compile(self, model):
        # The LM only: packed rows fix its shapes, while the encoder's batch changes with the number of images in
        # each batch and recompiles every few steps (whole-model compile measured 9x slower end to end on the tiny
        # pre-training config; see docs/benchmarks.md).
        model.lm.compile()

    def blocks(self, model):
        return list(model.vision.blocks) + list(model.lm.layers)

    def data(self, cfg):
        from mm1lab.train.data import build_data

        return build_data(cfg, self.model_cfg)

    def weight(self, mb):
        from mm1lab.train.data import loss_tokens

        return int(loss_tokens(mb, self.model_cfg.image_token_id).sum())

    def loss(self, forward, mb, device, n_micro):
        images = mb["images"].to(device) if mb["images"] is not None else None
        loss_mask = mb["loss_mask"].to(device) if mb.get("loss_mask") is not None else None
        segment_ids = mb["segment_ids"].to(device) if mb.get("segment_ids") is not None else None
        out = forward(mb["input_ids"].to(device), images, labels=mb["labels"].to(device), loss_mask=loss_mask,
                      attention_mask=mb["attention_mask"].to(device), segment_ids=segment_ids, return_logits=False)
        stats = dict(tokens=mb["attention_mask"].sum().item(), images=0 if images is None else len(images),
                     moe_balance=out.aux.get("moe_balance", torch.zeros(())).item() / n_micro,
                     moe_z=out.aux.get("moe_z", torch.zeros(())).item() / n_micro)
        stats.update(stream_losses(mb, out))
        return StepLoss(mean=out.aux["ce"], aux=out.loss - out.aux["ce"], stats=stats)

    def record(self, sums, steps):
        streams = {s: sums[f"stream_sum/{s}"] / sums[f"stream_tok/{s}"] for s in STREAM_KEYS
                   if sums.get(f"stream_tok/{s}", 0) > 0}
        record: dict[str, Any] = dict(stream_loss=streams)
        if self.model_cfg.lm.moe is not None:
            record.update(moe_balance=sums["moe_balance"] / steps, moe_z=sums["moe_z"] / steps)
        return record


def stream_losses(mb: dict[str, Any], out) -> dict[str, float]:
    """A micro-batch's loss sum and token count per stream. A packed row holds several samples ("caption+text",
    told apart by `segment_ids`), so each predicted token counts for the stream of the sample it belongs to."""
    loss = out.token_loss.detach().double().cpu()
    counted = out.token_counted.cpu()
    segments = mb.get("segment_ids")
    if segments is None:                                          # one sample per row
        segments = torch.ones_like(counted, dtype=torch.long)
    target_segment = F.pad(segments[:, 1:], (0, 1))               # the sample of the token being predicted
    stats = {f"{k}/{s}": 0.0 for s in STREAM_KEYS for k in ("stream_sum", "stream_tok")}
    for row, names in enumerate(mb["stream"]):
        for index, name in enumerate(names.split("+"), start=1):
            keep = counted[row] & (target_segment[row] == index)
            key = name if name in STREAM_KEYS else "other"
            stats[f"stream_sum/{key}"] += loss[row][keep].sum().item()
            stats[f"stream_tok/{key}"] += keep.sum().item()
    return stats


# ---- stage 0: encoders -----------------------------------------------------------------------------------
class CLIPObjective(Objective):
    """Contrastive image-text pre-training; loss units are image-caption pairs."""

    name = "clip"
    stat_keys = ("tokens", "images", "logit_scale", "accuracy", "caption_loss", "anchor_loss")
    averaged = ("logit_scale", "accuracy", "caption_loss", "anchor_loss")
    one_micro_batch = True

    def build(self):
        from mm1lab.stage0.clip import CLIP

        return CLIP(self.model_cfg)

    def blocks(self, model):
        return list(model.vision.blocks) + list(model.text.blocks)

    def data(self, cfg):
        from mm1lab.stage0.data import PairCollator
        from mm1lab.train.shapeworld_data import build_source

        v = self.model_cfg.vision
        shapes = negative_shapes(cfg.data) if self.model_cfg.hard_negatives else ()
        return build_source(cfg, v.image_size), PairCollator(load_data_tokenizer(), v, self.model_cfg.text, shapes)

    def load_init(self, model, path):
        """A clip run's checkpoint or an exported CLIP folder. With `caption_weight` > 0 and a source without a
        caption decoder (an exported folder never has one), the decoder starts fresh: CoCa continued from CLIP.
        A source's decoder that this model does not have is left out. With `anchor_weight` > 0 the anchor is set to
        the loaded encoder: the run is pulled towards where it starts."""
        from mm1lab.stage0.export import load_clip
        from mm1lab.train.checkpoint import load_checkpoint

        folder = Path(path)
        kind = read_json(folder / "config.json").get("model_type") if (folder / "config.json").exists() else None
        if kind not in (None, "clip"):
            raise ValueError(f"init_from {path} is a {kind!r} folder; a clip run continues a whole CLIP (an exported "
                             "CLIPModel folder, text tower included) or a clip run's folder")
        if kind == "clip":
            weights = load_clip(folder).state_dict()
        else:
            weights = load_checkpoint(folder, weights_only=True).weights
        ours = model.state_dict()
        decoder, anchor = "caption_decoder.", "anchor."   # in no exported model; the anchor is set below
        weights = {k: w for k, w in weights.items()
                   if not k.startswith(anchor) and (k in ours or not k.startswith(decoder))}
        wrong = sorted(k for k in weights if k not in ours or weights[k].shape != ours[k].shape)
        missing = sorted(k for k in ours if k not in weights and not k.startswith((decoder, anchor)))
        if wrong or missing:
            raise ValueError(f"init_from {path} does not fit this run's model ({len(wrong)} weights with other "
                             f"names or shapes, e.g. {(wrong or missing)[:3]}); give `model` the preset (or sizes) "
                             "that the source was trained with, e.g. --set model=clip-tiny")
        model.load_state_dict(weights, strict=False)
        if model.anchor is not None:
            model.anchor.copy_from(model.vision)

    def loss(self, forward, mb, device, n_micro):
        out = forward(mb["images"].to(device), mb["ids"].to(device))
        targets = torch.arange(len(out.logits), device=out.logits.device)
        accuracy = (out.logits.argmax(1) == targets).float().mean().item()   # in-batch image -> text top-1
        module = getattr(forward, "module", forward)
        stats = dict(tokens=int((mb["ids"][:len(mb["images"])] != 0).sum()), images=len(mb["images"]),
                     logit_scale=module.logit_scale.exp().item() / n_micro, accuracy=accuracy / n_micro,
                     caption_loss=0.0 if out.caption_loss is None else out.caption_loss.item() / n_micro,
                     anchor_loss=0.0 if out.anchor_loss is None else out.anchor_loss.item() / n_micro)
        return StepLoss(mean=out.loss, aux=out.loss.new_zeros(()), stats=stats)

    def record(self, sums, steps):
        record = dict(logit_scale=sums["logit_scale"] / steps, batch_accuracy=sums["accuracy"] / steps)
        if self.model_cfg.caption_weight > 0:            # CoCa: the captioning term, unweighted
            record["caption_loss"] = sums["caption_loss"] / steps
        if self.model_cfg.anchor_weight > 0:             # the feature-anchoring term, unweighted
            record["anchor_loss"] = sums["anchor_loss"] / steps
        return record


class AIMObjective(Objective):
    """Autoregressive image pre-training; loss units are images (each image's loss is a mean over its patches)."""

    name = "aim"

    def build(self):
        from mm1lab.stage0.aim import AIM

        return AIM(self.model_cfg)

    def data(self, cfg):
        from mm1lab.stage0.data import ImageCollator
        from mm1lab.train.shapeworld_data import build_source

        return build_source(cfg, self.model_cfg.vision.image_size), ImageCollator(self.model_cfg.vision)

    def loss(self, forward, mb, device, n_micro):
        out = forward(mb["images"].to(device))
        return StepLoss(mean=out.loss, aux=out.loss.new_zeros(()), stats=dict(tokens=0, images=len(mb["images"])))


def negative_shapes(data) -> tuple[str, ...]:
    """The shape words a hard negative may swap in: those of every ShapeWorld world in the mixture, or all of
    ShapeWorld's for real captions (which rarely name them)."""
    from mm1lab.data.shapeworld import SHAPES, get_difficulty

    if data.source != "shapeworld":
        return SHAPES
    worlds = {data.difficulty} | {key.split(":")[0] for key in data.mixture if ":" in key}
    return tuple(s for s in SHAPES if any(s in get_difficulty(w).shape_names for w in worlds))


def load_data_tokenizer():
    """mm1lab's committed tokenizer (the ShapeWorld data's)."""
    from mm1lab.data.tokenizer import load_tokenizer

    return load_tokenizer()


OBJECTIVES: dict[str, type[Objective]] = {"vlm": VLMObjective, "clip": CLIPObjective, "aim": AIMObjective}
