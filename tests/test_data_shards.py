"""Sharded reading of file corpora: sources (braces, globs, fsspec URLs, pipes), files per shard, the shuffle buffer,
exact resume, and 2 ranks x 2 DataLoader workers reading every record once, each from its own files."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from mm1lab.data.formats import caption_stream, iter_samples, text_stream, write_caption_shards, write_text_jsonl
from mm1lab.data.mixture import MixtureDataset
from mm1lab.data.records import RecordStream
from mm1lab.data.sources import braces, expand
from mm1lab.train.data import GlobalBatches, RankMicroBatches


def caption_shards(root: Path, files: int = 12, per_file: int = 5) -> list[Path]:
    """`files` caption tars of `per_file` samples; sample n's caption is "caption n"."""
    items = ((Image.new("RGB", (8, 8), (n % 255, 0, 0)), f"caption {n}", {}) for n in range(files * per_file))
    return write_caption_shards(items, root, shard_size=per_file)


def text_files(root: Path, files: int = 6, per_file: int = 7) -> list[Path]:
    return [write_text_jsonl([f"doc {f * per_file + i}" for i in range(per_file)], root / f"t{f:02d}.jsonl")
            for f in range(files)]


def ids(stream: RecordStream, shard: int, num_shards: int, n: int | None = None, **kw) -> list[str]:
    it = stream.iterate(shard, num_shards, seed="7", **kw)
    return [thunk().text for thunk, _ in itertools.islice(it, n)]


# ---- sources ---------------------------------------------------------------------------------------------------
def test_brace_ranges_and_lists_expand_like_webdataset():
    assert braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert braces("{a,b}/{8..10}") == ["a/8", "a/9", "a/10", "b/8", "b/9", "b/10"]
    assert braces("pipe:curl -s https://h/x-{0..1}.tar") == ["pipe:curl -s https://h/x-0.tar",
                                                            "pipe:curl -s https://h/x-1.tar"]
    assert braces("literal{x}.tar") == ["literal{x}.tar"]


