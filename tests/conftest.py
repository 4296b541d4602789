"""Shared fixtures: tiny, seeded configs so every test runs in well under a second on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from mm1lab import MM1Config


def tiny_config(connector: str = "avgpool", moe: dict | None = None, **lm) -> MM1Config:
    """A very small MM1 (32 px, 4 x 4 patches, 4 image tokens) for fast unit tests."""
    num_tokens = 16 if connector == "mlp" else 4
    return MM1Config.from_dict(dict(
        name="test",
        vision=dict(image_size=32, patch_size=8, width=32, depth=2, heads=4, act="gelu"),
        connector=dict(kind=connector, num_tokens=num_tokens, width=32, depth=1, layers=1, heads=4, points=2),
        lm=dict(vocab_size=64, width=32, depth=2, heads=4, kv_heads=2, ffn_dim=64, max_seq_len=128, moe=moe, **lm),
    ))


@pytest.fixture
def one_thread():
    """One intra-op thread: steadier timings on the shared 2-core machine and bit-stable reductions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
