"""Export to transformers' LlavaForConditionalGeneration: transformers' logits, greedy tokens and processor
outputs equal mm1lab's; what Llava cannot express is refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mm1lab.cli import main as cli_main
from mm1lab.config import MM1Config
from mm1lab.data.collate import preprocess_image
from mm1lab.data.prompts import chat_prompt, user_content
from mm1lab.data.tokenizer import load_tokenizer, normalize_markers
from mm1lab.generate import left_pad
from mm1lab.model import MM1Model
from mm1lab.pretrained.llava_export import export_llava
from mm1lab.safetensors_io import save_state_dict

# Encoder layouts Llava's towers compute: CLIP read at the penultimate block (LLaVA-1.5), SigLIP at the last block
# after its final LayerNorm (the case transformers needs `tie_last_hidden_states` for).
VISION = {
    "clip": dict(act="quick_gelu", feature_layer=-2),
    "siglip": dict(cls_token=False, pre_norm=False, patch_bias=True, act="gelu_tanh", feature_layer=-1,
                   image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
}
# Llama: tied head, grouped-query attention. Qwen2: q/k/v biases, untied head, one kv head, its rope theta.
LMS = {
    "llama": dict(rope_theta=500.0, norm_eps=1e-6),
    "qwen2": dict(qkv_bias=True, tie_embeddings=False, kv_heads=1, rope_theta=1e6),
}
K = 16   # image tokens: a 32 px image in 8 px patches, one LM token per patch


def llava_model(vision: str = "clip", lm: str = "llama", *, connector: str = "mlp", vision_fields=None,
                lm_fields=None) -> MM1Model:
    """A tiny seeded MM1 (vocabulary big enough for the committed tokenizer), every weight moved off its init so
    that norms and biases are not ones and zeros."""
    torch.manual_seed(0)
    cfg = MM1Config.from_dict(dict(
        vision={**dict(image_size=32, patch_size=8, width=32, depth=2, heads=4), **VISION[vision],
                **(vision_fields or {})},
        connector=dict(kind=connector, num_tokens=K if connector == "mlp" else 4, width=32, depth=1, layers=1,
                       heads=4, points=2),
        lm={**dict(vocab_size=1056, width=32, depth=2, heads=4, kv_heads=2, ffn_dim=64, max_seq_len=128),
            **LMS[lm], **(lm_fields or {})}))
    model = MM1Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of equal length, each with one image: after three text tokens, and right after <bos>."""
    ids = torch.tensor([[1, 40, 41, 42] + [3] * K + [50, 51, 52, 53],
                        [1] + [3] * K + [60, 61, 62, 63, 64, 65, 66]])
    return ids, torch.randn(2, 3, 32, 32)


def load(folder) -> LlavaForConditionalGeneration:
    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    return model.eval()


