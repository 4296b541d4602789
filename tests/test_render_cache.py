"""The render cache's size cap ($MM1LAB_CACHE_GB) and `mm1lab data cache`, on real rendered blocks in a temp folder."""

import os

import numpy as np
import pytest

from mm1lab.cli import main
from mm1lab.data import render_cache
from mm1lab.data.shapeworld import ShapeWorld

BLOCK = 8          # seeds per block; at 32 px one block is 8 x 32 x 32 x 3 bytes and an .npy header


def cached_blocks(world: ShapeWorld) -> set[int]:
    return {int(p.stem) for p in world.root.glob("*.npy")}


def test_a_write_past_the_cap_deletes_the_blocks_used_longest_ago(tmp_path, monkeypatch):
    monkeypatch.setenv("MM1LAB_CACHE_GB", "0")                 # fill six blocks with no cap
    world = ShapeWorld("easy", 32, cache_dir=tmp_path, block_size=BLOCK)
    first = [world.array(b * BLOCK).copy() for b in range(6)]
    size = (world.root / "00000000.npy").stat().st_size
    for b in range(6):                                          # written in order, long ago
        os.utime(world.root / f"{b:08d}.npy", (1000 + b, 1000 + b))
    ShapeWorld("easy", 32, cache_dir=tmp_path, block_size=BLOCK).array(0)   # block 0 is read again: used now

    monkeypatch.setenv("MM1LAB_CACHE_GB", str(4.5 * size / 1e9))
    writer = ShapeWorld("easy", 32, cache_dir=tmp_path, block_size=BLOCK)
    with pytest.warns(UserWarning, match=r"passed its cap .* 3 blocks used longest ago .*MM1LAB_CACHE_GB"):
        writer.array(6 * BLOCK)                                 # the 7th block: over 4.5 blocks, trimmed to 4
    assert cached_blocks(world) == {0, 4, 5, 6}                 # 1-3 went; the block read again and the new one stay

    again = ShapeWorld("easy", 32, cache_dir=tmp_path, block_size=BLOCK)
    np.testing.assert_array_equal(again.array(1 * BLOCK), first[1])   # a deleted block is rendered again, the same
    assert 1 in cached_blocks(world)


def test_the_cap_is_read_from_the_environment_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv("MM1LAB_CACHE_GB", raising=False)
    assert render_cache.cap_bytes() == int(render_cache.DEFAULT_CAP_GB * 1e9)
    monkeypatch.setenv("MM1LAB_CACHE_GB", "0")
    assert render_cache.cap_bytes() is None
    monkeypatch.setenv("MM1LAB_CACHE_GB", "2.5")
    assert render_cache.cap_bytes() == 2_500_000_000
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("MM1LAB_CACHE_GB", bad)
        with pytest.raises(ValueError, match=rf"MM1LAB_CACHE_GB must be a number .*{bad}"):
            render_cache.cap_bytes()


def test_data_cache_shows_the_cache_and_clears_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM1LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("MM1LAB_CACHE_GB", "3")
    world = ShapeWorld("easy", 32, block_size=BLOCK)           # the default root: $MM1LAB_CACHE/shapeworld
    world.prerender(0, 3 * BLOCK)
    assert main(["data", "cache"]) == 0
    shown = capsys.readouterr().out
    assert str(tmp_path / "shapeworld") in shown
    assert f"{world.difficulty.key()}/32px: 3 blocks" in shown and "cap 3 GB" in shown

    assert main(["data", "cache", "--clear"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert not world.root.exists() and render_cache.usage(tmp_path / "shapeworld") == {}
    assert world.array(5).shape == (32, 32, 3)                  # a cleared cache is rebuilt as it is read


def test_prerendering_more_than_the_cap_keeps_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MM1LAB_CACHE_GB", "0.001")              # 1 MB: about 325 scenes at 32 px
    world = ShapeWorld("easy", 32, cache_dir=tmp_path, block_size=BLOCK)
    with pytest.raises(ValueError, match=r"prerendering 1000 scenes at 32 px .* cap of 0.001 GB.*MM1LAB_CACHE_GB"):
        world.prerender(0, 1000)
    assert not world.root.exists()                              # refused before rendering anything
    world.prerender(0, 100)
    assert cached_blocks(world) == set(range(13))
