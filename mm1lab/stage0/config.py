"""Configs of MM1's stage 0: the CLIP text tower, the contrastive model (CLIP / SigLIP) and AIM.

Keyword-only dataclasses validated in `__post_init__`, built from dicts through `mm1lab.config.build` (renamed and
unknown fields named), like the MM1 configs. The image encoder is an ordinary `VisionConfig`, so a stage-0 encoder
drops into an MM1 model unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mm1lab.config import ACTIVATIONS, ConfigError, VisionConfig, build

LOSSES = ("clip", "siglip")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(kw_only=True)
class TextConfig:
    """CLIP's text tower: a causal pre-norm transformer read out at the end-of-text token.

    The end-of-text token is mm1lab's `<|end|>` (id 6): transformers' CLIP pools at the first `eos_token_id` in
    the sequence, and id 2 (`<eos>`) is the one value it treats as "argmax of the ids" for old checkpoints.
    """

    vocab_size: int = 2048
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    act: str = "gelu"
    max_len: int = 96                # captions longer than this are cut (keeping the end-of-text token)
    norm_eps: float = 1e-5
    eot_token_id: int = 6
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "depth", "heads", "max_len"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value > 0, f"TextConfig.{name} must be a positive integer, got {value!r}")
        _check(self.width % self.heads == 0, f"TextConfig.heads ({self.heads}) must divide width ({self.width})")
        _check(self.act in ACTIVATIONS, f"TextConfig.act must be one of {ACTIVATIONS}, got {self.act!r}")
        _check(0 <= self.eot_token_id < self.vocab_size, "TextConfig.eot_token_id must be a token id")

    @property
    def ffn_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(kw_only=True)
class CLIPConfig:
    """Image-text contrastive pre-training: `loss` "clip" (symmetric InfoNCE, learnable temperature) or "siglip"
    (pairwise sigmoid with a learnable temperature and bias); both towers project to `embed_dim`."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 128
    loss: str = "clip"
    init_temperature: float = 0.07    # CLIP's initial softmax temperature (logit scale 1 / 0.07)
    init_bias: float = -10.0          # SigLIP's initial bias: at init, most pairs are negatives
    max_logit_scale: float = 100.0    # CLIP clamps the learned scale here
    # NegCLIP's hard negatives (Yuksekgonul et al., 2023): every caption that names a shape also enters the batch with
    # one shape word swapped, as a negative for its own image. On ShapeWorld's easy world colour, count and place tell
    # a batch's captions apart, so without them the encoder learns shape weakly (docs/stage0.md).
    hard_negatives: bool = False
    # CoCa's captioning loss beside the contrastive one (Yu et al., 2022): a decoder of `caption_depth` causal blocks
    # reads the image's patch features, then the caption, and predicts each next caption token; the total loss is
    # contrastive + caption_weight x captioning. Saying what a sign says can only be predicted by reading it, while a
    # contrastive batch rarely needs the word to tell its captions apart. At clip-tiny's budget it did not teach
    # reading (docs/stage0.md, "OCR: the encoder is what blocks it"). The decoder trains the encoder and is not
    # exported: MM1 keeps the vision tower. 0 = CLIP alone.
    caption_weight: float = 0.0
    caption_depth: int = 2
    # Feature anchoring for a run that continues an encoder on narrow data (LwF-style feature distillation, Li &
    # Hoiem, 2017): anchor_weight x the mean squared distance between the encoder's last-layer features and those of
    # a frozen copy of the encoder as the run started (the `init_from` weights), over the copy's mean square. CoCa on
    # sign captions alone teaches reading but collapses the features the VLM reads (docs/stage0.md, "CoCa continued
    # from clip-tiny reads a little"); the anchor keeps the rest. 0 = none.
    anchor_weight: float = 0.0
    name: str = "clip"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = build(VisionConfig, self.vision, "CLIPConfig.vision")
        if isinstance(self.text, dict):
            self.text = build(TextConfig, self.text, "CLIPConfig.text")
        _check(self.loss in LOSSES, f"CLIPConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        _check(self.vision.cls_token, "CLIPConfig.vision.cls_token must be true: the image embedding is the CLS token")
        _check(self.embed_dim > 0 and 0 < self.init_temperature < 1, "CLIPConfig: embed_dim > 0 and "
               "0 < init_temperature < 1")
        _check(self.caption_weight >= 0 and isinstance(self.caption_depth, int) and self.caption_depth > 0,
               f"CLIPConfig: caption_weight must be >= 0 and caption_depth a positive integer, got "
               f"{self.caption_weight!r} and {self.caption_depth!r}")
        _check(self.anchor_weight >= 0, f"CLIPConfig.anchor_weight must be >= 0, got {self.anchor_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPConfig:
        return build(cls, data)


@dataclass(kw_only=True)
class AIMConfig:
    """Autoregressive image model (AIM, El-Nouby et al. 2024): a ViT trunk, prefix-causal over patches in raster
    order, and an MLP head regressing each next patch's per-patch-normalised pixels."""

    vision: VisionConfig = field(default_factory=lambda: VisionConfig(cls_token=False, pre_norm=False,
                                                                      patch_bias=True))
    head_depth: int = 2               # MLP blocks in the pixel head (AIM uses a 12-block MLP head at scale)
    head_width: int = 256
    min_prefix: int = 1               # the bidirectional prefix is drawn from [min_prefix, patches - 1]
    norm_eps: float = 1e-6            # per-patch pixel normalisation (MAE's norm_pix_loss)
    name: str = "aim"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = build(VisionConfig, self.vision, "AIMConfig.vision")
        _check(not self.vision.cls_token, "AIMConfig.vision.cls_token must be false: AIM predicts patches only")
        _check(self.head_depth > 0 and self.head_width > 0, "AIMConfig.head_depth and head_width must be positive")
        _check(1 <= self.min_prefix < self.vision.num_patches,
               f"AIMConfig.min_prefix must be in [1, {self.vision.num_patches - 1}], got {self.min_prefix}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AIMConfig:
        return build(cls, data)
