"""The whole benchmark in one process: machine limits, training step, generation, data pipeline, vs the peer.

`run_suite()` returns every figure as a dict (`results["summary"]` holds the headline numbers flat);
`format_report(results)` renders it as the markdown of docs/benchmarks.md. Two model sizes: the `tiny` preset and
`mid` (~35M parameters, the largest that trains in seconds per step on 2 CPU cores), both with LLaVA's connector
(`peer.matched_config`) so the peer, transformers' LlavaForConditionalGeneration, is built at equal dimensions.
"""

from __future__ import annotations

import datetime
import platform
from typing import Any

import torch

from mm1lab.bench.peer import build_peer, matched_config, parameter_counts
from mm1lab.config import MM1Config

SECTIONS = ("machine", "train", "decode", "data", "peer")
EXTRA_SECTIONS = ("loader", "scaling", "lora")   # pre-training at scale (mm1lab.bench.pretrain), LoRA vs full SFT
                                                # (mm1lab.bench.lora): only when named in `only`


def mid_config() -> MM1Config:
    """~35M parameters: a ViT-S-like encoder (112 px, 64 patches) and an 8-layer, 512-wide Llama."""
    return matched_config(MM1Config.from_dict(dict(
        name="mid",
        vision=dict(image_size=112, patch_size=14, width=256, depth=6, heads=4, act="gelu"),
        connector=dict(kind="mlp"),
        lm=dict(vocab_size=8192, width=512, depth=8, heads=8, ffn_dim=1408, max_seq_len=1024),
    )))


def configs(quick: bool) -> dict[str, MM1Config]:
    """The configs benchmarked: tiny (always) and mid (full run only)."""
    tiny = matched_config(MM1Config.preset("tiny"))
    return {"tiny": tiny} if quick else {"tiny": tiny, "mid": mid_config()}


def _params(cfg: MM1Config) -> dict[str, Any]:
    from mm1lab.model import MM1Model

    with torch.device("meta"):
        ours = parameter_counts(MM1Model(cfg), peer=False)
        peer = parameter_counts(build_peer(cfg), peer=True)
    return {"ours": ours, "peer": peer, "equal": ours == peer}


