"""Training-step throughput of mm1lab and of the peer on the same batch, optimizer and precision.

Both models take an identical batch (`common.make_batch`); ours and the peer's steps alternate round by round so
machine load hits both alike. MFU = model FLOP/s / matmul peak: the FLOPs per step come from `mm1lab.flops` (the
formula is in its docstring, independent of either implementation), the peak from `machine.matmul_peak`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mm1lab.bench.common import LORA_IMPLS, build, generate_greedy, make_batch
from mm1lab.bench.machine import matmul_peak
from mm1lab.config import MM1Config
from mm1lab.flops import batch_flops


def make_optimizer(model: torch.nn.Module, kind: str = "fused") -> torch.optim.Optimizer:
    """AdamW (lr 1e-4, wd 0.1) over the trainable parameters, in one of torch's implementations: 'fused',
    'foreach' or 'loop'."""
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kind]
    params = [p for p in model.parameters() if p.requires_grad]   # LoRA: the adapters (4-bit weights cannot fuse)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **impl)


def autocast(precision: str):
    """bf16 autocast on CPU (weights and optimizer stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss of mm1lab's model on `batch`, as the trainer computes it (the LM head only where a loss is taken)."""
    return model(batch["input_ids"], images=batch["images"], labels=batch["labels"], return_logits=False).loss


def peer_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss of LlavaForConditionalGeneration on `batch`."""
    return model(input_ids=batch["input_ids"], pixel_values=batch["images"], labels=batch["labels"],
                 use_cache=False).loss


def stepper(impl: str, model, opt, batch, precision: str) -> Callable[[], float]:
    """A closure running one forward + backward + optimizer step; returns the loss."""
    loss_fn = peer_step if impl.startswith("peer") else ours_step

    def step() -> float:
        with autocast(precision):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def interleaved_times(steps: dict[str, Callable[[], float]], *, rounds: int, per_round: int,
                      warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Alternate `per_round` steps of each stepper for `rounds` rounds; seconds per step (best and median round).

    Also the process CPU seconds per step (best round), steadier than wall time when other jobs share the cores.
    """
    first, losses = {}, {}
    for name, fn in steps.items():   # the first call pays one-off costs (torch.compile compiles here)
        start = time.perf_counter()
        losses[name] = [fn() for _ in range(warmup)]
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                losses[name].append(fn())
            times[name].append((time.perf_counter() - start) / per_round)
            cpu[name].append((time.process_time() - start_cpu) / per_round)
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "cpu_s": min(cpu[name]),
                   "first_s": first[name], "losses": losses[name]} for name, t in times.items()}


def train_bench(cfg: MM1Config, *, batch: int, text_tokens: int, precisions=("fp32", "bf16"), impls=("ours", "peer"),
                optimizer: str = "fused", rounds: int = 3, per_round: int = 2,
                peaks: dict[str, float] | None = None, measure_peaks: bool = False) -> dict[str, Any]:
    """Tokens/s, images/s, MFU and loss at init of each impl x precision, all timed interleaved in this process.

    peaks: matmul GFLOP/s per precision for MFU. measure_peaks: also measure them right after each precision's
    steps and divide by the higher of the two figures (the stricter MFU).
    """
    data = make_batch(cfg, batch=batch, text_tokens=text_tokens)
    flops = batch_flops(cfg, data)
    tokens = data["input_ids"].numel()
    results: dict[str, Any] = {"batch": batch, "tokens_per_sample": data["input_ids"].shape[1],
                               "image_tokens_per_sample": cfg.image_tokens, "model_gflops_per_step": flops / 1e9,
                               "optimizer": f"AdamW({optimizer})"}
    peaks = dict(peaks or {})
    for precision in precisions:
        # Dynamo keeps a bounded cache of compiled variants per code object; after a few configs it silently falls
        # back to eager. A reset per (config, precision) makes every compiled row a fresh compile.
        torch._dynamo.reset()
        steps = {}
        for impl in impls:
            model = build(impl, cfg)
            steps[impl] = stepper(impl, model, make_optimizer(model, optimizer), data, precision)
        timed = interleaved_times(steps, rounds=rounds, per_round=per_round)
        if measure_peaks:   # side by side with the steps it divides (the machine drifts over minutes)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peaks[precision] = max(peaks.get(precision, 0.0), matmul_peak(dtype, repeats=3)["gflops"])
            results[f"matmul_peak_{precision}_gflops"] = peaks[precision]
        for impl, t in timed.items():
            row = {"step_s": t["best_s"], "step_median_s": t["median_s"], "step_cpu_s": t["cpu_s"],
                   "tokens_per_s": tokens / t["best_s"],
                   "images_per_s": batch / t["best_s"], "loss_init": t["losses"][0],
                   "achieved_gflops": flops / t["best_s"] / 1e9, "first_step_s": t["first_s"]}
            if precision in peaks:
                row["mfu"] = row["achieved_gflops"] / peaks[precision]
            results[f"{impl}_{precision}"] = row
        if {"ours", "peer"} <= set(impls):
            ours, peer = results[f"ours_{precision}"], results[f"peer_{precision}"]
            results[f"ratio_{precision}"] = ours["tokens_per_s"] / peer["tokens_per_s"]
            results[f"ratio_{precision}_median"] = peer["step_median_s"] / ours["step_median_s"]
            results[f"ratio_{precision}_cpu"] = peer["step_cpu_s"] / ours["step_cpu_s"]
        if {"ours_compiled", "peer"} <= set(impls):
            compiled, peer = results[f"ours_compiled_{precision}"], results[f"peer_{precision}"]
            results[f"ratio_compiled_{precision}"] = compiled["tokens_per_s"] / peer["tokens_per_s"]
            results[f"ratio_compiled_{precision}_cpu"] = peer["step_cpu_s"] / compiled["step_cpu_s"]
        if {"ours_compiled", "peer_compiled"} <= set(impls):
            compiled, peer = results[f"ours_compiled_{precision}"], results[f"peer_compiled_{precision}"]
            results[f"ratio_both_compiled_{precision}"] = compiled["tokens_per_s"] / peer["tokens_per_s"]
    if "ours_fp32" in results and "ours_bf16" in results:
        faster = "bf16" if results["ours_bf16"]["tokens_per_s"] > results["ours_fp32"]["tokens_per_s"] else "fp32"
        results["faster_precision"] = faster
    return results


