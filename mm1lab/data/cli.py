"""Command line for the data pipeline: `mm1lab data samples OUT_DIR`, `data prerender`, `data cache`, `data bench`.

`add_data_commands(subparsers)` plugs these into the `mm1lab` CLI; `python -m mm1lab.data.cli samples data_samples/`
runs them standalone.
"""

from __future__ import annotations

import argparse
import sys


def _samples(args: argparse.Namespace) -> None:
    from mm1lab.data.sample_files import write_samples

    files = write_samples(args.out_dir)
    total = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files ({total / 1e6:.2f} MB) to {args.out_dir}")


def _prerender(args: argparse.Namespace) -> None:
    from mm1lab.data.shapeworld import ShapeWorld

    world = ShapeWorld(args.difficulty, args.resolution)
    world.prerender(args.start, args.stop)
    print(f"cached seeds [{args.start}, {args.stop}) at {args.resolution} px under {world.root}")


def _cache(args: argparse.Namespace) -> None:
    from mm1lab.data import render_cache

    root, cap = render_cache.cache_root(), render_cache.cap_bytes()
    if args.clear:
        print(f"deleted {render_cache.clear(root) / 1e9:.2f} GB of rendered scenes from {root}")
        return
    folders = render_cache.usage(root)
    total = sum(size for _, size in folders.values())
    print(f"ShapeWorld render cache: {root} ($MM1LAB_CACHE)")
    for folder, (files, size) in folders.items():
        print(f"  {folder}: {files} blocks, {size / 1e9:.2f} GB")
    limit = "no cap" if cap is None else f"cap {cap / 1e9:g} GB"
    print(f"total {total / 1e9:.2f} GB ({limit}; $MM1LAB_CACHE_GB). Blocks are rendered again when needed, so "
          "`mm1lab data cache --clear` is always safe.")


def _bench(args: argparse.Namespace) -> None:
    from mm1lab.data.bench import bench_pipeline

    result = bench_pipeline(workers=args.workers, batch_size=args.batch_size, batches=args.batches,
                            resolution=args.resolution, difficulty=args.difficulty, cache=not args.no_cache,
                            train_threads=args.train_threads)
    print(result)


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add `data` (with `samples`, `prerender`, `cache`, `bench`) to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="ShapeWorld data, real-format samples, cache and pipeline benchmark")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("samples", help="write tokenizer.json and a small sample of every real format")
    p.add_argument("out_dir", help="output folder, e.g. data_samples/")
    p.set_defaults(func=_samples)
    p = sub.add_parser("prerender", help="render ShapeWorld scenes into the cache ahead of training")
    p.add_argument("--difficulty", default="easy")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=65536)
    p.set_defaults(func=_prerender)
    p = sub.add_parser("cache", help="where the render cache is, how big, its cap; --clear deletes it")
    p.add_argument("--clear", action="store_true", help="delete every rendered block (they are rendered again)")
    p.set_defaults(func=_cache)
    p = sub.add_parser("bench", help="samples/s of the pre-training pipeline (render + tokenize + collate)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--difficulty", default="easy")
    p.add_argument("--no-cache", action="store_true", help="skip the warm-cache measurement")
    p.add_argument("--train-threads", type=int, default=None, help="torch threads for the training-step timing")
    p.set_defaults(func=_bench)
    return data


def main(argv: list[str] | None = None) -> None:
    """Standalone entry point: `python -m mm1lab.data.cli samples data_samples/`."""
    parser = argparse.ArgumentParser(prog="mm1lab")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    args.func(args)


if __name__ == "__main__":
    main()
