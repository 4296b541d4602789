"""Training-step throughput of mm1lab and of the peer on the same batch, optimizer and precision.

One sample = one image (k = num_patches placeholder ids, LLaVA's convention) followed by text tokens. Both models
take an identical batch; ours and the peer's steps alternate round by round so machine load hits both alike.

Model FLOPs per step (the MFU numerator), PaLM's convention (matmul FLOPs only, backward = 2x forward):
    6 * (P_vit * T_vit + P_conn * T_img + P_lm * T_lm)
    + 12 * (L_vit * d_vit * n_vit * T_vit + L_lm * d_lm * n_lm * T_lm)
P_vit: ViT matmul weights of the blocks run (all but the last for penultimate features), P_conn: projector,
P_lm: LM block matmuls + LM head (the embedding lookup is no matmul); T_vit: patch + CLS tokens through the ViT,
T_img: image tokens, T_lm: LM tokens; the second term is attention scores and values (n = sequence length).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mm1lab.config import MM1Config

IGNORE = -100


def make_batch(cfg: MM1Config, *, batch: int, text_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`batch` samples of [bos, k image placeholders, text]: input_ids, labels (-100 on placeholders), images."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.image_tokens
    text = torch.randint(4, cfg.lm.vocab_size, (batch, text_tokens), generator=g)
    ids = torch.cat([torch.full((batch, 1), cfg.bos_token_id), torch.full((batch, k), cfg.image_token_id), text], 1)
    labels = ids.masked_fill(ids == cfg.image_token_id, IGNORE)
    v = cfg.vision
    images = torch.randn(batch, v.channels, v.image_size, v.image_size, generator=g)
    return {"input_ids": ids, "labels": labels, "images": images}


def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def model_flops(cfg: MM1Config, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one step by the formula in the module docstring (independent of the implementation)."""
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        model = MM1Model(cfg)
    v, lm = cfg.vision, cfg.lm
    blocks_run = v.depth + v.feature_layer + 1
    p_vit = _linear_params(model.vision.patch_embed) + sum(_linear_params(b) for b in model.vision.blocks[:blocks_run])
    p_conn, p_lm = _linear_params(model.connector), _linear_params(model.lm)
    images, (b, n) = batch["images"].shape[0], batch["input_ids"].shape
    n_vit = v.num_patches + int(v.cls_token)
    t_vit, t_img, t_lm = images * n_vit, images * cfg.image_tokens, b * n
    dense = 6 * (p_vit * t_vit + p_conn * t_img + p_lm * t_lm)
    attention = 12 * (blocks_run * v.width * n_vit * t_vit + lm.depth * lm.heads * lm.head_dim * n * t_lm)
    return float(dense + attention)


def make_optimizer(model: torch.nn.Module, kind: str = "fused") -> torch.optim.Optimizer:
    """AdamW (lr 1e-4, wd 0.1) in one of torch's implementations: 'fused', 'foreach' or 'loop'."""
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **impl)


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


def build(impl: str, cfg: MM1Config, *, seed: int = 0) -> torch.nn.Module:
    """Our model ('ours'), the peer ('peer'), or either under `torch.compile` ('ours_compiled', 'peer_compiled';
    compilation happens on the first step) at `cfg`, in training mode."""
    if impl in ("peer", "peer_compiled"):
        from mm1lab.bench.peer import build_peer
        model = build_peer(cfg, seed=seed).train()
        if impl == "peer_compiled":
            model.compile()
        return model
    from mm1lab.model import MM1Model
    torch.manual_seed(seed)
    model = MM1Model(cfg).train()
    if impl == "ours_compiled":
        model.compile()
    return model


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
    flops = model_flops(cfg, data)
    tokens = data["input_ids"].numel()
    results: dict[str, Any] = {"batch": batch, "tokens_per_sample": data["input_ids"].shape[1],
                               "image_tokens_per_sample": cfg.image_tokens, "model_gflops_per_step": flops / 1e9,
                               "optimizer": f"AdamW({optimizer})"}
    if measure_peaks:
        from mm1lab.bench.machine import matmul_peak
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

    cfg = MM1Config.from_json(cfg_json)
    data = make_batch(cfg, batch=batch, text_tokens=text_tokens)
    reset = _reset_peak()
    base = _status_kib("VmRSS")
    model = build(impl, cfg)
    if task == "decode":
        from mm1lab.bench.decode import _generate

        with torch.inference_mode():
            _generate(impl, model.eval(), data, steps)
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
