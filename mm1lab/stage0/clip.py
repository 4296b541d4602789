"""Contrastive image-text pre-training (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023): MM1's encoder objective.

b - batch, n - text tokens, d - tower width, e - joint embedding

    image -> VisionEncoder -> CLS -> visual_projection ─┐
                                                        ├─ cosine similarities x scale (+ bias) -> loss
    text  -> TextTower -> <|end|> token -> text_projection ─┘

The CLIP loss is the symmetric InfoNCE over the b x b similarity matrix: row i should pick column i (image -> text)
and column i row i (text -> image), with a learned temperature. SigLIP's loss treats each of the b^2 pairs as an
independent binary decision (sigmoid), so it needs no softmax over the batch. With `caption_weight` > 0 the model is
CoCa's (Yu et al., 2022): a caption decoder reads the image's patches, then the text tower's states, and predicts
the caption. Names follow transformers' CLIPModel (`mm1lab.stage0.export` writes one; the caption decoder is left
out), so a trained model loads in transformers and, through `load_hf_vision`, in MM1. With `anchor_weight` > 0 the
encoder's features are also pulled towards those of a frozen copy of itself as the run started (`FrozenEncoder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mm1lab.stage0.config import CLIPConfig, TextConfig
from mm1lab.vision import Block, VisionEncoder


class TextTower(nn.Module):
    """CLIP's text transformer: token + position embeddings, causal pre-norm blocks, final LayerNorm, read out at the
    first end-of-text token (every caption ends with one; the collator adds it)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))   # the ViT's block, run causally
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(self, ids: Tensor) -> Tensor:
        """(b, n) token ids, each row holding `eot_token_id` -> (b, d) features at its first end-of-text token."""
        return self.read_out(ids, self.states(ids))

    def read_out(self, ids: Tensor, states: Tensor) -> Tensor:
        """The (b, d) states at each row's first end-of-text token."""
        first = (ids == self.cfg.eot_token_id).int().argmax(1)
        return states[torch.arange(len(ids), device=ids.device), first]

    def states(self, ids: Tensor) -> Tensor:
        """(b, n) token ids -> (b, n, d) causal states after the final norm."""
        if ids.shape[1] > self.cfg.max_len:
            raise ValueError(f"text of {ids.shape[1]} tokens is longer than the tower's max_len={self.cfg.max_len}")
        # Checked in eager runs only: the check reads a value back from the device, which would break a compiled
        # graph in two and stall a GPU every step. Compiled runs get their ids from encode_captions, which ends
        # every caption with the token.
        if not torch.compiler.is_compiling() and not bool((ids == self.cfg.eot_token_id).any(1).all()):
            raise ValueError(f"every caption must hold the end-of-text token (id {self.cfg.eot_token_id}); "
                             "tokenize with mm1lab.stage0.data.encode_captions")
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]
        for block in self.blocks:
            x, _ = block(x, causal=True)
        return self.norm(x)


