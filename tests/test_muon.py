"""`optim.name: muon`: which weights Muon updates, and that the one optimizer steps as torch's two would."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train_loop import tiny_config

from mm1lab.model import MM1Model
from mm1lab.train.muon import MuonWithAdamW, split_for_muon
from mm1lab.train.schedule import param_groups


def groups_of(model):
    return split_for_muon(model, param_groups(model, peak_lr=1e-2, weight_decay=0.1, lr_scale={"vision": 0.5}),
                          ("lm", "connector"))


def test_muon_takes_the_hidden_matrices_of_the_lm_and_connector_only():
    model = MM1Model(tiny_config())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = groups_of(model)
    muon = {names[id(p)] for g in groups if g["use_muon"] for p in g["params"]}
    assert "lm.layers.0.attn.q_proj.weight" in muon and "lm.layers.0.ffn.down.weight" in muon
    assert all(n.split(".")[0] in ("lm", "connector") for n in muon)
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in muon)
    assert all(p.ndim == 2 for g in groups if g["use_muon"] for p in g["params"])
    assert {g["name"] for g in groups if g["use_muon"]} == {"lm.muon", "connector.muon"}
    # every trainable parameter is in exactly one group, with its part's LR and decay
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    lm = next(g for g in groups if g["name"] == "lm.muon")
    assert lm["lr"] == 1e-2 and lm["weight_decay"] == 0.1


def test_one_optimizer_steps_exactly_as_torchs_muon_and_adamw_side_by_side():
    torch.manual_seed(0)
    model = MM1Model(tiny_config())
    twin = copy.deepcopy(model)
    ours = MuonWithAdamW(groups_of(model), betas=(0.9, 0.95), eps=1e-8)
    split = groups_of(twin)
    adamw = torch.optim.AdamW([g for g in split if not g["use_muon"]], betas=(0.9, 0.95), eps=1e-8)
    muon = torch.optim.Muon([g for g in split if g["use_muon"]], adjust_lr_fn="match_rms_adamw")
    ids = torch.randint(10, tiny_config().lm.vocab_size, (2, 12))
    for _ in range(3):
        for m, opts in ((model, [ours]), (twin, [adamw, muon])):
            m(ids, labels=ids).loss.backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_a_reloaded_optimizer_keeps_stepping_both_rules():
    model = MM1Model(tiny_config())
    opt = MuonWithAdamW(groups_of(model))
    ids = torch.randint(10, tiny_config().lm.vocab_size, (2, 12))
    model(ids, labels=ids).loss.backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    fresh = MuonWithAdamW(groups_of(model))
    fresh.load_state_dict(state)                 # replaces its groups and state: the inner optimizers follow
    q = model.lm.layers[0].attn.q_proj.weight
    before = fresh.state[q]["momentum_buffer"].clone()
    model(ids, labels=ids).loss.backward()
    fresh.step()
    assert not torch.equal(fresh.state[q]["momentum_buffer"], before)
    assert all(inner.state is fresh.state for inner in fresh._inner)


def test_an_unknown_optimizer_is_refused():
    from mm1lab.train.config import TrainConfig

    with pytest.raises(ValueError, match="must be 'adamw' or 'muon'"):
        TrainConfig.from_dict(dict(name="x", out_dir="x", optim=dict(name="sgd")))


def test_conv_kernels_step_as_torchs_muon_on_their_matrices_and_keep_their_shape():
    torch.manual_seed(0)
    model = MM1Model(tiny_config("c-abstractor"))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = split_for_muon(model, param_groups(model, peak_lr=1e-2, weight_decay=0.1, lr_scale={}),
                            ("lm", "connector"), conv=True)
    kernels = [p for g in groups if g["use_muon"] for p in g["params"] if p.ndim == 4]
    assert kernels and all(names[id(p)].startswith("connector.") for p in kernels)
    assert not any(p.ndim == 4 for g in groups_of(model) if g["use_muon"] for p in g["params"])   # off by default
    kernel = max(kernels, key=lambda p: p.shape[-1])            # a 3 x 3 (depthwise) kernel
    shape = kernel.shape
    # the reference: torch's Muon on a plain matrix holding the kernel, given the same gradients
    matrix = torch.nn.Parameter(kernel.detach().flatten(1).clone())
    group = next(g for g in groups if g["use_muon"] and any(p is kernel for p in g["params"]))
    reference = torch.optim.Muon([matrix], lr=group["lr"], weight_decay=group["weight_decay"],
                                 adjust_lr_fn="match_rms_adamw")
    ours = MuonWithAdamW(groups)
    images = torch.randn(2, 3, 32, 32)
    ids = torch.full((2, 12), 5)
    ids[:, 1:5] = model.cfg.image_token_id
    for _ in range(2):
        model(ids, images=images, labels=ids).loss.backward()
        matrix.grad = kernel.grad.detach().flatten(1).clone()
        ours.step()
        reference.step()
        assert kernel.shape == shape and kernel.grad.shape == shape
        assert torch.equal(kernel.detach().flatten(1), matrix.detach())
        ours.zero_grad()
    # the state round-trips: a reloaded optimizer steps the kernel on from the same momentum
    fresh = MuonWithAdamW(split_for_muon(model, param_groups(model, peak_lr=1e-2, weight_decay=0.1, lr_scale={}),
                                         ("lm", "connector"), conv=True))
    fresh.load_state_dict(copy.deepcopy(ours.state_dict()))
    model(ids, images=images, labels=ids).loss.backward()
    matrix.grad = kernel.grad.detach().flatten(1).clone()
    fresh.step()
    reference.step()
    assert torch.equal(kernel.detach().flatten(1), matrix.detach())
