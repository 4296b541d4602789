"""Load a Hugging Face Llama-family checkpoint folder (Llama, SmolLM, Qwen2, Mistral) into mm1lab's DecoderLM.

The folder is what `huggingface-cli download` leaves: config.json, model.safetensors (or shards with an
index) and tokenizer files. The config is parsed by transformers' own config class for that architecture
(so defaults and old field names match what transformers would run); weights go through the `hf_llama`
table. Remote code is never run: only the architectures listed in `HF_LM_TYPES` are accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from mm1lab.config import LMConfig
from mm1lab.lm import DecoderLM
from mm1lab.pretrained.convert import load_mapped
from mm1lab.pretrained.maps import HF_LLAMA
from mm1lab.safetensors_io import CheckpointError, SafetensorsReader, cast_parameters, no_init, read_json

# model_type -> (transformers config class, q/k/v carry biases). All share the `hf_llama` weight names.
HF_LM_TYPES = {
    "llama": ("LlamaConfig", False),        # Llama 1/2, SmolLM, SmolLM2, TinyLlama
    "mistral": ("MistralConfig", False),
    "qwen2": ("Qwen2Config", True),
}
# mm1lab's own special tokens, appended to the pretrained vocabulary (strings match mm1lab.data).
MM1_SPECIAL_TOKENS = ("<image>", "<|user|>", "<|assistant|>", "<|end|>")
PAD_TOKEN = "<pad>"
# Files that hold a tokenizer's vocabulary (fast tokenizers, SentencePiece, BPE and WordPiece slow tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclass
class LoadedLM:
    """A pretrained LM in mm1lab form. token_ids: image_token_id/pad_token_id/bos_token_id/eos_token_id,
    ready to pass to `MM1Config` (image_token_id only when the tokenizer was extended)."""

    lm: DecoderLM
    tokenizer: object | None
    token_ids: dict[str, int]
    hf_config: transformers.PretrainedConfig

    @property
    def cfg(self) -> LMConfig:
        return self.lm.cfg


def read_hf_config(folder: Path) -> dict:
    """The raw config.json of a checkpoint folder."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json; point at a Hugging Face checkpoint folder")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a JSON object is expected, got {type(config).__name__}")
    return config


def _rope(hf) -> tuple[float, str]:
    """(theta, type) from either transformers 5's `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
    params = getattr(hf, "rope_parameters", None)
    if params:
        return float(params.get("rope_theta", 10000.0)), params.get("rope_type", "default")
    scaling = getattr(hf, "rope_scaling", None) or {}
    return float(getattr(hf, "rope_theta", 10000.0)), scaling.get("rope_type", scaling.get("type", "default"))


def hf_lm_config(folder: str | Path) -> tuple[LMConfig, transformers.PretrainedConfig]:
    """Map a checkpoint's config.json onto LMConfig; unsupported features raise with what to do."""
    folder = Path(folder)
    model_type = read_hf_config(folder).get("model_type")
    if model_type not in HF_LM_TYPES:
        raise CheckpointError(f"{folder}: unsupported LM architecture model_type={model_type!r}; mm1lab loads "
                              f"{', '.join(sorted(HF_LM_TYPES))} (Llama-family decoders). Remote code is never run.")
    config_class, qkv_bias = HF_LM_TYPES[model_type]
    hf = getattr(transformers, config_class).from_pretrained(folder, local_files_only=True)
    where = f"{folder}/config.json"
    if hf.hidden_act != "silu":
        raise CheckpointError(f"{where}: hidden_act={hf.hidden_act!r}; mm1lab's LM uses SwiGLU, which needs 'silu'")
    theta, rope_type = _rope(hf)
    if rope_type != "default":
        raise CheckpointError(f"{where}: rope scaling {rope_type!r} is not implemented; supported: plain RoPE "
                              "('default'). Llama 3.x ('llama3') and YaRN checkpoints need it in mm1lab.lm.Rotary")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise CheckpointError(f"{where}: attention_bias/mlp_bias=True (biases on o_proj / the MLP) are not supported")
    max_len = hf.max_position_embeddings
    # Full attention equals sliding-window attention while the context fits in the window: cap the context.
    window = getattr(hf, "sliding_window", None)
    if window and (model_type != "qwen2" or getattr(hf, "use_sliding_window", False)):
        max_len = min(max_len, window)
    width, heads = hf.hidden_size, hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or width // heads
    cfg = LMConfig(
        vocab_size=hf.vocab_size, width=width, depth=hf.num_hidden_layers, heads=heads,
        kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim_override=head_dim if head_dim != width // heads or width % heads else None,
        ffn_dim=hf.intermediate_size, max_seq_len=max_len, rope_theta=theta, norm_eps=hf.rms_norm_eps,
        qkv_bias=qkv_bias, tie_embeddings=bool(hf.tie_word_embeddings),
    )
    return cfg, hf


