"""MM1's Table 1 at CPU scale: CLIP vs AIM, 64 vs 128 px, two encoder sizes, read out the same way.

`encoder_folder` gives an encoder for a stage-0 preset: the shipped one in `stage0/` when it exists, else one
trained here by `mm1lab train` (the stage-0 config with that preset) and exported. `encoder_rows` scores each with
the linear probes (every encoder) and zero-shot read-outs (CLIP), and `plot_encoders` draws them beside chance.
The paper's rows (`PAPER_TABLE1`) are average captioning/VQA scores of a 2.9B MM1 built on each encoder; ours are
read-outs of the encoder alone, so compare directions (which knob moves the score most), not numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mm1lab.stage0.presets import STAGE0_PRESETS

# MM1 Table 1 (ablation base: 2.9B LLM, pre-trained model, average over captioning and VQA; 0 / 4 / 8-shot).
# A secondary transcription of the paper (see shared/mm1-facts.md).
PAPER_TABLE1 = (
    ("AIM-600M", 224, "DFN-2B", 36.6, 56.6, 60.7),
    ("AIM-1B", 224, "DFN-2B", 37.9, 59.5, 63.3),
    ("AIM-3B", 224, "DFN-2B", 38.9, 60.9, 64.9),
    ("CLIP ViT-L", 224, "DFN-5B+VeCap", 36.9, 58.7, 62.2),
    ("CLIP ViT-H", 224, "DFN-5B+VeCap", 37.5, 60.0, 63.6),
    ("CLIP ViT-L", 336, "DFN-5B+VeCap", 39.9, 62.4, 66.0),
    ("CLIP ViT-H", 336, "DFN-5B+VeCap", 40.5, 62.6, 66.3),
    ("CLIP ViT-H", 378, "DFN-5B", 40.9, 62.5, 66.4),
)
CONFIG_OF = {"clip": "stage0-clip-tiny.yaml", "aim": "stage0-aim-tiny.yaml"}


def paper_table() -> str:
    """The paper's Table 1 rows as markdown."""
    lines = ["| encoder | res | data | 0-shot | 4-shot | 8-shot |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {e} | {r} | {d} | {a} | {b} | {c} |" for e, r, d, a, b, c in PAPER_TABLE1]
    return "\n".join(lines)


def encoder_folder(preset: str, *, shipped: str | Path, out: str | Path, steps: int, batch_size: int,
                   retrain: bool = False, smoke: bool = False) -> Path:
    """A transformers folder holding the encoder of stage-0 `preset`: shipped, or trained and exported into `out`."""
    from mm1lab.stage0.ship import CONFIGS, SMOKE_OVERRIDES, export
    from mm1lab.train import train

    if preset not in STAGE0_PRESETS:
        raise ValueError(f"unknown stage-0 preset {preset!r}; choose one of {', '.join(STAGE0_PRESETS)}")
    if (Path(shipped) / preset / "config.json").exists() and not retrain:
        return Path(shipped) / preset
    kind = STAGE0_PRESETS[preset]["objective"]
    run = Path(out) / "runs" / preset
    overrides = [f"model={preset}", f"steps={steps}", f"batch_size={batch_size}", f"out_dir={run}",
                 "track.progress=false", *(SMOKE_OVERRIDES if smoke else ())]
    result = train(CONFIGS / CONFIG_OF[kind], overrides=overrides)
    return export(kind, result.model, Path(out) / preset, dict(preset=preset, steps=result.step))


def encoder_rows(folders: dict[str, Path], *, attributes: tuple[str, ...], smoke: bool = False) -> list[dict]:
    """One row per encoder: kind, resolution, width x depth, each attribute's probe (and CLIP's zero-shot) score."""
    from mm1lab.pretrained.vision import hf_vision_config
    from mm1lab.stage0.ship import score

    rows = []
    for preset, folder in folders.items():
        kind = STAGE0_PRESETS[preset]["objective"]
        v, _ = hf_vision_config(folder)
        scores = score(kind, folder, smoke=smoke, attributes=attributes)
        row: dict[str, Any] = dict(encoder=preset, kind=kind, resolution=v.image_size, size=f"{v.width}x{v.depth}")
        for attr in attributes:
            probe = scores["probe"][attr]
            row[f"probe/{attr}"] = probe["score"]
            row[f"chance/{attr}"] = max(probe["majority"], probe["uniform"])
            if "zero_shot" in scores:   # a CLIP shipped as its vision tower alone has no zero-shot
                row[f"zero_shot/{attr}"] = scores["zero_shot"][attr]["score"]
        if "retrieval" in scores:
            row["retrieval_r1"] = scores["retrieval"]["score"]
        rows.append(row)
    return rows


def rows_table(rows: list[dict], attributes: tuple[str, ...]) -> str:
    """The rows as markdown: linear-probe accuracy per attribute (chance in brackets), CLIP's zero-shot after /."""
    head = "| encoder | kind | px | width x depth | " + " | ".join(attributes) + " |"
    lines = [head, "| --- | --- | ---: | --- |" + " ---: |" * len(attributes)]
    for r in rows:
        cells = []
        for a in attributes:
            zs = f" / {r[f'zero_shot/{a}']:.2f}" if f"zero_shot/{a}" in r else ""
            cells.append(f"{r[f'probe/{a}']:.2f}{zs} ({r[f'chance/{a}']:.2f})")
        lines.append(f"| {r['encoder']} | {r['kind']} | {r['resolution']} | {r['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_encoders(rows: list[dict], attributes: tuple[str, ...]):
    """Probe accuracy per attribute, one bar per encoder, chance dashed: a Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    cols = min(3, len(attributes))
    fig = Figure(figsize=(4.2 * cols, 3.2 * math.ceil(len(attributes) / cols)), layout="constrained")
    for i, attr in enumerate(attributes):
        ax = fig.add_subplot(math.ceil(len(attributes) / cols), cols, i + 1)
        xs = range(len(rows))
        colors = ["tab:blue" if r["kind"] == "clip" else "tab:orange" for r in rows]
        ax.bar(xs, [r[f"probe/{attr}"] for r in rows], color=colors)
        ax.hlines([r[f"chance/{attr}"] for r in rows], [x - 0.4 for x in xs], [x + 0.4 for x in xs],
                  colors="black", linestyles="dashed", linewidth=1)
        ax.set_xticks(list(xs), [r["encoder"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{attr}: linear probe (dashed: chance)", fontsize=9)
    return fig
