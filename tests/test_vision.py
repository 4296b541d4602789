"""ViT encoder: shapes, chosen feature layer, position-embedding interpolation, attention maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mm1lab import VisionConfig
from mm1lab.vision import VisionEncoder

CFG = VisionConfig(image_size=32, patch_size=8, width=32, depth=3, heads=4, act="gelu")


@pytest.mark.parametrize("cls_token", [True, False])
@pytest.mark.parametrize("layer", [-1, -2, -3])
def test_features_are_the_patch_grid_of_the_chosen_layer(cls_token, layer):
    enc = VisionEncoder(dataclasses.replace(CFG, cls_token=cls_token)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = enc(x, layer=layer, return_attention=True)
    assert out.features.shape == (2, 16, 32) and out.grid == (4, 4)
    assert len(out.attentions) == CFG.depth + layer + 1       # blocks after the chosen one do not run
    n = 16 + cls_token
    assert out.attentions[0].shape == (2, CFG.heads, n, n)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, CFG.heads, n))
    # return_attention computes the same features as the SDPA path.
    torch.testing.assert_close(enc(x, layer=layer).features, out.features, atol=1e-5, rtol=1e-5)


def test_penultimate_layer_is_the_last_block_input():
    enc = VisionEncoder(dataclasses.replace(CFG, post_norm=False)).eval()
    x = torch.randn(1, 3, 32, 32)
    penultimate = enc(x, layer=-2).features
    last = enc(x, layer=-1).features
    assert not torch.allclose(penultimate, last)
    with torch.no_grad():                                  # make the last block the identity
        for p in enc.blocks[-1].parameters():
            p.zero_()
    torch.testing.assert_close(enc(x, layer=-1).features, penultimate)


def test_position_embedding_interpolation_is_identity_at_the_original_resolution():
    enc = VisionEncoder(CFG)
    torch.testing.assert_close(enc.position_embedding(4, 4), enc.pos_embed)


def test_encoder_built_at_one_resolution_runs_at_a_larger_one():
    enc = VisionEncoder(CFG).eval()
    out = enc(torch.randn(2, 3, 48, 48))                    # 32 px model at 48 px: 6 x 6 patches
    assert out.features.shape == (2, 36, 32) and out.grid == (6, 6)
    pos = enc.position_embedding(6, 6)
    assert pos.shape == (1 + 36, 32)
    torch.testing.assert_close(pos[0], enc.pos_embed[0])   # CLS position is not interpolated


def test_patchify_is_batch_independent_and_uses_every_pixel():
    enc = VisionEncoder(CFG).eval()
    x = torch.randn(2, 3, 32, 32)
    a = enc(x).features
    y = x.clone()
    y[1, :, -1, -1] += 1.0                                  # one pixel in the last patch of sample 1
    b = enc(y).features
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


@pytest.mark.parametrize("bad, message", [
    (torch.randn(3, 32, 32), "batch, 3, height, width"),
    (torch.randn(1, 1, 32, 32), "batch, 3, height, width"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating point"),
    (torch.randn(1, 3, 30, 32), "multiple of the patch size"),
])
def test_bad_pixels_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        VisionEncoder(CFG)(bad)


@pytest.mark.parametrize("n", [65, 300])       # below and above the CPU math/flash switch
@pytest.mark.parametrize("causal", [False, True])
def test_attention_kernel_choice_keeps_the_result(n, causal):
    """`mm1lab.nn.attention` in bf16 (math kernel for short sequences on CPU, flash for long) agrees with fp32 SDPA."""
    from mm1lab.nn import attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, n, 16, generator=g)
    k, v = (torch.randn(2, 2, n, 16, generator=g) for _ in range(2))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal, enable_gqa=True)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(attention(q, k, v, causal=causal, enable_gqa=True), ref)


@pytest.mark.parametrize("autocast", [False, True])
def test_short_low_precision_attention_on_cpu_takes_the_math_kernel(autocast):
    """The kernel switch holds under autocast too, where q arrives in fp32 but SDPA runs in bf16."""
    from torch.profiler import profile

    from mm1lab.nn import attention

    q, k, v = (torch.randn(2, 4, 65, 16) for _ in range(3))
    if not autocast:
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with profile() as prof, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        attention(q, k, v, causal=True)
    ops = {event.key for event in prof.key_averages()}
    assert not any("flash" in op for op in ops), ops
    assert any("math" in op for op in ops), ops