def run_suite(quick: bool = False, only: tuple[str, ...] | None = None, *, compile: bool | None = None,
              log=None) -> dict[str, Any]:
    """Run the selected sections (all by default); `quick` shrinks everything to a seconds-long smoke run.

    compile: also time both models under `torch.compile` ('ours_compiled', 'peer_compiled'); default: on for full
    runs (compiling takes 15-80 s per model, config and precision on 2 cores), off for quick ones.
    """
    from mm1lab.bench import decode, machine, pipeline, train_step

    only = tuple(only or SECTIONS)
    unknown = sorted(set(only) - set(SECTIONS) - set(EXTRA_SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    say = log or (lambda msg: None)
    impls = ("ours", "peer") if "peer" in only else ("ours",)
    compile = (not quick) if compile is None else compile
    train_impls = (*impls, "ours_compiled", *(("peer_compiled",) if "peer" in impls else ())) if compile else impls
    cfgs = configs(quick)
    results: dict[str, Any] = {"meta": {
        "date": datetime.date.today().isoformat(), "quick": quick, "sections": list(only),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "cpu_count": _cpu_count()}}
    try:
        import transformers
        results["meta"]["transformers"] = transformers.__version__
    except ImportError:
        pass

    peaks = None
    if "machine" in only:
        say("machine: matmul peaks and bandwidth")
        results["machine"] = machine.machine_limits(quick=quick)
        peaks = {"fp32": results["machine"]["matmul_peak_fp32_gflops"],
                 "bf16": results["machine"]["matmul_peak_bf16_gflops"]}
    if "peer" in only:
        results["params"] = {name: _params(cfg) for name, cfg in cfgs.items()}

    if "train" in only:
        results["train"], results["memory"] = {}, {}
        for name, cfg in cfgs.items():
            say(f"train: {name}")
            shape = dict(batch=2, text_tokens=16) if quick else dict(batch=8, text_tokens=64)
            rounds = dict(rounds=1, per_round=1) if quick else dict(rounds=3, per_round=2 if name == "tiny" else 1)
            results["train"][name] = train_step.train_bench(cfg, **shape, **rounds, impls=train_impls, peaks=peaks,
                                                            measure_peaks=not quick)
            say(f"memory: {name}")
            precisions = ("fp32",) if quick else ("fp32", "bf16")
            results["memory"][name] = {f"{impl}_{p}": train_step.peak_memory(impl, cfg, **shape, precision=p)
                                       for p in precisions for impl in impls}
        if not quick:
            say("train: fp32 vs bf16 loss curves (tiny, 200 steps)")
            results["precision_agreement"] = train_step.precision_agreement(cfgs["tiny"], steps=200, batch=4)

    if "decode" in only:
        results["decode"] = {}
        bandwidth = results.get("machine", {}).get("copy_bandwidth_gbs")
        read_bandwidth = results.get("machine", {}).get("read_bandwidth_gbs")
        results["memory_decode"] = {}
        for name, cfg in cfgs.items():
            for b in (1, 8):
                say(f"decode: {name} batch {b}")
                shape = dict(text_tokens=4, new_tokens=3, rounds=1) if quick else dict(text_tokens=16,
                                                                                      new_tokens=32, rounds=4)
                dec_impls = impls if quick else (*impls, "ours_bf16")
                results["decode"][f"{name}_b{b}"] = decode.decode_bench(
                    cfg, batch=b, impls=dec_impls, bandwidth_gbs=bandwidth, read_bandwidth_gbs=read_bandwidth,
                    measure_bandwidth=not quick, **shape)
            say(f"memory: {name} decode")   # greedy, in a fresh process each
            mem_batch = 2 if quick else 8
            results["memory_decode"][name] = {impl: dict(batch=mem_batch, **train_step.peak_memory(
                impl, cfg, batch=mem_batch, text_tokens=shape["text_tokens"], steps=shape["new_tokens"],
                task="decode")) for impl in impls}
    if "data" in only:
        say("data: pipeline samples/s")
        results["data"] = pipeline.pipeline_bench(cfgs["tiny"], batch_size=8 if quick else 16,
                                                  batches=3 if quick else 20)
    if "loader" in only:
        from mm1lab.bench.pretrain import loader_bench
        results["loader"] = loader_bench(quick=quick, log=say)
    if "scaling" in only:
        from mm1lab.bench.pretrain import scaling_bench
        results["scaling"] = scaling_bench(quick=quick, log=say)
    if "lora" in only:
        from mm1lab.bench.lora import lora_bench
        lora_cfgs = {"demo": MM1Config.preset("tiny"), **({} if quick else {"mid": mid_config()})}
        results["lora"] = lora_bench(lora_cfgs, quick=quick, log=say)
    results["summary"] = summarize(results)
    return results


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def summarize(results: dict[str, Any]) -> dict[str, float | str]:
    """Headline figures, flat: the largest config benchmarked for training and decoding, both precisions."""
    s: dict[str, float | str] = {}
    if "machine" in results:
        for key in ("matmul_peak_fp32_gflops", "matmul_peak_bf16_gflops", "copy_bandwidth_gbs"):
            s[key] = results["machine"][key]
    train = results.get("train", {})
    if train:
        name = "mid" if "mid" in train else "tiny"
        s["train_config"] = name
        for p in ("fp32", "bf16"):
            for impl in ("ours", "ours_compiled", "peer", "peer_compiled"):
                row = train[name].get(f"{impl}_{p}")
                if row:
                    s[f"train_tokens_per_s_{impl}_{p}"] = row["tokens_per_s"]
                    s[f"train_images_per_s_{impl}_{p}"] = row["images_per_s"]
                    if "mfu" in row:
                        s[f"mfu_{impl}_{p}"] = row["mfu"]
            for key in (f"ratio_{p}", f"ratio_compiled_{p}", f"ratio_both_compiled_{p}"):
                if key in train[name]:
                    s[f"train_{key}"] = train[name][key]
            if f"ours_compiled_{p}" in train[name]:
                s[f"compile_first_step_s_{p}"] = train[name][f"ours_compiled_{p}"]["first_step_s"]
        best = train[name].get("faster_precision")
        if best and "peer_fp32" in train[name]:   # ours at its faster precision vs the peer as users run it (fp32)
            s["train_ratio_best_vs_peer_fp32"] = (train[name][f"ours_{best}"]["tokens_per_s"]
                                                  / train[name]["peer_fp32"]["tokens_per_s"])
        mem = results.get("memory", {}).get(name, {})
        for impl in ("ours", "peer"):
            if f"{impl}_fp32" in mem:
                s[f"peak_mem_growth_mib_{impl}_fp32"] = mem[f"{impl}_fp32"]["peak_growth_mib"]
    decode = results.get("decode", {})
    if decode:
        name = "mid" if "mid_b1" in decode else "tiny"
        s["decode_config"] = name
        for b in (1, 8):
            row = decode[f"{name}_b{b}"]
            for impl in ("ours", "ours_bf16", "peer"):
                if impl in row:
                    s[f"decode_tokens_per_s_{impl}_b{b}"] = row[impl]["decode_tokens_per_s"]
                    s[f"prefill_s_{impl}_b{b}"] = row[impl]["prefill_s"]
            if "ratio" in row:
                s[f"decode_ratio_b{b}"] = row["ratio"]
            for key in ("floor_ratio", "read_floor_ratio"):
                if key in row["ours"]:
                    s[f"decode_{key}_ours_b{b}"] = row["ours"][key]
            if "ours_bf16" in row and "peer" in row:
                s[f"decode_ratio_bf16_weights_b{b}"] = (row["ours_bf16"]["decode_tokens_per_s"]
                                                       / row["peer"]["decode_tokens_per_s"])
    for impl, m in results.get("memory_decode", {}).get(name if decode else "", {}).items():
        s[f"decode_peak_mem_growth_mib_{impl}"] = m["peak_growth_mib"]
    data = results.get("data", {})
    for key, value in data.items():
        if key.startswith("samples_per_s"):
            s[f"data_{key}"] = value
    return s


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def format_report(results: dict[str, Any]) -> str:
    """Markdown tables of every figure in `results` (what docs/benchmarks.md holds)."""
    meta = results["meta"]
    lines = [f"Date {meta['date']}; {meta['machine']}; {meta['cpu_count']} CPUs, torch {meta['torch']} "
             f"({meta['threads']} threads), transformers {meta.get('transformers', '-')}"
             f"{'; QUICK run (smoke sizes)' if meta['quick'] else ''}.", ""]
    if "machine" in results:
        m = results["machine"]
        lines += ["## Machine limits (measured in this run)", "", "| matmul fp32 | matmul bf16 | copy bandwidth | "
                  "read bandwidth |", "| --- | --- | --- | --- |",
                  f"| {_fmt(m['matmul_peak_fp32_gflops'])} GFLOP/s (n={m['matmul_peak_fp32_size']}) "
                  f"| {_fmt(m['matmul_peak_bf16_gflops'])} GFLOP/s (n={m['matmul_peak_bf16_size']}) "
                  f"| {_fmt(m['copy_bandwidth_gbs'])} GB/s (read+write) | {_fmt(m['read_bandwidth_gbs'])} GB/s |", ""]
    if "params" in results:
        lines += ["## Parameters (ours vs peer, per part)", "", "| config | vision | connector | LM | equal |",
                  "| --- | --- | --- | --- | --- |"]
        for name, p in results["params"].items():
            o, q = p["ours"], p["peer"]
            lines.append(f"| {name} | {o['vision']:,} / {q['vision']:,} | {o['connector']:,} / {q['connector']:,} "
                         f"| {o['lm']:,} / {q['lm']:,} | {p['equal']} |")
        lines.append("")
    if "train" in results:
        lines += ["## Training step (forward + backward + AdamW)", "",
                  "| config | precision | impl | step s (best / median) | tokens/s | images/s | MFU | loss@init "
                  "| first step s | peak RSS growth MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, t in results["train"].items():
            mem = results.get("memory", {}).get(name, {})
            for p in ("fp32", "bf16"):
                for impl in ("ours", "ours_compiled", "peer", "peer_compiled"):
                    row = t.get(f"{impl}_{p}")
                    if not row:
                        continue
                    m = mem.get(f"{impl}_{p}", {}).get("peak_growth_mib")
                    lines.append(f"| {name} (b={t['batch']}, {t['tokens_per_sample']} tok/sample) | {p} | {impl} "
                                 f"| {_fmt(row['step_s'])} / {_fmt(row['step_median_s'])} "
                                 f"| {_fmt(row['tokens_per_s'])} | {_fmt(row['images_per_s'])} "
                                 f"| {_fmt(row.get('mfu', float('nan')))} | {_fmt(row['loss_init'])} "
                                 f"| {_fmt(row['first_step_s'])} | {_fmt(m) if m is not None else '-'} |")
        lines.append("")
        ratios = [f"{name} {p}: **{t[f'ratio_{p}']:.2f}x** (median-round {t[f'ratio_{p}_median']:.2f}x, "
                  f"CPU-time {t[f'ratio_{p}_cpu']:.2f}x)"
                  for name, t in results["train"].items() for p in ("fp32", "bf16") if f"ratio_{p}" in t]
        ratios += [f"{name} {p} compiled: **{t[f'ratio_compiled_{p}']:.2f}x** "
                   f"(CPU-time {t[f'ratio_compiled_{p}_cpu']:.2f}x)"
                   for name, t in results["train"].items() for p in ("fp32", "bf16") if f"ratio_compiled_{p}" in t]
        ratios += [f"{name} {p} both compiled: **{t[f'ratio_both_compiled_{p}']:.2f}x**"
                   for name, t in results["train"].items() for p in ("fp32", "bf16")
                   if f"ratio_both_compiled_{p}" in t]
        if ratios:
            lines += ["Training throughput ours/peer: " + "; ".join(ratios) + ".", ""]
        peaks = [f"{name} {p} {_fmt(t[f'matmul_peak_{p}_gflops'])}" for name, t in results["train"].items()
                 for p in ("fp32", "bf16") if f"matmul_peak_{p}_gflops" in t]
        if peaks:
            lines += ["Matmul peak behind each MFU, GFLOP/s (the higher of the start-of-run figure and one measured "
                      "right after the steps): " + "; ".join(peaks) + ".", ""]
        faster = [f"{name}: {t['faster_precision']}" for name, t in results["train"].items() if "faster_precision" in t]
        if faster:
            lines += ["Faster precision for ours: " + ", ".join(faster) + ".", ""]
    if "precision_agreement" in results:
        a = results["precision_agreement"]
        lines += [f"bf16 autocast vs fp32 loss curves (tiny, {a['steps']} steps, 10-step means): largest relative "
                  f"gap {a['max_rel_gap']:.3%} (tolerance {a.get('tolerance', 0.02):.0%}); "
                  f"final loss fp32 {a['loss_fp32_last']:.4f}, bf16 "
                  f"{a['loss_bf16_last']:.4f} (from {a['loss_fp32_first']:.4f}).", ""]
    if "decode" in results:
        lines += ["## Generation (greedy, KV cache)", "",
                  "| config | batch | impl | prefill s | decode tokens/s | step / copy-bandwidth floor "
                  "| step / read-bandwidth floor |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, d in results["decode"].items():
            for impl in ("ours", "ours_bf16", "peer"):
                if impl in d:
                    r = d[impl]
                    lines.append(f"| {key.rsplit('_b', 1)[0]} (prompt {d['prompt_tokens']}, +{d['new_tokens']}) "
                                 f"| {d['batch']} | {impl} | {_fmt(r['prefill_s'])} "
                                 f"| {_fmt(r['decode_tokens_per_s'])} | {_fmt(r.get('floor_ratio', float('nan')))} "
                                 f"| {_fmt(r.get('read_floor_ratio', float('nan')))} |")
        lines.append("")
        ratios = [f"{k}: **{d['ratio']:.2f}x** (prefill {d['prefill_ratio']:.2f}x)"
                  for k, d in results["decode"].items() if "ratio" in d]
        if ratios:
            lines += ["Decode tokens/s ours/peer: " + "; ".join(ratios) + ".", ""]
        bws = [f"{k} {_fmt(d['copy_bandwidth_gbs'])} / {_fmt(d['read_bandwidth_gbs'])}"
               for k, d in results["decode"].items() if d.get("copy_bandwidth_gbs") and d.get("read_bandwidth_gbs")]
        if bws:
            lines += ["Bandwidth behind each floor, copy / read GB/s (measured between the generations): "
                      + "; ".join(bws) + ".", ""]
        mems = [f"{name} (batch {next(iter(per.values()))['batch']}): "
                + ", ".join(f"{impl} {_fmt(m['peak_growth_mib'])} MiB" for impl, m in per.items())
                for name, per in results.get("memory_decode", {}).items()]
        if mems:
            lines += ["Peak RSS growth while generating (fresh process each): " + "; ".join(mems) + ".", ""]
    if "data" in results:
        d = results["data"]
        rates = ", ".join(f"{k.rsplit('workers', 1)[1]} workers: {_fmt(v)} samples/s"
                          for k, v in d.items() if k.startswith("samples_per_s"))
        lines += ["## Data pipeline (render + tokenize + collate, no cache)", "",
                  (rates or "-") + f" (batch {d['batch_size']}, {d['resolution']} px).", ""]
    from mm1lab.bench.lora import format_lora
    from mm1lab.bench.pretrain import format_pretrain
    return "\n".join(lines + format_pretrain(results) + format_lora(results))
