"""LoRA through peft: only adapters train, merging changes nothing, adapters round-trip through safetensors (also
into peft's own PeftModel), a LoRA run resumes exactly, and 03_sft's switch reaches the trainer. QLoRA (nf4) where
bitsandbytes is installed."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import tiny_config
from test_train_loop import tiny_run

from mm1lab.bench.common import make_batch
from mm1lab.config import ConfigError
from mm1lab.folders import ADAPTER_CONFIG, ADAPTER_WEIGHTS, find_checkpoint
from mm1lab.load import load_model
from mm1lab.lora import LoRAConfig, apply_lora, is_adapter, load_adapters, lora_targets, merge_lora
from mm1lab.model import MM1Model
from mm1lab.safetensors_io import load_state_dict
from mm1lab.train import TrainConfig, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
LORA = dict(r=4, alpha=8.0)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one intra-op thread (conftest's `one_thread`)."""


def logits(model: MM1Model, connector: str = "avgpool") -> torch.Tensor:
    batch = make_batch(tiny_config(connector), batch=2, text_tokens=6, seed=1)
    with torch.no_grad():
        return model.eval()(batch["input_ids"], images=batch["images"]).logits


def fresh(connector: str = "avgpool") -> MM1Model:
    torch.manual_seed(0)   # the trainer seeds with cfg.seed = 0 right before it builds the model
    return MM1Model(tiny_config(connector))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Five LoRA steps of the test model through the real trainer (adapters on the LM and connector)."""
    out = tmp_path_factory.mktemp("lora")
    return train(tiny_run(out, steps=5, lora=LORA))


def test_only_adapters_train_and_base_weights_stay_bit_identical(lora_run):
    model = lora_run.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter(n) for n in trainable)
    assert {n.split(".", 1)[0] for n in trainable} == {"lm", "connector"}
    batch = make_batch(tiny_config(), batch=2, text_tokens=6)
    model.train()(batch["input_ids"], images=batch["images"], labels=batch["labels"]).loss.backward()
    assert all((p.grad is None) != is_adapter(n) for n, p in model.named_parameters())   # grads: adapters only
    model.zero_grad(set_to_none=True)
    ckpt = load_checkpoint(lora_run.checkpoint, weights_only=True)
    before = fresh().state_dict()
    assert ckpt.weights.keys() == before.keys()                         # the base, under the plain names
    assert all(torch.equal(ckpt.weights[k], before[k]) for k in before)  # untouched by 5 AdamW steps
    assert any(v.abs().sum() > 0 for k, v in ckpt.adapters.items() if "lora_B" in k)   # B starts at zero: it learnt


def test_merged_model_equals_the_model_with_adapters(lora_run):
    adapted = logits(lora_run.model)
    assert not torch.allclose(adapted, logits(fresh()), atol=1e-4)   # the adapters changed the model
    merged = merge_lora(copy.deepcopy(lora_run.model))
    assert type(merged.lm.layers[0].attn.q_proj) is torch.nn.Linear and not hasattr(merged, "peft_config")
    assert merged.state_dict().keys() == fresh().state_dict().keys()
    torch.testing.assert_close(logits(merged), adapted, atol=1e-5, rtol=1e-5)
    loaded = load_model(lora_run.run_dir).model   # what eval and notebooks 04/05 load: merged on load
    assert type(loaded) is MM1Model and not any(is_adapter(n) for n, _ in loaded.named_parameters())
    torch.testing.assert_close(logits(loaded), adapted, atol=1e-5, rtol=1e-5)
    exported = loaded.save_pretrained(lora_run.run_dir / "exported")   # a plain folder, no adapters
    torch.testing.assert_close(logits(load_model(exported).model), adapted, atol=1e-5, rtol=1e-5)


def test_adapters_round_trip_through_safetensors_and_into_peft(lora_run):
    folder = find_checkpoint(lora_run.run_dir)
    assert (folder / ADAPTER_WEIGHTS).exists() and (folder / ADAPTER_CONFIG).exists()
    assert not list(folder.glob("*adapter*.bin")) and not list(folder.glob("*adapter*.pt"))
    adapted = logits(lora_run.model)
    model = fresh()
    model.load_state_dict(load_state_dict(folder / "model.safetensors"))
    assert torch.equal(logits(load_adapters(model, folder)), adapted)   # bit-exact: the same ops on the same weights
    from peft import PeftModel

    base = fresh()
    base.load_state_dict(load_state_dict(folder / "model.safetensors"))
    peft_model = PeftModel.from_pretrained(base, str(folder))            # peft's own loader reads our files
    torch.testing.assert_close(logits(peft_model.base_model.model), adapted, atol=0, rtol=0)


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_lora_run_resumes_exactly(tmp_path, monkeypatch, quantize):
    if quantize:
        pytest.importorskip("bitsandbytes")
    lora = dict(LORA, dropout=0.1, quantize=quantize)   # dropout draws random numbers: the RNG must resume too
    make = lambda out: tiny_run(out, steps=6, lora=lora, checkpoint=dict(every=2, keep=3))   # noqa: E731
    whole = train(make(tmp_path / "whole"))
    monkeypatch.setenv("MM1LAB_FAULT", "raise@train:5")   # dies after step 5; the last checkpoint is step 4
    with pytest.raises(RuntimeError, match="injected fault"):
        train(make(tmp_path / "cut"))
    monkeypatch.delenv("MM1LAB_FAULT")
    resumed = train(make(tmp_path / "cut"))
    a, b = (load_checkpoint(r.checkpoint) for r in (whole, resumed))
    assert a.step == b.step == 6
    assert all(torch.equal(a.adapters[k], b.adapters[k]) for k in a.adapters)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys() and all(is_adapter(k) for k in sa)   # AdamW state for the adapters only
    assert all(torch.equal(x, y) for k in sa for x, y in zip(sa[k].values(), sb[k].values()))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_lora_under_torchrun_matches_one_process(tmp_path, parallel):
    from test_train_distributed import RTOL, launch

    from mm1lab.train import read_metrics

    make = lambda out, **over: tiny_run(out, steps=4, batch_size=8, micro_batch_size=2, lora=LORA, **over)  # noqa: E731
    launch(make(tmp_path / "single"), tmp_path, nproc=1)
    launch(make(tmp_path / parallel, parallel=parallel), tmp_path, nproc=2)
    ref, got = ([r["loss"] for r in read_metrics(tmp_path / name)] for name in ("single", parallel))
    assert got == pytest.approx(ref, rel=RTOL) and len(got) == 4
    a, b = (load_checkpoint(tmp_path / name, weights_only=True) for name in ("single", parallel))
    assert a.weights.keys() == b.weights.keys() and a.adapters.keys() == b.adapters.keys()   # gathered, then split
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)               # the frozen base
    assert all(torch.allclose(a.adapters[k], b.adapters[k], rtol=1e-4, atol=1e-6) for k in a.adapters)


@pytest.mark.parametrize("over, names", [
    (dict(), {"lm.layers.0.attn.q_proj", "lm.layers.1.ffn.down", "connector.proj"}),
    (dict(parts=["vision"], targets=["q", "v"]), {"vision.blocks.0.attn.q", "vision.blocks.1.attn.v"}),
])
def test_targets_follow_parts_layers_and_suffixes(over, names):
    found = set(lora_targets(fresh(), LoRAConfig(r=4, **over)))
    assert names <= found and "lm.lm_head" not in found
    assert all(n.split(".", 1)[0] in over.get("parts", ["lm", "connector"]) for n in found)


def test_conv_adapters_on_the_c_abstractor_merge_exactly():
    model = apply_lora(fresh("c-abstractor"), LoRAConfig(r=4, parts=["connector"], layers=["linear", "conv"]))
    grouped = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert grouped and not any(".base_layer" in n for n in grouped)   # depthwise convs are left alone
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    adapted = logits(model, "c-abstractor")
    torch.testing.assert_close(logits(merge_lora(model), "c-abstractor"), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over, message", [
    (dict(lora=dict(r=-1)), "lora.r must be an integer >= 0"),
    (dict(lora=dict(r=4, parts=["decoder"])), "lora.parts: unknown ['decoder']"),
    (dict(lora=dict(r=4, full=["lm"])), "in both parts (adapters) and full"),
    (dict(lora=dict(r=4, quantize="int3")), "lora.quantize must be null or one of"),
    (dict(lora=dict(r=4), freeze=dict(lm=True)), "TrainConfig.freeze: ['lm'] frozen"),
    (dict(lora=dict(r=4), stage="clip"), "objective 'clip' trains in full"),
])
def test_bad_lora_configs_name_the_field(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_dict(tiny_run(tmp_path, **over))


def test_no_layer_matches_names_the_layers_there_are():
    with pytest.raises(ConfigError, match=r"no linear layer of \['lm'\] matches targets \['qkv'\].*'q_proj'"):
        lora_targets(fresh(), LoRAConfig(r=4, parts=["lm"], targets=["qkv"]))


def test_resuming_a_lora_run_without_lora_is_refused(lora_run, tmp_path):
    cfg = TrainConfig.from_dict(tiny_run(lora_run.run_dir, steps=6))
    with pytest.raises(ValueError, match="holds LoRA adapters but this config has lora.r=0"):
        train(cfg)


def test_config_file_and_notebook_switch_reach_the_trainer(tmp_path):
    cfg = TrainConfig.load(ROOT / "configs" / "sft-tiny-lora.yaml")
    assert cfg.lora.enabled and cfg.stage == "sft" and set(cfg.lora.parts) == {"lm", "connector"}
    nb = nbformat.read(ROOT / "notebooks" / "03_sft.ipynb", as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    scope: dict = {}
    exec(nb.cells[params].source, scope)
    assert scope["LORA_RANK"] == 0   # off by default: full SFT
    scope.update(SMOKE=True, RUN_DIR=str(tmp_path), LORA_RANK=4)   # what papermill injects after that cell
    exec(nb.cells[params + 1].source, scope)
    assert TrainConfig.from_dict(scope["config"]).lora.r == 4


@pytest.mark.slow
def test_03_sft_runs_with_lora_in_smoke_mode(tmp_path):
    from mm1lab.runner import run_notebook

    result = run_notebook(ROOT / "notebooks" / "03_sft.ipynb", {"LORA_RANK": 4}, smoke=True, out_root=tmp_path)
    assert result.ok, f"03_sft with LORA_RANK=4 failed: {result.error}\n  partial notebook: {result.notebook}"
    assert (find_checkpoint(result.folder / "train") / ADAPTER_WEIGHTS).exists()


# ---- QLoRA ---------------------------------------------------------------------------------------------
def test_qlora_resumes_on_the_same_bits_and_merges_exactly(tmp_path):
    pytest.importorskip("bitsandbytes")
    from mm1lab.lora import dequantize, quantize_layers, quantized_layers

    result = train(tiny_run(tmp_path, steps=3, lora=dict(LORA, quantize="nf4")))
    layers = dict(quantized_layers(result.model))
    assert layers and all(n.endswith(".base_layer") for n in layers)
    ckpt = load_checkpoint(result.checkpoint, weights_only=True)
    requantized = fresh()
    requantized.load_state_dict(ckpt.weights)   # the stored, dequantized base
    names = [n.removesuffix(".base_layer") for n in layers]
    quantize_layers(requantized, names)
    for name in names:
        again, trained = requantized.get_submodule(name), layers[name + ".base_layer"]
        assert torch.equal(again.weight.data, trained.weight.data)             # the same 4-bit codes
        assert torch.equal(dequantize(again), dequantize(trained))
    adapted = logits(result.model)
    torch.testing.assert_close(logits(load_model(tmp_path).model), adapted, atol=1e-5, rtol=1e-5)


def test_bench_counts_what_lora_trains_exactly():
    from mm1lab.bench.lora import MIB, state_bytes
    from mm1lab.bench.train_step import make_optimizer

    cfg = LoRAConfig(r=4)
    layers = [fresh().get_submodule(n) for n in lora_targets(fresh(), cfg)]
    adapters = sum(cfg.r * (m.in_features + m.out_features) for m in layers)   # A: r x in, B: out x r
    model = apply_lora(fresh(), cfg)
    row = state_bytes(model, make_optimizer(model), make_batch(tiny_config(), batch=2, text_tokens=6))
    assert row["trainable_params"] == adapters and row["grads_mib"] * MIB == 4 * adapters
    assert row["adamw_mib"] * MIB == 2 * 4 * adapters + 4 * 2 * len(layers)   # exp_avg, exp_avg_sq; a step per tensor


def test_a_4bit_layer_keeps_its_weight_layout_through_an_eval_forward():
    """bitsandbytes repacks 4-bit weights in place for its AVX512-BF16 CPU kernel (and fails on small layers); the
    layers mm1lab quantizes keep the one layout that `dequantize` and checkpoints read, on every CPU."""
    pytest.importorskip("bitsandbytes")
    from mm1lab.lora import dequantize, quantize_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    quantize_layers(model, ["0"])
    codes, weight = model[0].weight.data.clone(), dequantize(model[0])
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 32))
    assert torch.equal(model[0].weight.data, codes) and torch.equal(dequantize(model[0]), weight)
    assert out.shape == (2, 16)
