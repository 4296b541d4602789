"""Hook points, the activation cache, edits, the logit lens and activation patching (mm1lab.interpret)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from mm1lab import MM1Model
from mm1lab.generate import _hooked
from mm1lab.interpret import (
    ablate,
    activation_patching,
    hook_names,
    hooked,
    lens_names,
    logit_lens,
    patch,
    run_with_cache,
    run_with_hooks,
    steer,
)
from mm1lab.interpret.hooks import point_of

MOE = dict(num_experts=4, top_k=2, every=2)
VARIANTS = {"avgpool": ("avgpool", None), "c-abstractor-moe": ("c-abstractor", MOE),
            "d-abstractor": ("d-abstractor", None)}


def model_and_input(kind: str = "avgpool", moe=None):
    """A tiny model and one sequence: 2 text tokens, one image (k placeholders), 3 text tokens."""
    cfg = tiny_config(kind, moe=moe)
    model = MM1Model(cfg).eval()
    k = cfg.image_tokens
    ids = torch.tensor([[1, 5] + [cfg.image_token_id] * k + [6, 7, 8]])
    return cfg, model, ids, torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_holds_every_named_point_with_its_documented_axes(variant):
    cfg, model, ids, images = model_and_input(*VARIANTS[variant])
    with torch.no_grad():
        cache = run_with_cache(model, ids, images)
    assert cache.keys() == hook_names(cfg)
    sizes = dict(N=1, b=1, n=ids.shape[1], s=ids.shape[1], h=cfg.lm.heads, d=cfg.lm.width, dh=cfg.lm.head_dim,
                 k=cfg.image_tokens, p=cfg.vision.num_patches, t=cfg.vision.num_patches + 1, dv=cfg.vision.width,
                 e=4)
    for name, shape in cache.shapes().items():
        axes = point_of(name)[0].layout.split()
        if name.startswith("vision"):
            sizes["h"] = cfg.vision.heads
        assert shape == tuple(sizes[a] for a in axes), name
    # The cache reads the very tensors the model computes: attention patterns are the ones it returns.
    for i, pattern in enumerate(cache.output.lm_attentions):
        assert torch.equal(cache[f"lm.{i}.pattern"], pattern)
    if variant == "c-abstractor-moe":
        torch.testing.assert_close(cache["lm.1.router"].flatten(0, 1), cache.output.routers[0].probs)


def test_recording_without_patterns_changes_nothing_and_a_no_op_edit_changes_nothing():
    _, model, ids, images = model_and_input()
    with torch.no_grad():
        plain = model(ids, images).logits
        recorded = run_with_cache(model, ids, images, record=["lm.*.resid", "connector.tokens"]).output.logits
        noop = run_with_hooks(model, ids, images, edits={name: (lambda x, ctx: None) for name in
                                                         ["lm.embed", "lm.0.resid", "lm.1.heads", "connector.tokens"]})
        identity = run_with_hooks(model, ids, images, edits={"lm.1.resid": lambda x, ctx: x.clone()}).logits
    assert torch.equal(recorded, plain) and torch.equal(noop.logits, plain) and torch.equal(identity, plain)
    assert not _hooked(model.lm)                                        # every hook is removed afterwards


@pytest.mark.parametrize("name", ["lm.embed", "lm.0.resid", "connector.tokens"])
def test_zero_ablating_one_image_token_changes_the_logits_from_its_position_on(name):
    cfg, model, ids, images = model_and_input()
    token = 1                                                           # the second image token, at position 3
    position = 2 + token
    with torch.no_grad():
        plain = model(ids, images).logits
        at = [token] if name == "connector.tokens" else [position]      # connector tokens are indexed per image
        ablated = run_with_hooks(model, ids, images, edits={name: ablate(positions=at)}).logits
    assert torch.equal(ablated[:, :position], plain[:, :position])    # causal: earlier positions never see it
    assert (ablated[:, position:] - plain[:, position:]).abs().amax(-1).min() > 1e-4


def test_head_ablation_and_steering_reach_the_right_place():
    cfg, model, ids, images = model_and_input()
    with torch.no_grad():
        cache = run_with_cache(model, ids, images, record=["lm.1.heads", "lm.1.attn"])
        edited = run_with_cache(model, ids, images, record=["lm.1.heads", "lm.1.attn"],
                                edits={"lm.1.heads": ablate(heads=[2])})
        assert (edited["lm.1.heads"][:, :, 2] == 0).all()
        torch.testing.assert_close(edited["lm.1.heads"][:, :, [0, 1, 3]], cache["lm.1.heads"][:, :, [0, 1, 3]])
        # o_proj is linear without bias: removing head 2 removes exactly its share of the attention output.
        w = model.lm.layers[1].attn.o_proj.weight[:, 2 * cfg.lm.head_dim:3 * cfg.lm.head_dim]
        torch.testing.assert_close(cache["lm.1.attn"] - edited["lm.1.attn"], cache["lm.1.heads"][:, :, 2] @ w.T)
        vector = torch.randn(cfg.lm.width)
        steered = run_with_cache(model, ids, images, record="lm.0.resid",
                                 edits={"lm.0.resid": steer(vector, scale=2.0, positions=[7])})
        plain = run_with_cache(model, ids, images, record="lm.0.resid")
    torch.testing.assert_close(steered["lm.0.resid"] - plain["lm.0.resid"],
                               torch.zeros_like(plain["lm.0.resid"]).index_fill(1, torch.tensor([7]), 1) * 2 * vector)


def test_read_only_and_unknown_points_are_refused_with_the_names_to_use():
    cfg, model, ids, images = model_and_input()
    with pytest.raises(ValueError, match="read only"), hooked(model, edits={"lm.0.pattern": ablate()}):
        pass
    with pytest.raises(KeyError, match="unknown hook point"), hooked(model, edits={"lm.0.resdi": ablate()}):
        pass
    with pytest.raises(KeyError, match="no such hook point"), hooked(model, edits={"lm.9.resid": ablate()}):
        pass
    with pytest.raises(KeyError, match="match no hook point"):
        run_with_cache(model, ids, images, record="lm.*.router")          # a dense model has no routers
    with pytest.raises(ValueError, match="returned shape"):
        run_with_hooks(model, ids, images, edits={"lm.0.resid": lambda x, ctx: x[:, :1]})


@pytest.mark.parametrize("packed", [True, False])
def test_hooks_fire_during_generate_and_the_cache_equals_one_forward(packed):
    cfg, model, ids, images = model_and_input("c-abstractor", MOE)
    with hooked(model, record=["lm.*.resid", "lm.*.pattern", "lm.1.router", "connector.tokens"]) as cache:
        new = model.generate(ids, images, max_new_tokens=5, stop_tokens=[], packed=packed)
    assert len(cache.calls) == new.shape[1]                             # the prompt, then one call per fed token
    full = torch.cat([ids, new[:, :-1]], 1)
    with torch.no_grad():
        once = run_with_cache(model, full, images, record=["lm.*.resid", "lm.*.pattern", "lm.1.router",
                                                           "connector.tokens"])
    for name in once.keys():
        assert cache[name].shape == once[name].shape, name
        torch.testing.assert_close(cache[name], once[name], atol=1e-5, rtol=1e-4)
    # An edit during generate changes what is generated from the step it applies to.
    pushed = steer(10 * model.lm.embed.weight[9], positions=range(ids.shape[1], 64))
    with hooked(model, edits={"lm.1.resid": pushed}):
        steered = model.generate(ids, images, max_new_tokens=5, stop_tokens=[], packed=packed)
    assert torch.equal(steered[:, 0], new[:, 0])                        # the prompt itself is not steered
    assert (steered[:, 1:] == 9).all() and not (new[:, 1:] == 9).all()


def test_patching_during_generate_slices_the_source_to_each_step():
    cfg, model, ids, images = model_and_input()
    new = model.generate(ids, images, max_new_tokens=4, stop_tokens=[])
    full = torch.cat([ids, new[:, :-1]], 1)
    with torch.no_grad():
        source = run_with_cache(model, full, images, record="lm.0.resid")["lm.0.resid"]
    with hooked(model, edits={"lm.0.resid": patch(source)}):
        again = model.generate(ids, images, max_new_tokens=4, stop_tokens=[])
    assert torch.equal(again, new)                                      # its own activations: the same tokens


# ---- logit lens -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_logit_lens_at_the_last_layer_is_the_models_logits(variant):
    cfg, model, ids, images = model_and_input(*VARIANTS[variant])
    with torch.no_grad():
        cache = run_with_cache(model, ids, images, record=["lm.embed", "lm.*.resid"])
    lens = logit_lens(model, cache)
    assert lens.layers == lens_names(cfg) and lens.logits.shape == (cfg.lm.depth + 1, 1, ids.shape[1],
                                                                      cfg.lm.vocab_size)
    torch.testing.assert_close(lens.logits[-1], cache.output.logits, atol=1e-6, rtol=1e-5)
    # Image positions are read too, and a subset of positions is the same rows.
    part = logit_lens(model, cache, positions=[2, 3, -1])
    torch.testing.assert_close(part.logits, lens.logits[:, :, [2, 3, ids.shape[1] - 1]])
    probs, top = lens.top(3)
    assert torch.equal(top[..., 0], lens.logits.argmax(-1))
    best = int(top[-1, 0, -1, 0])                                       # the model's own next token
    assert int(lens.rank(best)[-1, 0, -1]) == 0
    torch.testing.assert_close(lens.token_prob(best)[-1, 0, -1], probs[-1, 0, -1, 0])
    with pytest.raises(KeyError, match="record them"):
        logit_lens(model, run_with_cache(model, ids, images, record="lm.0.resid"))


# ---- activation patching ----------------------------------------------------------------------------------------
def test_patching_clean_into_clean_is_a_no_op():
    cfg, model, ids, images = model_and_input()
    sample = dict(input_ids=ids, images=images)
    for what in ("resid", "attn", "ffn", "heads"):
        with pytest.warns(UserWarning, match="no difference"):
            result = activation_patching(model, sample, sample, answer=10, wrong=11, what=what, batch_size=7)
        torch.testing.assert_close(result.metric, torch.full_like(result.metric, result.clean), atol=1e-5, rtol=0)
        assert (result.effect == 0).all()


def planted_pair():
    """A toy model whose image tokens each see only their own quadrant (encoder attention switched off, average
    pooling), and two images that differ in one quadrant: the difference is planted in exactly one image token."""
    cfg, model, ids, images = model_and_input("avgpool")
    with torch.no_grad():
        for block in model.vision.blocks:
            block.attn.out.weight.zero_()
            block.attn.out.bias.zero_()
    corrupt = images.clone()
    corrupt[:, :, 16:, 16:] = torch.randn(1, 3, 16, 16)                # the bottom-right quadrant: image token 3
    return cfg, model, dict(input_ids=ids, images=images), dict(input_ids=ids, images=corrupt)


def test_patching_recovers_an_effect_planted_in_one_image_token():
    cfg, model, clean, corrupt = planted_pair()
    with torch.no_grad():
        a, b = (run_with_cache(model, s["input_ids"], s["images"], record="lm.embed")["lm.embed"] for s in (clean,
                                                                                                             corrupt))
    planted = 2 + 3                                                     # position of image token 3
    assert (a - b).abs().amax(-1)[0].nonzero().flatten().tolist() == [planted]
    result = activation_patching(model, clean, corrupt, answer=10, wrong=11)
    n, last = clean["input_ids"].shape[1], clean["input_ids"].shape[1] - 1
    assert result.effect.shape == (cfg.lm.depth + 1, n) and result.layers[0] == "lm.embed"
    assert abs(result.clean - result.corrupt) > 1e-3
    expected = torch.zeros(n)
    expected[planted] = 1
    torch.testing.assert_close(result.effect[0], expected, atol=1e-4, rtol=0)   # the embeddings: only that token
    expected = torch.zeros(n)
    expected[last] = 1
    torch.testing.assert_close(result.effect[-1], expected, atol=1e-4, rtol=0)  # the last layer: only the answer
    assert result.effect[:, :planted].abs().max() < 1e-4                 # nothing before the planted token matters
    assert result.is_image.tolist() == (clean["input_ids"][0] == cfg.image_token_id).tolist()


def test_batched_patching_equals_one_run_at_a_time():
    _, model, clean, corrupt = planted_pair()
    for what in ("resid", "heads"):
        one = activation_patching(model, clean, corrupt, answer=10, what=what, batch_size=1)
        many = activation_patching(model, clean, corrupt, answer=10, what=what, batch_size=64)
        torch.testing.assert_close(one.metric, many.metric, atol=1e-5, rtol=1e-5)


def test_patching_refuses_misaligned_inputs():
    cfg, model, ids, images = model_and_input()
    shorter = dict(input_ids=ids[:, :-1], images=images)
    with pytest.raises(ValueError, match="same length"):
        activation_patching(model, dict(input_ids=ids, images=images), shorter, answer=1)
    with pytest.raises(ValueError, match="what="):
        activation_patching(model, dict(input_ids=ids, images=images), dict(input_ids=ids, images=images),
                            answer=1, what="mlp")
