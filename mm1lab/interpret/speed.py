"""What a cached run costs against a plain forward: `python -m mm1lab.interpret.speed [--checkpoint DIR]`.

A plain forward is `model(ids, images)` (SDPA, no attention maps); a cached run is `run_with_cache(model, ids,
images)`, recording every hook point, attention patterns included (so attention takes its explicit path and the
connector returns its regions). Both under `no_grad`, on the demo's input: one ShapeWorld counting question
(`counting_pair`), at batch 1 and batch 8, the two timed alternately. The figure recorded in docs/benchmarks.md
comes from this command.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mm1lab.interpret.hooks import run_with_cache
from mm1lab.interpret.pairs import counting_pair


def median_seconds(fns: dict, *, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each `fn()` in `fns` over `repeats` rounds, after `warmup` rounds. Each round runs every
    fn once, in turn, so load from other jobs on a shared machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def cache_cost(model, input_ids, images, *, repeats: int = 30) -> dict:
    """Median milliseconds of a plain forward and of a cached run (every hook point), timed alternately, and their
    ratio."""
    model.eval()
    t = median_seconds({"plain": lambda: model(input_ids, images),
                        "cached": lambda: run_with_cache(model, input_ids, images)}, repeats=repeats)
    return dict(plain_ms=1e3 * t["plain"], cached_ms=1e3 * t["cached"], ratio=t["cached"] / t["plain"],
                tokens=int(input_ids.numel()), batch=int(input_ids.shape[0]))


def main(argv=None) -> int:
    from mm1lab.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="", help="a trained model folder (default: the untrained tiny preset)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.checkpoint, untrained=None if args.checkpoint else "tiny")
    clean = counting_pair(model, tokenizer)["clean"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), model "
          f"{sum(p.numel() for p in model.parameters()):,} parameters ({model.cfg.name})")
    for batch in (1, 8):
        ids = clean["input_ids"].expand(batch, -1)
        images = clean["images"].expand(batch, -1, -1, -1)
        r = cache_cost(model, ids, images, repeats=args.repeats)
        print(f"batch {batch} ({ids.shape[1]} tokens, {batch} image(s)): plain forward {r['plain_ms']:.2f} ms, "
              f"cached run {r['cached_ms']:.2f} ms, ratio {r['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