def test_sources_expand_folders_globs_and_urls(tmp_path):
    shards = caption_shards(tmp_path / "c", files=3)
    names = [str(p) for p in shards]
    assert expand(tmp_path / "c", "*.tar") == names
    assert expand(str(tmp_path / "c" / "*.tar"), "*.tar") == names
    assert expand(str(tmp_path / "c" / "{00000..00002}.tar"), "*.tar") == names
    assert expand(["s3://bucket/a.tar", "pipe:cat x"], "*.tar") == ["s3://bucket/a.tar", "pipe:cat x"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand(str(tmp_path / "nothing-*.tar"), "*.tar")


def test_pipes_and_fsspec_urls_read_what_the_file_holds(tmp_path):
    import fsspec

    shard = caption_shards(tmp_path, files=1)[0]
    local = [s.text for s in iter_samples(caption_stream(shard))]
    piped = [s.text for s in iter_samples(caption_stream(f"pipe:cat {shard}"))]
    fs = fsspec.filesystem("memory")
    fs.pipe("/mm1lab-test/shard-0.tar", shard.read_bytes())
    remote = [s.text for s in iter_samples(caption_stream("memory://mm1lab-test/shard-*.tar"))]
    assert local == piped == remote and len(local) == 5


def test_a_failing_source_is_one_counted_skip(tmp_path):
    from mm1lab.data.sample import Skips

    write_text_jsonl(["fine"], tmp_path / "ok.jsonl")
    skips = Skips()
    stream = text_stream([str(tmp_path / "ok.jsonl"), "pipe:echo oops >&2; exit 3", str(tmp_path / "gone.jsonl")])
    assert [s.text for s in iter_samples(stream, skips=skips)] == ["<bos>fine<eos>"]
    assert skips.counts == Counter({"unreadable_source": 2})
    assert any("status 3: oops" in e for e in skips.examples)


def test_a_gzipped_jsonl_reads_like_the_plain_one(tmp_path):
    import gzip

    plain = write_text_jsonl(["one", "two"], tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert [s.text for s in iter_samples(text_stream(tmp_path / "t.jsonl.gz"))] == \
        [s.text for s in iter_samples(text_stream(plain))]


# ---- files per shard, shuffling, resume ---------------------------------------------------------------------------
@pytest.mark.parametrize("files, shards", [(12, 4), (12, 5), (3, 8)])
def test_shards_read_each_record_once_and_only_their_files(tmp_path, files, shards):
    stream = caption_stream(caption_shards(tmp_path, files=files))
    seen = {s: ids(stream, s, shards) for s in range(shards)}
    everything = sorted(itertools.chain(*seen.values()))
    assert everything == sorted(f"<bos><image>Caption: caption {n}<eos>" for n in range(files * 5))
    if files >= shards:   # each shard opens only its own files
        opened = [{f for f, _, _ in stream.assignment(s, shards, 0, "7")} for s in range(shards)]
        assert all(not (a & b) for a, b in itertools.combinations(opened, 2))


def test_file_order_and_samples_are_shuffled_per_epoch(tmp_path):
    stream = text_stream(text_files(tmp_path))
    written = [s.text for s in iter_samples(stream)]
    epochs = ids(stream, 0, 1, epochs=2)
    first, second = epochs[:42], epochs[42:]
    assert sorted(first) == sorted(second) == sorted(written)   # every epoch reads every record once
    assert written != first != second                            # in another file order each time
    buffered = ids(stream, 0, 1, epochs=1, shuffle_buffer=8)
    assert sorted(buffered) == sorted(first) and buffered != first   # the buffer shuffles within the order


@pytest.mark.parametrize("buffer", [0, 5, 50])
def test_a_resumed_shard_yields_what_the_uninterrupted_one_does(tmp_path, buffer):
    stream = text_stream(text_files(tmp_path))   # 42 records in 6 files; 2 shards of 3 files
    full = ids(stream, 1, 2, 70, shuffle_buffer=buffer, epochs=None)   # crosses epochs
    for cut in (1, 9, 23, 44):
        it = stream.iterate(1, 2, seed="7", shuffle_buffer=buffer, epochs=None)
        head = [thunk().text for thunk, _ in itertools.islice(it, cut)]
        _, position = next(it)   # the position after sample `cut` + 1, as a checkpoint would store it
        position = torch.load(roundtrip(position), weights_only=True)
        rest = stream.iterate(1, 2, position, seed="7", shuffle_buffer=buffer, epochs=None)
        assert head + [full[cut]] + [thunk().text for thunk, _ in itertools.islice(rest, 70 - cut - 1)] == full


def test_an_unreadable_stream_stops_an_endless_run_with_a_message(tmp_path):
    from mm1lab.data.sample import DataError, Skips

    stream = text_stream([str(tmp_path / "gone-1.jsonl"), str(tmp_path / "gone-2.jsonl")])
    skips = Skips()
    with pytest.raises(DataError, match="read no good record in epoch 0"):
        for thunk, _ in stream.iterate(0, 1, seed="7", epochs=None):
            skips.run(thunk)
    assert skips.counts == Counter({"unreadable_source": 2})


# ---- ranks x workers --------------------------------------------------------------------------------------------
def tag(items):
    """A collate function that keeps sample ids and where they were read (runs in the worker)."""
    info = get_worker_info()
    return {"ids": [s.id for s in items if not s.is_tally], "worker": info.id if info else 0,
            "skipped": sum((Counter(s.skipped) for s in items), Counter())}


def mixture(tmp_path, **kw) -> MixtureDataset:
    streams = {"caption": caption_stream(caption_shards(tmp_path / "c", files=16, per_file=3)),
               "text": text_stream(text_files(tmp_path / "t", files=8, per_file=4))}
    return MixtureDataset(streams, {"caption": 0.7, "text": 0.3}, seed=3, **kw)


def test_two_ranks_two_workers_read_every_file_record_once_each_from_its_own_files(tmp_path):
    ds = mixture(tmp_path, shuffle_buffer=4, epochs=1)
    seen, files_of = [], {}
    for rank in range(2):
        loader = DataLoader(RankMicroBatches(ds, tag, micro=2, num_shards=8, rank=rank, world=2, first=0, states={}),
                            batch_size=None, num_workers=2)
        for batch in loader:
            seen += batch["ids"]
            files_of.setdefault((rank, batch["worker"]), set()).update(i.rsplit(":", 1)[0] for i in batch["ids"])
    assert len(seen) == len(set(seen)) == 16 * 3 + 8 * 4          # no duplicates, nothing missing
    assert len(files_of) == 4
    assert all(not (a & b) for a, b in itertools.combinations(files_of.values(), 2))   # every file read by one


def global_batches(ds, *, micro, world, workers, steps=3, batch=16, state=None):
    """Sample ids of each global batch, read by `world` ranks (in this process) with `workers` each."""
    accum = batch // (micro * world)
    ranks = [GlobalBatches(ds, tag, micro=micro, accum=accum, rank=r, world=world, num_shards=16, workers=workers)
             for r in range(world)]
    for r in ranks:
        if state is not None:
            r.load_state_dict(state)
    out = []
    for _ in range(steps):
        out.append(sorted(i for r in ranks for mb in r.next_step() for i in mb["ids"]))
    return out, {"num_shards": 16, "samples": ranks[0].samples,
                 "shards": {k: v for r in ranks for k, v in r.state_dict()["shards"].items()}}


def test_global_batches_do_not_depend_on_ranks_workers_or_micro_batches(tmp_path):
    ds = mixture(tmp_path, shuffle_buffer=6, epochs=None)
    one, _ = global_batches(ds, micro=8, world=1, workers=0)
    assert global_batches(ds, micro=2, world=2, workers=2)[0] == one
    assert global_batches(ds, micro=4, world=1, workers=2)[0] == one
    # and resuming at a step boundary, with another split, continues the same sequence
    _, state = global_batches(ds, micro=8, world=1, workers=0, steps=2)
    state = torch.load(roundtrip(state), weights_only=True)
    assert global_batches(ds, micro=2, world=2, workers=2, steps=1, state=state)[0] == one[2:]


def test_shards_must_split_over_ranks_and_workers():
    from mm1lab.train.data import SyntheticSource

    with pytest.raises(ValueError, match="data.shards=12 must be a multiple of micro_batch_size x ranks x workers"):
        GlobalBatches(SyntheticSource.__new__(SyntheticSource), tag, micro=2, accum=1, world=2, workers=2,
                      num_shards=12)


def roundtrip(obj) -> io.BytesIO:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf

