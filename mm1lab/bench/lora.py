"""LoRA SFT against full SFT: memory and step time at the demo config (the tiny preset) and at `mid`.

`mm1lab bench --only lora`. Variants (`common.LORA_IMPLS`): `full` (every weight trains), `lora` (rank 8 on the
LM's and the connector's linear layers, LoRAConfig's defaults) and `qlora` (the same over 4-bit NF4 base weights;
only where bitsandbytes is installed). Memory is given two ways:
- exact bytes of what training keeps besides activations, counted tensor by tensor after one step: weights (4-bit
  ones at their packed size plus their fp32 block scales), gradients, AdamW state;
- the peak RSS growth of a fresh process over two steps, activations and allocator slack included (`train_step.
  peak_memory`): what the machine saw, noisy at these sizes.
Step time is forward + backward + AdamW on the same batch, the variants' steps interleaved round by round.
"""

from __future__ import annotations

from typing import Any

import torch

from mm1lab.bench.common import LORA_IMPLS, build, make_batch
from mm1lab.bench.train_step import interleaved_times, make_optimizer, ours_step, peak_memory, stepper
from mm1lab.config import MM1Config

MIB = 2 ** 20
VARIANTS = {"full": "ours", "lora": "ours_lora", "qlora": "ours_qlora"}   # variant: `common.build` impl


def variants() -> dict[str, str]:
    """The variants this machine can run: qlora needs bitsandbytes."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {k: v for k, v in VARIANTS.items() if k != "qlora"}
    return dict(VARIANTS)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> dict:
    """One training step on `batch`, counting exactly what it holds besides activations: weights and buffers
    (a 4-bit weight: packed codes + block scales), gradients (after backward), AdamW state (after the step)."""
    weights = 0
    for p in model.parameters():   # shared (tied) parameters are listed once
        state = getattr(p, "quant_state", None)
        weights += _bytes(p) + (_bytes(state.absmax) + _bytes(state.code) if state is not None else 0)
    weights += sum(_bytes(b) for b in model.buffers())
    ours_step(model, batch).backward()
    grads = sum(_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    optimizer.step()
    optim = sum(_bytes(t) for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    optimizer.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "weights_mib": weights / MIB, "grads_mib": grads / MIB,
            "adamw_mib": optim / MIB, "total_mib": (weights + grads + optim) / MIB}


def lora_bench(configs: dict[str, MM1Config], quick: bool = False, log=None) -> dict[str, Any]:
    """Per config (the suite passes demo: the tiny preset, and mid) and variant: exact weight/grad/AdamW bytes,
    step time (best and median of interleaved rounds) and peak RSS growth in a fresh process; plus each LoRA
    variant's ratios to full fine-tuning."""
    say = log or (lambda msg: None)
    shape = dict(batch=2, text_tokens=16) if quick else dict(batch=8, text_tokens=64)
    out: dict[str, Any] = {"shape": shape, "rank": LORA_IMPLS["ours_lora"]["r"]}
    for name, cfg in configs.items():
        data = make_batch(cfg, **shape)
        rows: dict[str, dict[str, Any]] = {}
        steps = {}
        for variant, impl in variants().items():
            say(f"lora: {name} {variant}")
            model = build(impl, cfg)
            opt = make_optimizer(model)
            rows[variant] = state_bytes(model, opt, data)
            steps[variant] = stepper("ours", model, opt, data, "fp32")
        rounds = dict(rounds=1, per_round=1) if quick else dict(rounds=3, per_round=2 if name == "demo" else 1)
        for variant, t in interleaved_times(steps, **rounds).items():
            rows[variant].update(step_s=t["best_s"], step_median_s=t["median_s"], step_cpu_s=t["cpu_s"])
        for variant, impl in variants().items():
            say(f"lora: {name} {variant} peak RSS (fresh process)")
            rows[variant]["peak_growth_mib"] = peak_memory(impl, cfg, **shape, steps=2)["peak_growth_mib"]
        for variant in rows:
            if variant != "full":
                rows[variant]["vs_full"] = {k: rows[variant][k] / rows["full"][k]
                                            for k in ("total_mib", "step_s", "step_cpu_s", "peak_growth_mib")}
        out[name] = rows
    return out


def _f(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def format_lora(results: dict[str, Any]) -> list[str]:
    """Markdown lines for the `lora` section of `results` (empty when it did not run)."""
    if "lora" not in results:
        return []
    d = results["lora"]
    lines = [f"## LoRA SFT vs full SFT (rank {d['rank']} on the LM and connector linear layers; batch "
             f"{d['shape']['batch']} x (image + {d['shape']['text_tokens']} text tokens), fp32, AdamW)", "",
             "| config | variant | trainable params | weights MiB | grads MiB | AdamW MiB | weights + grads + AdamW "
             "MiB | step s (best / median) | step CPU s | peak RSS growth MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in (n for n in d if n not in ("shape", "rank")):
        for variant, r in d[name].items():
            lines.append(f"| {name} | {variant} | {r['trainable_params']:,} | {_f(r['weights_mib'])} "
                         f"| {_f(r['grads_mib'])} | {_f(r['adamw_mib'])} | {_f(r['total_mib'])} "
                         f"| {_f(r['step_s'])} / {_f(r['step_median_s'])} | {_f(r['step_cpu_s'])} "
                         f"| {_f(r['peak_growth_mib'])} |")
    ratios = [f"{name} {v}: weights + grads + AdamW {r['vs_full']['total_mib']:.2f}x, "
              f"step {r['vs_full']['step_s']:.2f}x "
              f"(CPU time {r['vs_full']['step_cpu_s']:.2f}x), peak RSS growth {r['vs_full']['peak_growth_mib']:.2f}x"
              for name in d if name not in ("shape", "rank") for v, r in d[name].items() if "vs_full" in r]
    if ratios:
        lines += ["", "Against full SFT: " + "; ".join(ratios) + "."]
    return lines + [""]
