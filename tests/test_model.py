"""The MM1 model: image placement, causality, KV cache, loss masking, gradients, freezing, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from mm1lab import MM1Model
from mm1lab.config import CONNECTORS, ConfigError
from mm1lab.generate import left_pad

IMG = 3  # image placeholder id


def batch_with_images(cfg, *, n=24):
    """Sample 0 holds one image at position 2, sample 1 two images (positions 1 and 12), both text-padded."""
    k = cfg.image_tokens
    ids = torch.randint(10, cfg.lm.vocab_size, (2, n + 2 * k))
    ids[0, 2:2 + k] = IMG
    ids[1, 1:1 + k] = IMG
    ids[1, 12 + k:12 + 2 * k] = IMG
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    return ids, images


@pytest.mark.parametrize("connector", CONNECTORS)
def test_forward_shapes_and_loss_for_every_connector(connector):
    cfg = tiny_config(connector)
    model = MM1Model(cfg)
    ids, images = batch_with_images(cfg)
    out = model(ids, images, labels=ids)
    assert out.logits.shape == (*ids.shape, cfg.lm.vocab_size)
    assert torch.isfinite(out.loss)
    # At init the model is close to uniform over the vocabulary.
    assert abs(out.loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5


def test_images_given_per_sample_equal_images_given_flat():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    flat = model(ids, images).logits
    per_sample = model(ids, [images[:1], images[1:]]).logits
    torch.testing.assert_close(flat, per_sample)


def test_an_image_only_changes_logits_from_its_placeholders_on():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    second_image_start = 12 + cfg.image_tokens           # sample 1's second image
    changed = images.clone()
    changed[2] = torch.randn_like(changed[2])
    a, b = model(ids, images).logits, model(ids, changed).logits
    torch.testing.assert_close(a[1, :second_image_start], b[1, :second_image_start])
    assert not torch.allclose(a[1, second_image_start:], b[1, second_image_start:])
    torch.testing.assert_close(a[0], b[0])              # the other sample is untouched


def test_image_tokens_land_where_the_placeholders_were():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    tokens = model.encode_images(images)
    embeds = model.embed(ids, tokens.flatten(0, 1))
    k = cfg.image_tokens
    torch.testing.assert_close(embeds[0, 2:2 + k], tokens[0])
    torch.testing.assert_close(embeds[1, 1:1 + k], tokens[1])
    torch.testing.assert_close(embeds[1, 12 + k:12 + 2 * k], tokens[2])
    torch.testing.assert_close(embeds[0, 0], model.lm.embed.weight[ids[0, 0]])


def test_causality_later_tokens_leave_earlier_logits_unchanged():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids = torch.randint(10, 64, (2, 20))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(10, 64, (2, 8))
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("moe", [None, dict(num_experts=4, top_k=2, every=2)])
def test_kv_cache_generation_gives_the_full_forward_logits(moe):
    cfg = tiny_config(moe=moe)
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    new, logits = model.generate(ids, images, max_new_tokens=6, stop_tokens=[], return_logits=True)
    full = model(torch.cat([ids, new], 1), images).logits[:, ids.shape[1] - 1:-1]
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    model = MM1Model(tiny_config()).eval()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    ids, mask = left_pad(prompts, pad_id=0)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=5, stop_tokens=[])
    for row, prompt in zip(batch, prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=5, stop_tokens=[])
        assert row.tolist() == alone[0].tolist()


@pytest.mark.parametrize("variant", ["dense", "moe", "qkv_bias", "bf16"])
def test_packed_decode_step_gives_the_module_path_logits(variant):
    """`PackedDecoder` (stacked q/k/v and gate/up) == `model.forward` step by step, left padding included."""
    cfg = tiny_config(moe=dict(num_experts=4, top_k=2, every=2) if variant == "moe" else None,
                      qkv_bias=variant == "qkv_bias")
    model = MM1Model(cfg).eval()
    if variant == "qkv_bias":   # non-zero biases, so a dropped or misplaced bias shows
        for block in model.lm.layers:
            torch.nn.init.normal_(block.attn.q_proj.bias)
            torch.nn.init.normal_(block.attn.v_proj.bias)
    if variant == "bf16":
        model.to(torch.bfloat16)
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad_id=0)
    runs = [model.generate(ids, attention_mask=mask, max_new_tokens=6, stop_tokens=[], return_logits=True,
                           packed=packed) for packed in (True, False)]
    (fast_tokens, fast_logits), (slow_tokens, slow_logits) = runs
    tol = 2e-2 if variant == "bf16" else 1e-5
    torch.testing.assert_close(fast_logits, slow_logits, atol=tol, rtol=tol)
    if variant != "bf16":
        assert fast_tokens.tolist() == slow_tokens.tolist()


def test_packed_decoder_is_rebuilt_after_the_weights_change():
    from mm1lab.decode_step import PackedDecoder

    model = MM1Model(tiny_config()).eval()
    ids = torch.randint(10, 64, (1, 6))
    model.generate(ids, max_new_tokens=2)
    packed = PackedDecoder.of(model.lm)
    assert PackedDecoder.of(model.lm) is packed          # cached while nothing changed
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(ids, labels=ids).loss.backward()
    opt.step()                                           # in-place update: the packed copy is stale
    assert PackedDecoder.of(model.lm) is not packed
    _, fast = model.generate(ids, max_new_tokens=4, stop_tokens=[], return_logits=True)
    _, slow = model.generate(ids, max_new_tokens=4, stop_tokens=[], return_logits=True, packed=False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_generation_stops_pads_and_never_emits_placeholders():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids = torch.randint(10, 64, (3, 8))
    greedy = model.generate(ids, max_new_tokens=4, stop_tokens=[])
    stop = int(greedy[0, 0])                              # sample 0 must stop after its first token
    out = model.generate(ids, max_new_tokens=4, stop_tokens=[stop])
    assert out[0, 0] == stop and (out[0, 1:] == cfg.pad_token_id).all()
    sampled = model.generate(ids, max_new_tokens=16, temperature=1.5, top_p=0.9, stop_tokens=[],
                             generator=torch.Generator().manual_seed(0))
    assert not (sampled == IMG).any()


def test_sampling_is_deterministic_for_a_seeded_generator_and_top_p_tiny_is_greedy():
    model = MM1Model(tiny_config()).eval()
    ids = torch.randint(10, 64, (2, 8))
    run = lambda seed, **kw: model.generate(ids, max_new_tokens=6, stop_tokens=[], temperature=1.0,
                                            generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(1), run(1))
    greedy = model.generate(ids, max_new_tokens=6, stop_tokens=[])
    assert torch.equal(run(2, top_p=1e-6), greedy)


def test_loss_counts_only_text_and_masked_tokens():
    cfg = tiny_config()
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    out = model(ids, images, labels=ids)
    # Manual: next-token CE on positions whose target is text.
    logits, targets = out.logits[:, :-1], ids[:, 1:]
    keep = targets != IMG
    manual = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.aux["ce"], manual)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -5:] = True                                   # e.g. SFT: only the assistant's answer
    masked = model(ids, images, labels=ids, loss_mask=mask)
    manual = torch.nn.functional.cross_entropy(logits[:, -5:].flatten(0, 1), targets[:, -5:].flatten())
    torch.testing.assert_close(masked.loss, manual)



@pytest.mark.parametrize("masked", [False, True])
def test_head_on_loss_positions_only_equals_the_full_logits_path(masked):
    """`return_logits=False` (the trainer's path) gives the same losses and gradients as computing every logit."""
    cfg = tiny_config()
    model = MM1Model(cfg)
    ids, images = batch_with_images(cfg)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -7:] = True
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, images, labels=ids, loss_mask=mask if masked else None, return_logits=return_logits)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out, grads))
    (full, full_grads), (sliced, sliced_grads) = results
    assert sliced.logits.numel() == 0
    torch.testing.assert_close(sliced.loss, full.loss)
    torch.testing.assert_close(sliced.token_loss, full.token_loss)
    torch.testing.assert_close(sliced.sample_loss, full.sample_loss)
    assert len(sliced_grads) == len(full_grads)
    for a, b in zip(sliced_grads, full_grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="return_logits=False needs labels"):
        model(ids, images, return_logits=False)

