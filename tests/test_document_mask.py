"""Document-masked packing: each document of a packed row has the logits (and loss) it has alone.

The SDPA path (CPU) and the FlexAttention path (CUDA; here FlexAttention's eager reference on CPU) give the same
numbers; tests/test_cuda.py checks the compiled kernel on a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_config

from mm1lab.lm import document_positions
from mm1lab.model import MM1Model
from mm1lab.nn import attention, document_mask


def documents(cfg, lengths=(9, 14, 6), images=(1, 0, 2)):
    """Token rows of documents with images: (ids, image tensor or None) each, seeded."""
    g = torch.Generator().manual_seed(1)
    docs = []
    for n, m in zip(lengths, images):
        text = torch.randint(8, cfg.lm.vocab_size, (n,), generator=g).tolist()
        ids = [cfg.bos_token_id] + [cfg.image_token_id] * (cfg.image_tokens * m) + text
        pix = torch.randn(m, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) if m else None
        docs.append((torch.tensor(ids), pix))
    return docs


def pack(docs, pad_to: int, pad_id: int):
    """One packed row (1, n) with segment ids 1, 2, ... and padding 0, and the images in reading order."""
    ids = torch.cat([d for d, _ in docs])
    seg = torch.cat([torch.full((len(d),), i + 1) for i, (d, _) in enumerate(docs)])
    pad = pad_to - len(ids)
    ids = torch.cat([ids, torch.full((pad,), pad_id)])[None]
    seg = torch.cat([seg, torch.zeros(pad, dtype=torch.long)])[None]
    pix = [p for _, p in docs if p is not None]
    return ids, seg, torch.cat(pix) if pix else None


@pytest.mark.parametrize("moe", [None, dict(num_experts=4, top_k=2)])
def test_each_packed_document_has_the_logits_it_has_alone(moe):
    cfg = tiny_config(connector="c-abstractor", moe=moe)
    model = MM1Model(cfg).eval()
    docs = documents(cfg)
    ids, seg, pix = pack(docs, 48, cfg.pad_token_id)
    with torch.no_grad():
        packed = model(ids, pix, attention_mask=seg > 0, segment_ids=seg).logits[0]
        at = 0
        for d, p in docs:
            alone = model(d[None], p).logits[0]
            assert torch.allclose(packed[at:at + len(d)], alone, atol=1e-5), (at, len(d))
            at += len(d)
        # without the mask the second document sees the first: the logits differ (the test can fail)
        leaky = model(ids, pix, attention_mask=seg > 0).logits[0]
    assert not torch.allclose(leaky[len(docs[0][0]):at], packed[len(docs[0][0]):at], atol=1e-3)


def test_packed_loss_is_the_token_weighted_loss_of_the_documents_alone():
    cfg = tiny_config()
    model = MM1Model(cfg)
    docs = documents(cfg, lengths=(11, 7), images=(1, 1))
    ids, seg, pix = pack(docs, 30, cfg.pad_token_id)
    labels = ids.masked_fill(seg == 0, -100)
    packed = model(ids, pix, labels=labels, attention_mask=seg > 0, segment_ids=seg)
    sums = [model(d[None], p, labels=d[None]).token_loss.sum() for d, p in docs]
    # a packed row's last token of one document predicts the next document's first: that target is the next
    # document's <bos>, which the packed row counts and a document alone has no position for
    counted = int(packed.token_counted.sum())
    boundary = packed.token_loss[0, len(docs[0][0]) - 1]
    assert torch.allclose(packed.token_loss.sum() - boundary, sum(sums), atol=1e-4)
    assert counted == sum(len(d) - 1 for d, _ in docs) - cfg.image_tokens * 2 + 1


def test_positions_restart_at_every_document():
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert document_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


def test_flex_block_mask_equals_the_sdpa_mask():
    seg = torch.tensor([[1] * 5 + [2] * 7 + [3] * 3 + [0], [1] * 16])
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    dense = attention(q, k, v, mask=document_mask(seg, flex=False), enable_gqa=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # eager flex warns that it is the unfused reference
        flex = attention(q, k, v, mask=document_mask(seg, flex=True), enable_gqa=True)
    assert torch.allclose(dense, flex, atol=1e-5)


def test_generation_refuses_segment_ids_with_a_cache():
    from mm1lab.lm import KVCache

    cfg = tiny_config()
    model = MM1Model(cfg)
    cache = KVCache(cfg.lm, batch=1, max_len=16)
    with pytest.raises(ValueError, match="segment_ids"):
        model(torch.tensor([[1, 9, 10]]), segment_ids=torch.ones(1, 3, dtype=torch.long), cache=cache)
