"""Pretrained LMs: tiny random HF Llama / Qwen2 / Mistral checkpoints give the same logits in mm1lab.

Every reference model is built locally with transformers (no network), saved to a temporary folder with a
tiny word-level tokenizer, and loaded back through `mm1lab.pretrained.load_hf_lm`.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from mm1lab.pretrained import CheckpointError, load_hf_lm
from mm1lab.pretrained.lm import MM1_SPECIAL_TOKENS

TOL = 1e-4
WORDS = "the a red blue green circle square triangle is left of right above below how many shapes are there".split()
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
VARIANTS = {
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "smollm-gqa-theta": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, rope_theta=100000.0,
                                                                  tie_word_embeddings=True)),
    "llama-head-dim": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, head_dim=16)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, rms_norm_eps=1e-6)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=1, sliding_window=64)),
}


def tiny_tokenizer(folder, *, pad: bool = True) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over a few ShapeWorld words, saved as tokenizer.json (no download)."""
    specials = ["<unk>", "<s>", "</s>"] + (["<pad>"] if pad else [])
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>" if pad else None)
    fast.save_pretrained(folder)
    return fast


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from init (norm gains around 1, everything else N(0, 0.1)) so a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return model


def make_hf_lm(folder, variant: str = "llama-tied", *, shard: bool = False, pad: bool = True, **overrides):
    """Save a tiny random HF causal LM (+ tokenizer) to `folder`; return the transformers model."""
    config_class, model_class, extra = VARIANTS[variant]
    cfg = getattr(transformers, config_class)(**{**SMALL, **overrides}, **extra, bos_token_id=1, eos_token_id=2)
    model = randomize(getattr(transformers, model_class)(cfg)).eval()
    model.save_pretrained(folder, max_shard_size="20KB" if shard else "5GB")
    tiny_tokenizer(folder, pad=pad)
    return model


def mm1_logits(lm, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return lm(lm.embed(ids), positions).logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(tmp_path, variant):
    ref = make_hf_lm(tmp_path, variant)
    loaded = load_hf_lm(tmp_path, add_special_tokens=False)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 24))
    with torch.no_grad():
        expected = ref(ids).logits
        got = mm1_logits(loaded.lm, ids)
    diff = (got - expected).abs().max().item()
    print(f"{variant}: max |logits diff| = {diff:.2e}")
    assert diff < TOL
    assert expected.abs().max() > 0.5        # the comparison is not trivially between near-zero logits


def test_sharded_checkpoint_with_index(tmp_path):
    ref = make_hf_lm(tmp_path, "qwen2", shard=True)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    loaded = load_hf_lm(tmp_path, add_special_tokens=False)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 16))
    with torch.no_grad():
        diff = (mm1_logits(loaded.lm, ids) - ref(ids).logits).abs().max().item()
    print(f"sharded qwen2: max |logits diff| = {diff:.2e}")
    assert diff < TOL


# The tokenizer holds 22 words (+ a pad token or not). A model vocabulary of 64 is padded like Qwen2's (the
# new tokens take spare rows); a vocabulary equal to the tokenizer's must grow.
@pytest.mark.parametrize("pad, model_vocab", [(True, 64), (False, 64), (True, 23), (False, 22)])
def test_special_tokens_added_and_embeddings_resized(tmp_path, pad, model_vocab):
    ref = make_hf_lm(tmp_path, "llama-tied", pad=pad, vocab_size=model_vocab)
    text_vocab = len(ref_tokens := transformers.AutoTokenizer.from_pretrained(tmp_path))
    assert text_vocab == 22 + pad and ref_tokens.pad_token_id is (3 if pad else None)
    loaded = load_hf_lm(tmp_path)
    tok, ids = loaded.tokenizer, loaded.token_ids
    new_ids = list(range(text_vocab, len(tok)))
    assert len(new_ids) == len(MM1_SPECIAL_TOKENS) + (not pad)
    for token in MM1_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) in new_ids
        assert tok.tokenize(f"how many {token} shapes") == ["how", "many", token, "shapes"]
    assert ids["image_token_id"] == tok.convert_tokens_to_ids("<image>")
    assert ids["pad_token_id"] == tok.pad_token_id and ids["eos_token_id"] == tok.eos_token_id == 2
    assert ids["bos_token_id"] == tok.bos_token_id == 1
    vocab = max(len(tok), model_vocab)
    assert loaded.cfg.vocab_size == vocab and loaded.lm.embed.weight.shape[0] == vocab
    assert loaded.lm.lm_head.weight is loaded.lm.embed.weight           # still tied after the resize
    torch.testing.assert_close(loaded.lm.embed.weight[new_ids],
                               ref.model.embed_tokens.weight.mean(0).expand(len(new_ids), -1))
    # Text written with the original tokens gets the original logits over every original token.
    text = torch.randint(0, text_vocab, (1, 12))
    kept = [i for i in range(model_vocab) if i not in new_ids]
    with torch.no_grad():
        diff = (mm1_logits(loaded.lm, text)[..., kept] - ref(text).logits[..., kept]).abs().max().item()
    assert diff < TOL


def test_unknown_architecture_names_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match=r"gpt2.*llama, mistral, qwen2"):
        load_hf_lm(tmp_path)


def test_unsupported_activation_and_rope_scaling_are_refused(tmp_path):
    make_hf_lm(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "hidden_act": "gelu"}))
    with pytest.raises(CheckpointError, match="hidden_act='gelu'.*silu"):
        load_hf_lm(tmp_path)
    scaled = {**raw, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}}
    (tmp_path / "config.json").write_text(json.dumps(scaled))
    with pytest.raises(CheckpointError, match="llama3"):
        load_hf_lm(tmp_path)


def test_missing_unexpected_and_misshapen_keys_are_all_listed(tmp_path):
    make_hf_lm(tmp_path, "mistral")
    file = tmp_path / "model.safetensors"
    state = load_file(file)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    state["model.norm.weight"] = torch.ones(31)
    save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        load_hf_lm(tmp_path)
    message = str(err.value)
    assert "missing keys (1)" in message and "model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected keys (1)" in message and "model.layers.0.self_attn.extra.weight" in message
    assert "model.norm.weight (31,) -> norm.weight: expected (32,)" in message


def test_pickled_checkpoints_are_never_loaded(tmp_path):
    make_hf_lm(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights"):
        load_hf_lm(tmp_path)