def load_lm_weights(folder: str | Path, cfg: LMConfig, *, dtype: torch.dtype | None = None) -> DecoderLM:
    """Build DecoderLM(cfg) and fill it from the folder's safetensors (single file or sharded)."""
    with no_init():
        lm = cast_parameters(DecoderLM(cfg), dtype)
    reader = SafetensorsReader(folder)
    tied = ("lm_head.weight",) if cfg.tie_embeddings else ()
    # A tied checkpoint may still store lm_head.weight (a copy of the embeddings); it is not needed.
    load_mapped(lm, reader, HF_LLAMA, depth=cfg.depth, skip=tied, ignore=tied, source=str(folder))
    return lm


def resize_embeddings(lm: DecoderLM, vocab_size: int, new_ids: list[int]) -> DecoderLM:
    """Grow the vocabulary to `vocab_size`; rows of `new_ids` start at the mean of the pretrained rows
    (a new token then starts as an 'average' token instead of a random direction that could dominate)."""
    old = lm.embed.weight.data
    cfg = dataclasses.replace(lm.cfg, vocab_size=max(vocab_size, old.shape[0]))
    embed = nn.Embedding(cfg.vocab_size, cfg.width, dtype=old.dtype)
    head = nn.Linear(cfg.width, cfg.vocab_size, bias=False, dtype=old.dtype)
    with torch.no_grad():
        for new, pretrained in ((embed.weight, old), (head.weight, lm.lm_head.weight.data)):
            new[: pretrained.shape[0]] = pretrained
            new[pretrained.shape[0]:] = pretrained.float().mean(0).to(new.dtype)
            new[new_ids] = pretrained.float().mean(0).to(new.dtype)
    lm.embed, lm.lm_head, lm.cfg = embed, head, cfg
    if cfg.tie_embeddings:
        lm.lm_head.weight = lm.embed.weight
    return lm


def load_tokenizer(folder: str | Path):
    """transformers' AutoTokenizer from local files only (no download, no remote code); a folder without
    vocabulary files is refused (`CheckpointError`)."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        # transformers builds an (almost) empty tokenizer for some architectures (Qwen2) from config.json alone;
        # mm1lab's special tokens would then take ids inside the pretrained vocabulary and overwrite their rows.
        raise CheckpointError(f"{folder}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); copy the "
                              "model's tokenizer files into the folder, or pass tokenizer=False to load_hf_lm and "
                              "set the special token ids yourself")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot load a tokenizer ({exc}); a Hugging Face checkpoint folder holds "
                              "tokenizer.json or tokenizer_config.json next to config.json") from exc


def add_mm1_tokens(tokenizer) -> list[int]:
    """Add `<image>`, chat-role tokens and a pad token (if missing); return the ids that are new."""
    before = set(tokenizer.get_vocab().values())
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_tokens(list(MM1_SPECIAL_TOKENS), special_tokens=True)
    return sorted(set(tokenizer.get_vocab().values()) - before)


def load_hf_lm(folder: str | Path, *, tokenizer: bool = True, add_special_tokens: bool = True,
               dtype: torch.dtype | None = None) -> LoadedLM:
    """Load a Llama-family HF checkpoint folder as a mm1lab DecoderLM (+ tokenizer with MM1's tokens).

    Args:
        folder: local folder with config.json, *.safetensors (sharded or not) and tokenizer files.
        tokenizer: also load the tokenizer (needed for `add_special_tokens` and the image token id); a folder
            without tokenizer files is refused, since its vocabulary would be unknown.
        add_special_tokens: add `<image>`, `<|user|>`, `<|assistant|>`, `<|end|>` (+ a pad token if missing)
            and resize the embeddings; logits over the original vocabulary are unchanged.
        dtype: parameter dtype (default: fp32).
    """
    folder = Path(folder)
    cfg, hf = hf_lm_config(folder)
    lm = load_lm_weights(folder, cfg, dtype=dtype)
    tok = load_tokenizer(folder) if tokenizer else None
    if tok is not None and add_special_tokens:
        new_ids = add_mm1_tokens(tok)
        if len(tok) > cfg.vocab_size or new_ids:
            lm = resize_embeddings(lm, len(tok), new_ids)
    return LoadedLM(lm=lm, tokenizer=tok, token_ids=_token_ids(tok, hf, add_special_tokens), hf_config=hf)


def _first(*ids) -> int | None:
    for i in ids:
        i = i[0] if isinstance(i, (list, tuple)) and i else i
        if isinstance(i, int):
            return i
    return None


def _token_ids(tok, hf, with_image: bool) -> dict[str, int]:
    """Special ids for MM1Config: the tokenizer's first, the config's otherwise; bos falls back to eos
    (Qwen2 has no bos token) and pad to eos when neither defines one."""
    eos = _first(getattr(tok, "eos_token_id", None), hf.eos_token_id)
    bos = _first(getattr(tok, "bos_token_id", None), hf.bos_token_id, eos)
    pad = _first(getattr(tok, "pad_token_id", None), hf.pad_token_id, eos)
    ids = {"pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}
    if tok is not None and with_image:
        ids["image_token_id"] = tok.convert_tokens_to_ids(MM1_SPECIAL_TOKENS[0])
    return {k: v for k, v in ids.items() if v is not None}