def test_gradients_reach_all_parts_and_freezing_removes_them():
    cfg = tiny_config("c-abstractor")
    model = MM1Model(cfg)
    ids, images = batch_with_images(cfg)
    model(ids, images, labels=ids).loss.backward()
    for part in ("vision", "connector", "lm"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
    model.zero_grad(set_to_none=True)
    model.freeze(vision=True, connector=True)
    model(ids, images, labels=ids).loss.backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert all(p.grad is None for p in model.connector.parameters())
    assert all(p.grad is not None for p in model.lm.parameters())
    with pytest.raises(ValueError, match="parts are vision, connector, lm"):
        model.freeze(decoder=True)


def test_text_only_and_mixed_batches():
    cfg = tiny_config()
    model = MM1Model(cfg)
    text = torch.randint(10, 64, (2, 16))
    assert torch.isfinite(model(text, labels=text).loss)
    ids, images = batch_with_images(cfg)
    ids[0][ids[0] == IMG] = 20                            # sample 0 becomes text-only
    out = model(ids, [None, images[1:]], labels=ids)
    assert torch.isfinite(out.loss)


def test_return_attention_gives_probabilities_and_matches_the_sdpa_path():
    cfg = tiny_config("attnpool")
    model = MM1Model(cfg).eval()
    ids, images = batch_with_images(cfg)
    fast = model(ids, images).logits
    out = model(ids, images, return_attention=True)
    torch.testing.assert_close(out.logits, fast, atol=1e-5, rtol=1e-5)
    assert len(out.lm_attentions) == cfg.lm.depth
    attn = out.lm_attentions[0]
    assert attn.shape == (2, cfg.lm.heads, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    assert attn.triu(1).abs().max() == 0                 # causal
    assert out.connector.regions.shape == (3, cfg.image_tokens, cfg.vision.num_patches)
    assert len(out.vision.attentions) == cfg.vision.depth


@pytest.mark.parametrize("make, message", [
    (lambda cfg, ids, im: (ids, im[:2]), r"12 image placeholder tokens .* 2 image\(s\) x 4 tokens = 8"),
    (lambda cfg, ids, im: (ids, [im[:2], im[2:]]), "sample 0"),
    (lambda cfg, ids, im: (torch.cat([ids, torch.full((2, 3), IMG)], 1), im), "18 image placeholder"),
    (lambda cfg, ids, im: (ids, im[:, 0]), "batch, 3, height, width"),
    (lambda cfg, ids, im: (ids, (im * 255).to(torch.uint8)), "floating point"),
    (lambda cfg, ids, im: (ids.float(), im), "long tensor"),
    (lambda cfg, ids, im: (torch.randint(10, 64, (1, 200)), None), "longer than the context"),
])
def test_bad_input_errors_say_what_to_fix(make, message):
    cfg = tiny_config()
    model = MM1Model(cfg)
    ids, images = batch_with_images(cfg)
    args = make(cfg, ids, images)
    with pytest.raises(ValueError, match=message):
        model(*args)


def test_image_size_not_a_multiple_of_the_patch_raises():
    cfg = tiny_config()
    model = MM1Model(cfg)
    ids, _ = batch_with_images(cfg)
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        model(ids, torch.randn(3, 3, 30, 30))


def test_compiled_model_trains_like_the_eager_one():
    """`torch.compile` (the trainer's `compile: true`, the bench's 'ours_compiled'): same loss and gradients."""
    cfg = tiny_config()
    eager = MM1Model(cfg)
    compiled = MM1Model(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    ids, images = batch_with_images(cfg)
    losses, grads = [], []
    for model in (eager, compiled):
        out = model(ids, images, labels=ids, return_logits=False)
        out.loss.backward()
        losses.append(out.loss)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-4, msg=name)
