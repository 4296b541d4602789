"""Connectors: shapes, regions, gradients, batch independence, and a few exact equivalences per connector."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mm1lab.config import CONNECTORS, ConfigError, ConnectorConfig
from mm1lab.connectors import CONNECTOR_REGISTRY, build_connector
from mm1lab.connectors.d_abstractor import splat_regions
from mm1lab.connectors.pixel_shuffle import space_to_depth
from mm1lab.connectors.registry import pooling_regions

D_VISION, D_LM, GRID, BATCH = 32, 48, 8, 2


def tiny(kind: str, **overrides) -> tuple[torch.nn.Module, int]:
    """A seeded tiny connector of `kind` and its number of output tokens."""
    torch.manual_seed(0)
    fields = dict(kind=kind, num_tokens=GRID * GRID if kind == "mlp" else 16, width=24, depth=1, layers=2,
                  heads=4, points=2)
    cfg = ConnectorConfig(**(fields | overrides))
    return build_connector(cfg, d_vision=D_VISION, d_lm=D_LM, grid=GRID), cfg.num_tokens


def patches(batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, GRID * GRID, D_VISION, generator=torch.Generator().manual_seed(seed))


def test_registry_matches_config():
    assert set(CONNECTOR_REGISTRY) == set(CONNECTORS)


def test_unknown_kind_lists_valid_names():
    cfg = ConnectorConfig()
    cfg.kind = "nope"              # bypasses __post_init__, which would reject it first
    with pytest.raises(ConfigError) as err:
        build_connector(cfg, d_vision=D_VISION, d_lm=D_LM, grid=GRID)
    assert "nope" in str(err.value) and all(name in str(err.value) for name in CONNECTORS)


@pytest.mark.parametrize("kind", CONNECTORS)
def test_shapes_and_regions(kind):
    conn, k = tiny(kind)
    x = patches()
    y = conn(x)
    assert y.shape == (BATCH, k, D_LM) and torch.isfinite(y).all()
    y_info, info = conn(x, return_attention=True)
    torch.testing.assert_close(y_info, y)          # the explicit path computes the same output
    assert info.regions.shape == (BATCH, k, GRID * GRID)
    assert (info.regions >= 0).all()
    torch.testing.assert_close(info.regions.sum(-1), torch.ones(BATCH, k))


@pytest.mark.parametrize("kind", CONNECTORS)
def test_gradients_reach_input_and_every_parameter(kind):
    conn, _ = tiny(kind)
    # Zero-initialised layers (D-Abstractor's offset and weight predictors) block the gradient of what feeds
    # them at exactly step 0; a small nudge to every parameter stands in for a few training steps.
    with torch.no_grad():
        for p in conn.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = patches().requires_grad_()
    y = conn(x)
    (y * torch.randn_like(y)).sum().backward()     # random weights so no gradient cancels by symmetry
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in conn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{kind}: no gradient reaches {name}"


@pytest.mark.parametrize("kind", CONNECTORS)
def test_batch_independence(kind):
    conn, _ = tiny(kind)
    x = patches()
    changed = x.clone()
    changed[1] = torch.randn_like(changed[1])
    with torch.no_grad():
        torch.testing.assert_close(conn(changed)[0], conn(x)[0])


def test_avgpool_regions_by_hand():
    regions = pooling_regions(4, 2, batch=1)[0]
    expected = torch.zeros(4, 16)
    for token, patch_ids in enumerate([(0, 1, 4, 5), (2, 3, 6, 7), (8, 9, 12, 13), (10, 11, 14, 15)]):
        expected[token, list(patch_ids)] = 0.25
    torch.testing.assert_close(regions, expected)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="heads"):
        tiny("attnpool", heads=5)
    with pytest.raises(ConfigError, match="heads"):
        tiny("d-abstractor", heads=5)


def test_attnpool_regions_are_head_mean():
    conn, _ = tiny("attnpool")
    _, info = conn(patches(), return_attention=True)
    assert info.extras["attention"].shape == (BATCH, 4, 16, GRID * GRID)
    torch.testing.assert_close(info.regions, info.extras["attention"].mean(1))


def test_d_abstractor_zero_offsets_sample_at_reference_points():
    conn, k = tiny("d-abstractor")
    with torch.no_grad():
        for layer in conn.layers:
            layer.cross.to_offsets.bias.zero_()    # weights are already zero at init
    _, info = conn(patches(), return_attention=True)
    points = info.extras["sampling_points"]
    assert points.shape == (BATCH, k, 4, 2, 2) and info.extras["sampling_weights"].shape == (BATCH, k, 4, 2)
    centres = (torch.arange(4) + 0.5) / 4
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    reference = rearrange(torch.stack([xs, ys], -1), "i j xy -> (i j) xy")
    torch.testing.assert_close(points, reference[None, :, None, None].expand_as(points))
    # A cell centre lies midway between four patch centres, so each token reads its 2x2 block equally.
    torch.testing.assert_close(info.regions, pooling_regions(GRID, 4, batch=BATCH))


def test_deformable_attention_matches_transformers():
    """Our plain-PyTorch deformable cross-attention equals transformers' Deformable DETR one, weights shared."""
    detr = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")
    from mm1lab.connectors.d_abstractor import DeformableCrossAttention

    torch.manual_seed(0)
    dim, heads, points, k = 32, 4, 3, 16
    theirs = detr.DeformableDetrMultiscaleDeformableAttention(
        detr.DeformableDetrConfig(d_model=dim, num_feature_levels=1), num_heads=heads, n_points=points)
    ours = DeformableCrossAttention(dim, heads=heads, points=points, grid=GRID)
    with torch.no_grad():
        for name, linear in [("to_v", theirs.value_proj), ("to_offsets", theirs.sampling_offsets),
                             ("to_weights", theirs.attention_weights), ("to_out", theirs.output_proj)]:
            for p in linear.parameters():
                p.normal_()                        # random, so offsets and weights are far from their init
            getattr(ours, name).load_state_dict(linear.state_dict())
    query, value, reference = torch.randn(BATCH, k, dim), torch.randn(BATCH, GRID * GRID, dim), torch.rand(k, 2)
    with torch.no_grad():
        expected, expected_weights = theirs(
            query, encoder_hidden_states=value, reference_points=reference[None, :, None].expand(BATCH, -1, -1, -1),
            spatial_shapes=torch.tensor([[GRID, GRID]]), spatial_shapes_list=[(GRID, GRID)],
            level_start_index=torch.tensor([0]))
        out, _, weights = ours(query, value, reference)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights[:, :, :, 0])      # drop their single level axis


