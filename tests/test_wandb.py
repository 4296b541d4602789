"""W&B tracking, offline and for real: a tiny run's offline W&B log holds exactly the records of its metrics.jsonl,
and a run resumed in a new process logs to the same W&B run."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from test_train_loop import tiny_run
from test_train_resume import run_cli

from mm1lab.train import read_metrics, train
from mm1lab.train.tracking import flatten, wandb_run_id

wandb = pytest.importorskip("wandb", reason="wandb is optional (pip install -e '.[wandb]'); track.wandb needs it")
from wandb.proto import wandb_internal_pb2  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path, monkeypatch, one_thread):
    """W&B's own files inside tmp_path, no login, no network; console capture, system stats and the environment
    scan (git, code, pip freeze) off, since they only cost time here."""
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME", "MM1LAB_FAULT"):
        monkeypatch.delenv(key, raising=False)
    for key, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / sub))
    for key, value in (("WANDB_CONSOLE", "off"), ("WANDB_SILENT", "true"), ("WANDB_DISABLE_GIT", "true"),
                       ("WANDB_DISABLE_CODE", "true"), ("WANDB__DISABLE_STATS", "true"),
                       ("WANDB__DISABLE_META", "true"), ("WANDB__SAVE_REQUIREMENTS", "false")):
        monkeypatch.setenv(key, value)


def read_wandb_log(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of an offline `run-<id>.wandb` file.

    wandb 0.31 has no Python reader, so this reads its framing: a 7-byte header (':W&B', magic 0xBEE1, version 0),
    then LevelDB log blocks of 32 KiB (https://github.com/google/leveldb/blob/main/doc/log_format.md) whose
    chunks (crc32, length, type: full/first/middle/last) carry serialized `wandb_internal_pb2.Record`s.
    """
    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):   # block trailer or zero padding: skip to the next block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at byte {pos}"
        pending, pos = pending + chunk, pos + 7 + length
        if kind in (1, 4):   # a full record, or the last chunk of a split one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records) -> list[dict]:
    """Each logged step as a dict (W&B's own keys start with '_': _step, _runtime, _timestamp)."""
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return sorted(rows, key=lambda row: row["_step"])


def offline_runs(run_dir: Path) -> list[tuple[str, list]]:
    """(run id, records) of every offline W&B run folder under run_dir/wandb, oldest first."""
    wandb.teardown()   # run.finish() returns before wandb-core has closed the log; this waits for it
    runs = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        runs.append((log.stem.removeprefix("run-"), read_wandb_log(log)))
    return runs


def as_logged(record: dict) -> dict:
    """A metrics.jsonl record as the tracker hands it to W&B: flattened a/b keys, without "step"."""
    return {k: v for k, v in flatten(record).items() if k != "step"}


def test_offline_run_holds_the_metrics_jsonl_records(tmp_path):
    run_dir = tmp_path / "run"
    result = train(tiny_run(run_dir, steps=4, track=dict(wandb=True)))
    assert result.status == "finished"
    assert not list((tmp_path / "wandb-home" / "dir").glob("**/*.wandb"))   # the run dir holds the run, not WANDB_DIR
    ((run_id, records),) = offline_runs(run_dir)
    assert run_id == (run_dir / "wandb" / "run_id").read_text().strip()
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name) == (run_id, "mm1lab", "t")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["steps"] == 4 and config["track"]["wandb_mode"] == "offline"
    rows, logged = read_metrics(run_dir), history(records)
    assert [h["_step"] for h in logged] == [r["step"] for r in rows] == [1, 2, 3, 4]
    for h, r in zip(logged, rows):   # every value, bit for bit (JSON floats round-trip exactly)
        assert {k: v for k, v in h.items() if not k.startswith("_")} == as_logged(r)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]


def test_resumed_run_in_a_new_process_logs_to_the_same_wandb_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = tiny_run(run_dir, steps=6, checkpoint=dict(every=10), track=dict(wandb=True))
    monkeypatch.setenv("MM1LAB_FAULT", "sigint@train:3")   # Ctrl-C after step 3: checkpoint, close W&B, stop
    assert train(cfg).status == "interrupted"
    monkeypatch.delenv("MM1LAB_FAULT")
    # Another process with another hash salt: the old id, hash(run_dir), changed here and started a second run.
    monkeypatch.setenv("PYTHONHASHSEED", str(int(os.environ.get("PYTHONHASHSEED", "0") or 0) + 1))
    resumed = run_cli(cfg, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    (first_id, first), (second_id, second) = offline_runs(run_dir)
    assert first_id == second_id, "the resumed run started a new W&B run instead of continuing its own"
    assert first_id == (run_dir / "wandb" / "run_id").read_text().strip()
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [h["_step"] for h in history(first)] == [1, 2, 3]
    assert [h["_step"] for h in history(second)] == [4, 5, 6]
    assert [h["loss"] for h in history(first) + history(second)] == [r["loss"] for r in rows]


def test_run_id_is_kept_for_a_resume_and_fresh_for_a_new_start(tmp_path):
    first = wandb_run_id(tmp_path, "lr=0.001,connector=c/abstractor", resuming=False)
    assert first.startswith("lr-0.001-connector-c-abstractor-")   # W&B refuses , / = in ids
    assert wandb_run_id(tmp_path, "ignored on resume", resuming=True) == first
    fresh = wandb_run_id(tmp_path, "lr=0.001,connector=c/abstractor", resuming=False)
    assert fresh != first and wandb_run_id(tmp_path, "x", resuming=True) == fresh
    assert wandb_run_id(tmp_path / "never-tracked", "x", resuming=True).startswith("x-")   # resumed, no id yet
