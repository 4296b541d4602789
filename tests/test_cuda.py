"""CUDA-only checks: FlexAttention's compiled document-mask kernel, packed documents on the GPU, and compiled vs
eager training losses. Without a CUDA device every test here skips and says why; the CPU equivalents are in
tests/test_document_mask.py (SDPA and FlexAttention's eager reference) and tests/test_train_loop.py.

Not yet run on a GPU (no device was lent while they were written): issue 16's GPU measurement runs them first.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from test_document_mask import documents, pack

from mm1lab.model import MM1Model
from mm1lab.nn import attention, document_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (FlexAttention's compiled kernel, torch.compile on the "
                                       "device); the CPU paths are covered by test_document_mask.py")


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """No TF32, so fp32 comparisons mean fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_compiled_flex_block_mask_equals_the_sdpa_mask_on_cuda():
    g = torch.Generator().manual_seed(0)
    lengths = [100, 300, 37, 75]                                          # 512 tokens, blocks cut mid-document
    seg = torch.cat([torch.full((n,), i + 1) for i, n in enumerate(lengths)])[None].repeat(2, 1).cuda()
    q, k, v = (torch.randn(2, h, 512, 64, generator=g).cuda() for h in (8, 2, 2))
    dense = attention(q, k, v, mask=document_mask(seg, flex=False), enable_gqa=True)
    flex = attention(q, k, v, mask=document_mask(seg, flex=True), enable_gqa=True)
    assert torch.allclose(dense, flex, atol=1e-4)


def test_each_packed_document_has_the_logits_it_has_alone_on_cuda():
    cfg = tiny_config(connector="c-abstractor")
    model = MM1Model(cfg).cuda().eval()
    docs = documents(cfg)
    ids, seg, pix = (t.cuda() for t in pack(docs, 48, cfg.pad_token_id))   # packed on the CPU, run on the GPU
    with torch.no_grad():
        packed = model(ids, pix, attention_mask=seg > 0, segment_ids=seg).logits[0]
        at = 0
        for d, p in docs:
            alone = model(d[None].cuda(), p.cuda() if p is not None else None).logits[0]
            assert torch.allclose(packed[at:at + len(d)], alone, atol=1e-4), (at, len(d))
            at += len(d)


def _losses(compile: bool, steps: int = 5) -> list[float]:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MM1Model(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = torch.compile(model) if compile else model
    docs = documents(cfg, lengths=(20, 30), images=(1, 1))
    ids, seg, pix = pack(docs, 64, cfg.pad_token_id)
    ids, seg, pix = ids.cuda(), seg.cuda(), pix.cuda()
    labels = ids.masked_fill(seg == 0, -100)
    out = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = run(ids, pix, labels=labels, attention_mask=seg > 0, segment_ids=seg).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def test_compiled_and_eager_bf16_losses_agree_on_cuda():
    assert _losses(compile=True) == pytest.approx(_losses(compile=False), rel=1e-2)
