"""The mixture: weights, determinism, resumption, and sharding over ranks and DataLoader workers."""

import functools
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from mm1lab.config import MM1Config
from mm1lab.data.collate import Collator
from mm1lab.data.formats import text_stream
from mm1lab.data.mixture import IndexedStream, LoaderTracker, MixtureDataset
from mm1lab.data.sample import Sample
from mm1lab.data.streams import mm1_weights, shapeworld_mixture
from mm1lab.data.tokenizer import load_tokenizer


def make(name, i):
    return Sample.pretrain(name, f"{name} number {i}", id=f"{name}-{i}")


def toy(lengths=None, weights=None, **kw):
    lengths = lengths or {"caption": None, "interleaved": None, "text": None}
    streams = {n: IndexedStream(functools.partial(make, n), length) for n, length in lengths.items()}
    return MixtureDataset(streams, weights or {n: 1.0 for n in lengths}, **kw)


def take(dataset, n):
    out = []
    for sample in dataset:
        out.append(sample.id)
        if len(out) == n:
            break
    return out


def test_weights_and_determinism():
    ds = toy(weights={"caption": 45, "interleaved": 45, "text": 10}, seed=3)
    ids = take(ds, 4000)
    counts = Counter(i.split("-")[0] for i in ids)
    assert abs(counts["text"] / 4000 - 0.10) < 0.02 and abs(counts["caption"] / 4000 - 0.45) < 0.03
    assert take(toy(weights={"caption": 45, "interleaved": 45, "text": 10}, seed=3), 4000) == ids
    assert take(toy(weights={"caption": 45, "interleaved": 45, "text": 10}, seed=4), 100) != ids[:100]
    w = mm1_weights(dense_share=0.2)
    assert w == {"caption": 36.0, "dense": 9.0, "interleaved": 45.0, "text": 10.0}


def test_resume_equals_uninterrupted():
    full = take(toy(seed=1), 60)
    first = toy(seed=1)
    head = take(first, 25)
    state = first.state_dict()
    resumed = toy(seed=1)
    resumed.load_state_dict(state)
    assert head + take(resumed, 35) == full
    assert sum(state["shards"][0]["counts"].values()) == 25


@pytest.mark.parametrize("world_size, workers", [(1, 2), (2, 2), (3, 1)])
def test_sharding_has_no_duplicates_and_no_gaps(world_size, workers, tmp_path):
    lines = "".join(f'{{"text": "line {i}"}}\n' for i in range(37))
    (tmp_path / "t.jsonl").write_text(lines)
    seen = []
    for rank in range(world_size):
        ds = toy({"caption": 23, "interleaved": 41}, rank=rank, world_size=world_size)
        ds.streams["text"], ds.weights["text"] = text_stream(tmp_path / "t.jsonl"), 1.0
        loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=lambda s: s)
        seen += [s.id if s.stream != "text" else "text-" + s.id.rsplit(":", 1)[1] for s in loader]
    expected = ([f"caption-{i}" for i in range(23)] + [f"interleaved-{i}" for i in range(41)]
                + [f"text-{line}" for line in range(1, 38)])
    assert len(seen) == len(set(seen)) and sorted(seen) == sorted(expected)   # no duplicates, no gaps


def test_dataloader_workers_report_skips_and_resume(tmp_path):
    lines = [f'{{"text": "document {i}"}}' for i in range(40)]
    lines[5], lines[17], lines[30] = "{oops", '{"text": ""}', '{"body": 1}'
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    cfg, tok = MM1Config.preset("tiny"), load_tokenizer()

    def loader(state=None):
        ds = MixtureDataset({"text": text_stream(tmp_path / "t.jsonl")}, {"text": 1.0})
        if state is not None:
            ds.load_state_dict(state)
        return DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collator(tok, cfg))

    def texts(batch):
        return [tok.decode(row[mask].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]

    tracker, consumed = LoaderTracker(), []
    for step, batch in enumerate(loader()):
        tracker.update(batch)
        consumed += texts(batch)
        if step == 3:
            break
    state = tracker.state_dict()
    rest = LoaderTracker()
    for batch in loader(state):
        rest.update(batch)
        consumed += texts(batch)
    assert sorted(consumed) == sorted(f"document {i}" for i in range(40) if i not in (5, 17, 30))
    total = tracker.skipped + rest.skipped
    assert total == Counter({"bad_json": 1, "empty_text": 1, "bad_record": 1})


def test_shapeworld_mixture_batches(tmp_path):
    cfg, tok = MM1Config.preset("tiny"), load_tokenizer()
    ds = shapeworld_mixture("easy", 64, seed=0, cache_dir=tmp_path)
    batch = next(iter(DataLoader(ds, batch_size=8, num_workers=0, collate_fn=Collator(tok, cfg))))
    assert batch["input_ids"].shape[0] == 8 and batch["images"].shape[1:] == (3, 64, 64)
    assert set(batch["stream_counts"]) <= {"caption", "dense", "interleaved", "text"}


def test_unexpected_errors_say_where(tmp_path):
    from mm1lab.data.mixture import RecordStream
    from mm1lab.data.sample import DataError

    def decode(raw):
        raise KeyError("boom")

    records = lambda: iter([("file.jsonl:1", "{}"), ("file.jsonl:2", "{}")])
    ds = MixtureDataset({"text": RecordStream(records, decode)})
    with pytest.raises(DataError, match=r"file.jsonl:1: KeyError"):
        next(iter(ds))
    broken = MixtureDataset({"x": IndexedStream(lambda i: 1 / 0)})
    with pytest.raises(DataError, match="item 0: ZeroDivisionError"):
        next(iter(broken))
