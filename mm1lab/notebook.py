"""Small helpers the notebooks share, so each notebook stays a story that calls the library.

A notebook run by `mm1lab run` gets `RUN_DIR` (its run folder); it writes `metrics.json` and figures there, and
the runner, sweeps and `mm1lab demo` read them back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mm1lab.config import MM1Config


def save_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Merge `metrics` into RUN_DIR/metrics.json (so several cells can add to it)."""
    path = Path(run_dir) / "metrics.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(metrics)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str))
    return path


def save_figure(fig, run_dir: str | Path, name: str):
    """Save a matplotlib figure as RUN_DIR/<name>.png and return it (so the cell still displays it)."""
    fig.savefig(Path(run_dir) / f"{name}.png", dpi=100, bbox_inches="tight")
    return fig


def model_dict(preset: str = "tiny", *, connector: str | None = None, image_tokens: int | None = None,
               resolution: int | None = None, experts: int = 0, top_k: int = 2, moe_every: int = 2,
               moe_ffn_dim: int | None = None) -> dict[str, Any]:
    """A preset with the knobs ablations turn (connector, image tokens, resolution, MoE), validated."""
    data = MM1Config.preset(preset).to_dict()
    if connector:
        data["connector"]["kind"] = connector
    if image_tokens:
        data["connector"]["num_tokens"] = image_tokens
    if resolution:
        data["vision"]["image_size"] = resolution
    if experts:
        data["lm"]["moe"] = dict(num_experts=experts, top_k=top_k, every=moe_every, ffn_dim=moe_ffn_dim)
    return MM1Config.from_dict(data).to_dict()   # raises a ConfigError naming the field if a knob is invalid


def chat_samples(model, tokenizer, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation items as chat prompts for the probing widgets: input_ids, images, the raw pixels, an id."""
    from mm1lab.data.collate import Collator

    collator = Collator(tokenizer, model.cfg)
    samples = []
    for item in items:
        enc = collator.encode_prompt(item["chat_prompt"], item["query_images"])
        samples.append(dict(input_ids=enc["input_ids"], images=enc["images"], pixels=item["query_images"],
                            id=item["id"], question=item["question"], answer=item["answer"]))
    return samples


def answer(model, tokenizer, sample: Mapping[str, Any], *, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to one chat sample (decoded, stopped at the end of its turn)."""
    from mm1lab.data.tokenizer import END

    stop = [tokenizer.encode(END)[0], model.cfg.eos_token_id]
    new = model.generate(sample["input_ids"], sample["images"], max_new_tokens=max_new_tokens, stop_tokens=stop)
    return tokenizer.decode(new[0].tolist()).strip()


def report_table(report: Mapping[str, Any]) -> str:
    """A markdown table of an evaluation report: task, shots, metric, score with its 95% interval, baseline, n,
    and whether the whole interval lies above the baseline."""
    lines = ["| task | shots | metric | score | 95% interval | baseline | above | n |",
             "| --- | ---: | --- | ---: | --- | ---: | --- | ---: |"]
    for key, t in report["tasks"].items():
        low, high = t.get("interval", (t["score"], t["score"]))
        above = "yes" if t.get("above_baseline", low > t["baseline"]) else "no"
        lines.append(f"| {t.get('task', key)} | {t.get('shots', 0)} | {t['metric']} | {t['score']:.3f} | "
                     f"[{low:.3f}, {high:.3f}] | {t['baseline']:.3f} | {above} | {t['n']} |")
    return "\n".join(lines)


def scores(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{task@shots: {score, baseline, metric, n}} — the compact form `metrics.json` and summaries use."""
    return {key: dict(score=t["score"], interval=t.get("interval"), baseline=t["baseline"], metric=t["metric"],
                      n=t["n"], above_baseline=t.get("above_baseline")) for key, t in report["tasks"].items()}