@pytest.mark.parametrize("vision,lm", [("clip", "llama"), ("siglip", "qwen2"), ("clip", "qwen2"), ("siglip", "llama")])
def test_transformers_llava_gives_mm1lab_logits_and_greedy_tokens(tmp_path, tok, one_thread, vision, lm):
    model = llava_model(vision, lm)
    hf = load(export_llava(model, tmp_path / "llava", tok))
    ids, images = batch()
    with torch.no_grad():
        ours, theirs = model(ids, images).logits, hf(input_ids=ids, pixel_values=images).logits
        other = torch.randn_like(images)
        ours_other, theirs_other = model(ids, other).logits, hf(input_ids=ids, pixel_values=other).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs_other, ours_other, atol=1e-5, rtol=1e-4)
    assert (ours_other - ours)[:, -1].abs().max() > 1e-3        # the images reach the text: the check has teeth
    new = hf.generate(input_ids=ids, pixel_values=images, max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(new, model.generate(ids, images, max_new_tokens=6))


def test_left_padded_prompts_give_mm1lab_logits_and_greedy_tokens(tmp_path, one_thread):
    model = llava_model("clip", "qwen2")
    hf = load(export_llava(model, tmp_path / "llava"))
    ids, mask = left_pad([[1, 40, 41, 42] + [3] * K + [50, 51, 52, 53], [1] + [3] * K + [60, 61]], pad_id=0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(ids, images, attention_mask=mask).logits
        theirs = hf(input_ids=ids, pixel_values=images, attention_mask=mask.long()).logits
    torch.testing.assert_close(theirs[mask], ours[mask], atol=1e-5, rtol=1e-4)
    new = hf.generate(input_ids=ids, pixel_values=images, attention_mask=mask.long(), max_new_tokens=6,
                      do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(new, model.generate(ids, images, attention_mask=mask, max_new_tokens=6))


def test_siglip_last_layer_needs_the_tied_last_hidden_state(tmp_path, tok, one_thread):
    """Without `tie_last_hidden_states`, Llava would read SigLIP's last block before the final LayerNorm."""
    model = llava_model("siglip", "llama")
    folder = export_llava(model, tmp_path / "llava", tok)
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["tie_last_hidden_states"] is True
    del config["vision_config"]["tie_last_hidden_states"]
    (folder / "config.json").write_text(json.dumps(config))
    ids, images = batch()
    with torch.no_grad():
        assert not torch.allclose(load(folder)(input_ids=ids, pixel_values=images).logits, model(ids, images).logits,
                                  atol=1e-3)


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_autoprocessor_reproduces_mm1lab_prompts_pixels_and_logits(tmp_path, tok, one_thread, vision):
    model = llava_model(vision, "llama")
    folder = export_llava(model, tmp_path / "llava", tok)
    processor = AutoProcessor.from_pretrained(folder)
    question = "How many shapes are there?"
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert prompt == normalize_markers(chat_prompt(user_content(question)))
    # 40 x 60 resizes to 32 x 48 exactly; where the longer side is fractional, transformers rounds it down and
    # mm1lab to the nearest pixel (docs/export.md).
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    expected = [j for i in tok.encode(chat_prompt(user_content(question))) for j in ([i] * K if i == 3 else [i])]
    assert inputs["input_ids"][0].tolist() == expected
    v = model.cfg.vision
    pixels = preprocess_image(image, v.image_size, v.image_mean, v.image_std)
    torch.testing.assert_close(inputs["pixel_values"][0], pixels, atol=1e-6, rtol=0)
    with torch.no_grad():
        theirs = load(folder)(**inputs).logits
        ours = model(torch.tensor([expected]), pixels[None]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_chat_template_renders_mm1lab_conversations(tmp_path, tok):
    folder = export_llava(llava_model(), tmp_path / "llava", tok)
    processor = AutoProcessor.from_pretrained(folder)
    turns = [{"role": "user", "content": "<image>\n What colour is the circle? "},
             {"role": "assistant", "content": "red"},
             {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "And?"}]}]
    for generation_prompt in (True, False):
        ours = chat_prompt(turns[:2] + [{"role": "user", "content": "<image><image>\nAnd?"}],
                           add_generation_prompt=generation_prompt)
        theirs = processor.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False)
        assert processor.tokenizer(theirs, add_special_tokens=False)["input_ids"] == tok.encode(ours)


def test_export_is_safetensors_only_and_records_its_source(tmp_path, tok):
    model = llava_model()
    folder = export_llava(model, tmp_path / "llava", tok)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["chat_template.jinja", "config.json", "generation_config.json", "mm1lab_export.json",
                     "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pth"))
    assert MM1Config.from_dict(json.loads((folder / "mm1lab_export.json").read_text())["mm1lab_config"]) == model.cfg
    config = json.loads((folder / "config.json").read_text())
    assert (config["image_seq_length"], config["image_token_index"]) == (K, 3)
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 500.0 and config["tie_word_embeddings"]


