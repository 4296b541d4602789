"""MoE FFN: exact top-k routing, dropless dispatch, auxiliary losses, equivalence with a per-token loop."""

from __future__ import annotations

import torch

from mm1lab import MoEConfig
from mm1lab.moe import MoE

CFG = MoEConfig(num_experts=4, top_k=2, every=1)


def reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The definition, token by token: sum over the chosen experts of weight * expert(token)."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = moe.router(tokens).float().softmax(-1)
    w, e = probs.topk(moe.cfg.top_k, -1)
    w = w / w.sum(-1, keepdim=True)
    out = torch.stack([sum(w[t, j] * moe.experts[int(e[t, j])](tokens[t]) for j in range(moe.cfg.top_k))
                       for t in range(tokens.shape[0])])
    return out.reshape(x.shape)


def test_dispatch_equals_the_per_token_definition():
    moe = MoE(16, 32, CFG)
    x = torch.randn(2, 7, 16)
    y, info = moe(x)
    torch.testing.assert_close(y, reference(moe, x), atol=1e-5, rtol=1e-5)


def test_every_token_reaches_exactly_top_k_distinct_experts_and_none_is_dropped():
    moe = MoE(16, 32, CFG)
    x = torch.randn(3, 11, 16)
    _, info = moe(x)
    t = 3 * 11
    assert info.experts.shape == (t, 2)
    assert (info.experts[:, 0] != info.experts[:, 1]).all()
    assert int(info.counts.sum()) == t * CFG.top_k                  # dropless: all t*k slots processed
    torch.testing.assert_close(info.weights.sum(-1), torch.ones(t))
    expected = torch.bincount(info.experts.flatten(), minlength=CFG.num_experts)
    assert torch.equal(info.counts, expected)


def test_each_token_output_depends_only_on_itself():
    moe = MoE(16, 32, CFG)
    x = torch.randn(1, 6, 16)
    y, _ = moe(x)
    x2 = x.clone()
    x2[0, 3] = torch.randn(16)
    y2, _ = moe(x2)
    keep = [0, 1, 2, 4, 5]
    torch.testing.assert_close(y[0, keep], y2[0, keep])


def test_balance_loss_is_at_its_minimum_for_a_uniform_router_and_higher_when_skewed():
    moe = MoE(16, 32, CFG)
    x = torch.randn(4, 8, 16)
    with torch.no_grad():
        moe.router.weight.zero_()                                   # uniform probabilities
    _, uniform = moe(x)
    torch.testing.assert_close(uniform.balance_loss, torch.tensor(1.0))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 5.0                                   # every token prefers expert 0
    _, skewed = moe(x.abs())
    assert skewed.balance_loss > 1.5


def test_z_loss_is_non_negative_and_zero_only_when_logsumexp_is_zero():
    moe = MoE(16, 32, CFG)
    _, info = moe(torch.randn(2, 5, 16))
    assert info.z_loss >= 0
    with torch.no_grad():
        moe.router.weight.zero_()
    _, uniform = moe(torch.randn(2, 5, 16))
    torch.testing.assert_close(uniform.z_loss, torch.log(torch.tensor(4.0)) ** 2)


def test_gradients_reach_router_and_used_experts():
    moe = MoE(16, 32, CFG)
    y, info = moe(torch.randn(2, 9, 16))
    (y.square().mean() + 0.01 * info.balance_loss + 0.001 * info.z_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(moe.experts):
        got = expert.up.weight.grad is not None and expert.up.weight.grad.abs().sum() > 0
        assert got == bool(info.counts[e] > 0)
