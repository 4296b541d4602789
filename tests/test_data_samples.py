"""`mm1lab data samples` regenerates data_samples/ bit for bit, and the committed copy is up to date."""

import argparse
import filecmp

from mm1lab.data.cli import add_data_commands, main
from mm1lab.data.tokenizer import default_samples_dir


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_samples_twice_are_identical_and_match_the_committed_copy(tmp_path):
    main(["samples", str(tmp_path / "a")])
    main(["samples", str(tmp_path / "b")])
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b
    assert sum(len(v) for v in a.values()) < 3_000_000   # "a few MB at most"
    committed = tree(default_samples_dir())
    stale = sorted(k for k in a if committed.get(k) != a[k])
    assert not stale, f"data_samples/ is out of date ({stale[:3]}...); run `mm1lab data samples data_samples/`"
    assert filecmp.cmp(tmp_path / "a" / "tokenizer.json", default_samples_dir() / "tokenizer.json", shallow=False)


def test_cli_wiring():
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "samples", "out/"])
    assert args.out_dir == "out/" and callable(args.func)
    args = parser.parse_args(["data", "bench", "--workers", "2"])
    assert args.workers == 2