def precision_agreement(cfg: MM1Config, *, steps: int = 200, batch: int = 8, text_tokens: int = 32,
                        n_batches: int = 4, lr: float = 1e-3, tolerance: float = 0.02) -> dict[str, Any]:
    """Train our model from the same init on the same cycled batches in fp32 and in bf16 autocast; compare curves.

    Returns the largest relative gap between the two loss curves (each averaged over 10-step windows) and whether
    it is within `tolerance` (2%: bf16 autocast counts as matching fp32 below that).
    """
    data = [make_batch(cfg, batch=batch, text_tokens=text_tokens, seed=s) for s in range(n_batches)]
    curves = {}
    for precision in ("fp32", "bf16"):
        model = build("ours", cfg, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
        curve = []
        for i in range(steps):
            curve.append(stepper("ours", model, opt, data[i % n_batches], precision)())
        curves[precision] = curve

    def smooth(xs: list[float], w: int = 10) -> list[float]:
        return [sum(xs[i:i + w]) / w for i in range(0, len(xs) - w + 1, w)]
    a, b = smooth(curves["fp32"]), smooth(curves["bf16"])
    gap = max(abs(x - y) / x for x, y in zip(a, b))
    return {"steps": steps, "loss_fp32_first": curves["fp32"][0], "loss_fp32_last": a[-1], "loss_bf16_last": b[-1],
            "max_rel_gap": gap, "tolerance": tolerance, "within_tolerance": gap <= tolerance,
            "finite": all(math.isfinite(x) for x in curves["bf16"])}


# ---- peak memory, one fresh process per config ---------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_child(impl: str, cfg_json: str, batch: int, text_tokens: int, precision: str, steps: int,
                      task: str = "train") -> dict:
    """Run in a fresh process: after imports, reset VmHWM (/proc/self/clear_refs); build the model, then train
    `steps` steps (task "train") or generate `steps` tokens greedily (task "decode"); return the peak RSS (VmHWM)
    and its growth over the RSS before the model was built, in MiB."""
    import transformers  # noqa: F401  (both impls pay the same import, so it cancels out of the baseline)

    if impl in LORA_IMPLS:   # peft (and bitsandbytes) imported before the baseline too
        import peft  # noqa: F401
        if LORA_IMPLS[impl].get("quantize"):
            import bitsandbytes  # noqa: F401

    cfg = MM1Config.from_json(cfg_json)
    data = make_batch(cfg, batch=batch, text_tokens=text_tokens)
    reset = _reset_peak()
    base = _status_kib("VmRSS")
    model = build(impl, cfg)
    if task == "decode":
        with torch.inference_mode():
            generate_greedy(impl, model.eval(), data, steps)
    else:
        step = stepper(impl, model, make_optimizer(model), data, precision)
        for _ in range(steps):
            step()
    peak = _status_kib("VmHWM")   # without the reset this includes the import peak: an overestimate
    return {"peak_rss_mib": peak / 1024, "peak_growth_mib": (peak - base) / 1024, "hwm_reset": reset}


def peak_memory(impl: str, cfg: MM1Config, *, batch: int, text_tokens: int, precision: str = "fp32",
                steps: int = 2, task: str = "train") -> dict[str, Any]:
    """`peak_memory_child` in a fresh `python` subprocess (torch's allocator is invisible to tracemalloc)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from mm1lab.bench.train_step import peak_memory_child as f; "
            "print(json.dumps(f(*json.loads(sys.argv[1]))))")
    args = json.dumps([impl, cfg.to_json(), batch, text_tokens, precision, steps, task])
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess for {impl} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
