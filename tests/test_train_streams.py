"""Per-stream losses: a packed row's tokens count for the stream of the sample they belong to."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mm1lab.train.objectives import stream_losses


def test_packed_rows_split_their_loss_by_segment_stream():
    # Row 0 packs a caption (positions 0-2) and a text document (3-4), then padding; row 1 is one sft sample.
    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    # token_loss[i] is the loss of predicting token i + 1, so it belongs to token i + 1's segment.
    token_loss = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 0.0], [6.0, 7.0, 8.0, 0.0, 0.0, 0.0]])
    counted = token_loss > 0
    counted[0, 2] = False                      # the text document's <bos> is not predicted across documents
    out = SimpleNamespace(token_loss=token_loss, token_counted=counted)
    mb = dict(stream=["caption+text", "sft"], segment_ids=segment_ids)
    stats = stream_losses(mb, out)
    get = lambda name: (stats[f"stream_sum/{name}"], stats[f"stream_tok/{name}"])
    assert get("caption") == (1.0 + 2.0, 2)    # predicting tokens 1 and 2 of the caption
    assert get("text") == (4.0, 1)             # predicting token 4 (position 3's loss); position 4 predicts padding
    assert get("sft") == (6.0 + 7.0 + 8.0, 3)
    assert get("interleaved") == (0.0, 0)


def test_unpacked_rows_without_segment_ids_count_whole_rows():
    out = SimpleNamespace(token_loss=torch.tensor([[1.0, 2.0, 0.0]]), token_counted=torch.tensor([[True, True, False]]))
    stats = stream_losses(dict(stream=["dense"]), out)
    assert (stats["stream_sum/dense"], stats["stream_tok/dense"]) == (3.0, 2)