class CaptionDecoder(nn.Module):
    """CoCa's multimodal decoder, written as a prefix decoder: the image's p patch features (projected to the text
    width) come first, the text tower's n states after them, and causal blocks run over the p + n tokens, so caption
    position t sees every patch and the caption up to t. CoCa cross-attends instead; with the patches as a prefix
    the ViT's own block serves, and what each caption position can see is the same. Logits use the text tower's
    token embeddings (tied), and position t predicts token t + 1."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.image_proj = nn.Linear(cfg.vision.width, cfg.text.width)
        self.blocks = nn.ModuleList(Block(cfg.text) for _ in range(cfg.caption_depth))
        self.norm = nn.LayerNorm(cfg.text.width, eps=cfg.text.norm_eps)

    def forward(self, patches: Tensor, states: Tensor, embed: Tensor) -> Tensor:
        """patches (b, p, dv), text states (b, n, d), token embeddings (v, d) -> caption logits (b, n, v)."""
        x = torch.cat([self.image_proj(patches), states], dim=1)
        for block in self.blocks:
            x, _ = block(x, causal=True)
        return self.norm(x[:, patches.shape[1]:]) @ embed.T


def caption_loss(logits: Tensor, ids: Tensor, eot_token_id: int) -> Tensor:
    """Mean next-token cross-entropy over each caption's tokens up to and including its first end-of-text token
    (what follows it is padding). logits (b, n, v) from positions 0..n-1; position t is scored on token t + 1."""
    after_end = (ids == eot_token_id).int().cumsum(1) - (ids == eot_token_id).int() > 0   # past the first <|end|>
    targets = ids[:, 1:].masked_fill(after_end[:, 1:], -100)
    return F.cross_entropy(rearrange(logits[:, :-1], 'b n v -> (b n) v'), rearrange(targets, 'b n -> (b n)'),
                           ignore_index=-100)


class FrozenEncoder(nn.Module):
    """A frozen copy of a `VisionEncoder`, its weights held as buffers: they are saved in checkpoints (so a resumed
    run keeps its anchor) and move with the model, but are never parameters, so no optimizer, freeze setting or
    parameter count (MM1's LR rule) sees them. `copy_from(encoder)` sets them."""

    def __init__(self, cfg):
        super().__init__()
        with torch.device("meta"):                     # the structure only: forward passes the buffers in as weights
            encoder = VisionEncoder(cfg).requires_grad_(False)
        object.__setattr__(self, "encoder", encoder)   # unregistered, so it is neither saved nor moved
        self.buffer_of = {key: key.replace(".", "__") for key in encoder.state_dict()}   # buffer names have no dots
        for key, value in encoder.state_dict().items():
            self.register_buffer(self.buffer_of[key], torch.zeros_like(value, device="cpu"))

    @torch.no_grad()
    def copy_from(self, encoder: VisionEncoder) -> None:
        for key, value in encoder.state_dict().items():
            getattr(self, self.buffer_of[key]).copy_(value)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(b, c, H, W) -> the copy's last-layer features, (b, tokens, d)."""
        weights = {key: getattr(self, name) for key, name in self.buffer_of.items()}
        return torch.func.functional_call(self.encoder, weights, (images,), {"layer": -1}).features


@dataclass
class CLIPOutput:
    """loss; logits (b_images, b_texts) scaled similarities; the normalised embeddings of both towers;
    caption_loss: CoCa's captioning term (unweighted; included in `loss`), when the model has a caption decoder;
    anchor_loss: the feature-anchoring term (unweighted; included in `loss`), when `anchor_weight` > 0."""

    loss: Tensor | None
    logits: Tensor
    image_embeds: Tensor
    text_embeds: Tensor
    caption_loss: Tensor | None = None
    anchor_loss: Tensor | None = None


class CLIP(nn.Module):
    """Two towers and a learned temperature (and bias, for SigLIP). `model(images, ids)` -> CLIPOutput."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.text = TextTower(cfg.text)
        self.visual_projection = nn.Linear(cfg.vision.width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(cfg.init_bias)) if cfg.loss == "siglip" else None
        self.caption_decoder = CaptionDecoder(cfg) if cfg.caption_weight > 0 else None
        self.anchor = FrozenEncoder(cfg.vision) if cfg.anchor_weight > 0 else None
        init_fan_in(self)
        nn.init.normal_(self.text.token_embed.weight, std=0.02)
        if self.anchor is not None:                      # the encoder as the run starts; `init_from` sets it again
            self.anchor.copy_from(self.vision)

    def encode_images(self, images: Tensor) -> Tensor:
        """(b, c, H, W) -> (b, e) unit-norm image embeddings (from the CLS token)."""
        return F.normalize(self.visual_projection(self.vision(images, layer=-1).cls), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """(b, n) -> (b, e) unit-norm text embeddings."""
        return F.normalize(self.text_projection(self.text(ids)), dim=-1)

    def similarity(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Scaled cosine similarities (b_images, b_texts), the logits of both losses."""
        scale = self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()
        logits = scale * image_embeds @ text_embeds.T
        return logits if self.logit_bias is None else logits + self.logit_bias

    def forward(self, images: Tensor, ids: Tensor) -> CLIPOutput:
        """Embed b images and their b captions (pair i is image i with caption i) and compute the loss. Rows of `ids`
        past the b-th are extra captions that match no image (hard negatives)."""
        vision, states = self.vision(images, layer=-1), self.text.states(ids)
        image_embeds = F.normalize(self.visual_projection(vision.cls), dim=-1)
        text_embeds = F.normalize(self.text_projection(self.text.read_out(ids, states)), dim=-1)
        logits = self.similarity(image_embeds, text_embeds)
        loss = clip_loss(logits) if self.cfg.loss == "clip" else siglip_loss(logits)
        captioning = None
        if self.caption_decoder is not None:             # only the b real captions: hard negatives describe no image
            b = len(images)
            captioning = caption_loss(self.caption_decoder(vision.features, states[:b], self.text.token_embed.weight),
                                      ids[:b], self.cfg.text.eot_token_id)
            loss = loss + self.cfg.caption_weight * captioning
        anchoring = None
        if self.anchor is not None:                      # distance to the starting features, over their scale
            target = self.anchor(images)
            anchoring = (vision.features - target).pow(2).mean() / target.pow(2).mean()
            loss = loss + self.cfg.anchor_weight * anchoring
        return CLIPOutput(loss=loss, logits=logits, image_embeds=image_embeds, text_embeds=text_embeds,
                          caption_loss=captioning, anchor_loss=anchoring)


def init_fan_in(model: nn.Module) -> None:
    """N(0, 1/fan_in) linear weights, zero biases (as OpenCLIP's width**-0.5). At these widths (64) GPT's fixed
    std 0.02 leaves every image's CLS token nearly the same at init, and the contrastive loss sits at log(batch)
    for hundreds of steps before it breaks the symmetry; measured on ShapeWorld: 60 steps at ln(64) vs 2.25."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy, the diagonal being the targets.

    logits (b, t) with t >= b: texts past the b-th are hard negatives. As in NegCLIP they widen each image's choice
    (image -> text) and are not scored text -> image, since no image is theirs."""
    b = len(logits)
    targets = torch.arange(b, device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(rearrange(logits[:, :b], 'i t -> t i'), targets)) / 2


def siglip_loss(logits: Tensor) -> Tensor:
    """SigLIP: -log sigmoid(z_ij * logit_ij) with z = +1 on the diagonal and -1 elsewhere, summed over pairs and
    averaged over images (the paper's normalisation). Texts past the b-th (hard negatives) are -1 for every image."""
    labels = 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)