def test_splat_regions_matches_grid_sample():
    """Sampling a one-hot map of every patch with grid_sample gives exactly the splatted weights."""
    torch.manual_seed(0)
    points = torch.rand(BATCH, 5, 3, 4, 2) * 1.2 - 0.1            # some points near or past the edges
    weights = torch.rand(BATCH, 5, 3, 4).softmax(-1)
    one_hot = rearrange(torch.eye(GRID * GRID), "n (y x) -> n y x", y=GRID)
    one_hot = one_hot.expand(BATCH, -1, -1, -1)                     # channel i is patch i
    grid = rearrange(2 * points - 1, "b k h p xy -> b k (h p) xy")
    sampled = F.grid_sample(one_hot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    expected = torch.einsum("bnkq,bkq->bkn", sampled, rearrange(weights, "b k h p -> b k (h p)"))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(splat_regions(points, weights, GRID), expected)


def test_pixel_shuffle_is_space_to_depth():
    conn, k = tiny("pixel-shuffle")
    scale = GRID // 4
    assert conn.proj.weight.shape == (D_LM, D_VISION * scale * scale)
    x = patches()
    blocks = space_to_depth(x, grid=GRID, scale=scale)
    # The same rearrangement written as index arithmetic.
    for token in range(k):
        i, j = divmod(token, 4)
        ids = [(i * scale + s1) * GRID + j * scale + s2 for s1 in range(scale) for s2 in range(scale)]
        torch.testing.assert_close(blocks[:, token], x[:, ids].flatten(1))
    # With an identity projection the connector returns the rearranged patches themselves.
    width = D_VISION * scale * scale
    conn = build_connector(ConnectorConfig(kind="pixel-shuffle", num_tokens=k), d_vision=D_VISION, d_lm=width,
                           grid=GRID)
    with torch.no_grad():
        conn.proj.weight.copy_(torch.eye(width))
    torch.testing.assert_close(conn(x), blocks)


def test_pixel_shuffle_rejects_indivisible_grid():
    with pytest.raises(ConfigError, match="num_tokens"):
        tiny("pixel-shuffle", num_tokens=9)