@pytest.mark.parametrize("kind", ["avgpool", "attnpool", "c-abstractor", "d-abstractor", "pixel-shuffle"])
def test_connectors_without_a_transformers_class_are_refused(tmp_path, kind):
    with pytest.raises(ValueError, match=rf"ConnectorConfig.kind='{kind}'.*LlavaMultiModalProjector.*'mlp'"):
        export_llava(llava_model(connector=kind), tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


@pytest.mark.parametrize("vision,lm_fields,vision_fields,match", [
    ("clip", dict(moe=dict(num_experts=2, top_k=1, every=2)), None, r"LMConfig.moe=.*dense Llama/Qwen2"),
    ("clip", None, dict(feature_layer=-1), r"feature_layer=-1.*normalises only the CLS token.*feature_layer=-2"),
    ("clip", None, dict(pre_norm=False), r"VisionConfig=.*'pre_norm': False.*CLIP needs"),
    ("clip", None, dict(patch_bias=True), r"VisionConfig=.*'patch_bias': True.*patch_bias=False"),
    ("siglip", None, dict(pre_norm=True), r"VisionConfig=.*SigLIP needs cls_token=False, pre_norm=False"),
])
def test_what_llava_cannot_express_is_refused(tmp_path, vision, lm_fields, vision_fields, match):
    model = llava_model(vision, lm_fields=lm_fields, vision_fields=vision_fields)
    with pytest.raises(ValueError, match=match):
        export_llava(model, tmp_path / "llava")


def test_exact_variants_without_a_tower_part_fill_it_neutrally(tmp_path, one_thread):
    """SigLIP without a patch bias, and CLIP read at -1 without a final norm, still export exactly."""
    ids, images = batch()
    for vision, fields in (("siglip", dict(patch_bias=False)), ("clip", dict(feature_layer=-1, post_norm=False))):
        model = llava_model(vision, vision_fields=fields)
        with torch.no_grad():
            theirs = load(export_llava(model, tmp_path / vision))(input_ids=ids, pixel_values=images).logits
            torch.testing.assert_close(theirs, model(ids, images).logits, atol=1e-5, rtol=1e-4)


def test_transformers_4_is_refused_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("transformers.__version__", "4.57.1")
    with pytest.raises(ValueError, match=r"transformers 4.57.1 is installed: pip install 'transformers>=5.24'"):
        export_llava(llava_model(), tmp_path / "llava")


def test_a_mismatched_tokenizer_is_refused(tmp_path, tok):
    model = llava_model()
    model.cfg.image_token_id = 4
    with pytest.raises(ValueError, match="<image> id.*=3 differs from MM1Config.image_token_id=4"):
        export_llava(model, tmp_path / "llava", tok)


def test_cli_exports_saved_models_and_training_runs_and_reports_refusals(tmp_path, tok, capsys, one_thread):
    model = llava_model()
    model.save_pretrained(tmp_path / "mm1", tokenizer=tok)
    assert cli_main(["export", "llava", str(tmp_path / "mm1"), str(tmp_path / "llava"), "--dtype", "bfloat16"]) == 0
    hf = load(tmp_path / "llava")
    assert hf.dtype == torch.bfloat16 and (tmp_path / "llava" / "tokenizer.json").exists()
    # A training run: the newest complete checkpoint's files as mm1lab/train/checkpoint.py writes them.
    step = tmp_path / "run" / "checkpoints" / "step_00000007"
    step.mkdir(parents=True)
    save_state_dict(model.state_dict(), step / "model.safetensors")
    model.cfg.save(step / "model_config.json")
    (step / "meta.json").write_text('{"step": 7}')
    assert cli_main(["export", "llava", str(tmp_path / "run"), str(tmp_path / "from-run")]) == 0
    ids, images = batch()
    with torch.no_grad():
        theirs = load(tmp_path / "from-run")(input_ids=ids, pixel_values=images).logits
        torch.testing.assert_close(theirs, model(ids, images).logits, atol=1e-5, rtol=1e-4)
    MM1Model(MM1Config.from_dict({**model.cfg.to_dict(), "connector": dict(kind="avgpool", num_tokens=4)})
             ).save_pretrained(tmp_path / "pooled")
    assert cli_main(["export", "llava", str(tmp_path / "pooled"), str(tmp_path / "pooled-llava")]) == 2
    assert "ConnectorConfig.kind='avgpool'" in capsys.readouterr().err
