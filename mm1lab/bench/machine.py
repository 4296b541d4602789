"""The machine's own limits, measured in the same run as the model figures: matmul peak and memory bandwidth.

MFU divides achieved model FLOP/s (`mm1lab.flops`) by the matmul peak of the same dtype measured here, in
`mm1lab bench` and in the trainer-side `python -m mm1lab.train.flops` alike; the decode floor divides the bytes a
generated token must read by the copy bandwidth measured here. So both ratios are against what this machine does
right now (under load, both peak and model slow down together).
"""

from __future__ import annotations

import time

import torch


def best_time(fn, *, repeats: int = 5, min_time: float = 0.05) -> float:
    """Fastest of `repeats` timings of `fn()`; each times as many calls as fill `min_time` s (after a warm-up)."""
    fn()
    calls, elapsed = 1, 0.0
    while True:   # calibrate calls per timing
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_peak(dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (512, 1024, 2048),
                repeats: int = 5, device: str | torch.device = "cpu") -> dict[str, float]:
    """Best GFLOP/s of an n x n x n matmul (2n^3 FLOPs) over `sizes`: {"gflops": GFLOP/s, "size": that n}.

    The one matmul peak of the package: every MFU in mm1lab divides by its "gflops". On a GPU each timed product
    waits for the device (random data: zeros run faster on some GPUs), so pass sizes that fill it, e.g. 8192.
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, best_n = 0.0, sizes[0]
    for n in sizes:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        out = torch.empty(n, n, dtype=dtype, device=device)

        def product(a=a, b=b, out=out) -> None:
            torch.mm(a, b, out=out)
            sync()

        seconds = best_time(product, repeats=repeats)
        rate = 2 * n ** 3 / seconds / 1e9
        if rate > best:
            best, best_n = rate, n
    return {"gflops": best, "size": best_n}


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of `dst.copy_(src)` on a buffer far larger than the caches, counting bytes read + bytes written
    (the STREAM 'copy' convention)."""
    n = megabytes * 2 ** 20 // 4
    src, dst = torch.rand(n), torch.empty(n)
    seconds = best_time(lambda: dst.copy_(src), repeats=repeats, min_time=0.1)
    return 2 * n * 4 / seconds / 1e9


def read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a streaming read (`src.sum()`), the access pattern of weight reads during decoding."""
    n = megabytes * 2 ** 20 // 4
    src = torch.rand(n)
    seconds = best_time(lambda: src.sum(), repeats=repeats, min_time=0.1)
    return n * 4 / seconds / 1e9


def machine_limits(*, quick: bool = False) -> dict[str, float | int | str]:
    """Matmul peaks (fp32, bf16) and copy/read bandwidth, measured now."""
    import platform

    sizes = (512, 1024) if quick else (512, 1024, 2048)
    mb = 64 if quick else 256
    fp32, bf16 = matmul_peak(torch.float32, sizes), matmul_peak(torch.bfloat16, sizes)
    return {
        "matmul_peak_fp32_gflops": fp32["gflops"], "matmul_peak_fp32_size": fp32["size"],
        "matmul_peak_bf16_gflops": bf16["gflops"], "matmul_peak_bf16_size": bf16["size"],
        "copy_bandwidth_gbs": copy_bandwidth(mb), "read_bandwidth_gbs": read_bandwidth(mb),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
