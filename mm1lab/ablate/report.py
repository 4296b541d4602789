"""A lesson's result as a table, a figure, and its section of docs/ablations.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

METRIC_LABELS = {"0shot": "0-shot", "4shot": "4-shot", "8shot": "8-shot", "few": "few-shot (4, 8)",
                 "all": "all shots", "text": "TextCore"}


def _fmt(m: float, low: float, high: float) -> str:
    if not math.isfinite(low):
        return f"{m:.1f}"
    return f"{m:.1f} [{low:.1f}, {high:.1f}]"


def lesson_markdown(result: dict[str, Any], *, figure: str | None = None) -> str:
    """The lesson's section: claim, paper numbers, per-arm means with 95% intervals, effects, verdict."""
    metrics = [m for m in ("0shot", "4shot", "8shot", "text")
               if any(m in v for v in result["intervals"].values())]
    lines = [f"### {result['lesson']}", "", f"**MM1:** \"{result['claim']}\"", "", f"**Paper:** {result['paper']}", "",
             f"**Verdict: {result['verdict']}.** {result['reason']}.", ""]
    if figure:
        lines += [f"![{result['lesson']}]({figure})", ""]
    lines += ["| arm | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
              "| --- |" + " ---: |" * len(metrics)]
    for arm in result["arms"]:
        cells = [_fmt(*result["intervals"][arm][m]) if m in result["intervals"].get(arm, {}) else "-"
                 for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if result["effects"]:
        lines += ["", "| effect (paired over seeds) | mean [95% interval] |", "| --- | ---: |"]
        lines += [f"| {e['name']} | {_fmt(e['mean'], e['low'], e['high'])} |" for e in result["effects"]]
    lines += ["", f"{result['seeds']} seeds per arm; scores are MM1's average (captioning CIDEr and VQA-style "
              f"accuracy, x100) and TextCore accuracy x100; runs took {result['seconds'] / 60:.1f} min in all"
              f"{_wall(result)}.", ""]
    return "\n".join(lines)


def _wall(result: dict[str, Any]) -> str:
    wall = result.get("wall_seconds", 0.0)
    return f", {wall / 60:.1f} min from the first run's start to the last run's end" if wall else ""


def plot_lesson(result: dict[str, Any]):
    """Each metric's mean per arm with its 95% interval (a Figure; no pyplot state)."""
    from matplotlib.figure import Figure

    metrics = [m for m in ("0shot", "4shot", "8shot", "text") if any(m in v for v in result["intervals"].values())]
    arms = [a for a in result["arms"] if a in result["intervals"]]
    fig = Figure(figsize=(3.4 * len(metrics), 3.2), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for x, arm in enumerate(arms):
            m, low, high = result["intervals"][arm].get(metric, (math.nan, math.nan, math.nan))
            err = [[m - low], [high - m]] if math.isfinite(low) else None
            ax.errorbar([x], [m], yerr=err, fmt="o", capsize=4)
            ax.scatter([x] * len(result["scores"][arm].get(metric, [])), result["scores"][arm].get(metric, []),
                       s=8, color="gray", alpha=0.6)
        ax.set_xticks(range(len(arms)), arms, rotation=40, ha="right", fontsize=7)
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
    fig.suptitle(f"{result['lesson']}: {result['verdict']}", fontsize=10)
    return fig


def publish(results: list[dict[str, Any]], docs: str | Path, *, images: str | Path) -> Path:
    """Write the lessons' sections, figures and verdict rows into docs/ablations.md, between its markers. A lesson
    published before and not in `results` keeps its row and section, so one lesson can be rerun and republished
    alone; lessons stay in `LESSONS` order."""
    from mm1lab.ablate.lessons import LESSONS

    docs, images = Path(docs), Path(images)
    images.mkdir(parents=True, exist_ok=True)
    begin, end = "<!-- lessons: begin (written by mm1lab ablate --publish) -->", "<!-- lessons: end -->"
    text = docs.read_text() if docs.exists() else f"# Ablations\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    old, tail = rest.split(end, 1) if end in rest else (rest, "")
    rows, sections = _published(old)
    for r in results:
        name = f"ablation_{r['lesson']}.png"
        plot_lesson(r).savefig(images / name, dpi=110, bbox_inches="tight")
        sections[r["lesson"]] = lesson_markdown(r, figure=f"img/{name}")
        rows[r["lesson"]] = f"| {r['lesson']} | {r['verdict']} | {r['reason']} |"
    order = [n for n in LESSONS if n in sections] + [n for n in sections if n not in LESSONS]
    table = ["| lesson | verdict | why |", "| --- | --- | --- |"] + [rows[n] for n in order if n in rows]
    body = "\n".join(table) + "\n\n" + "\n".join(sections[n] for n in order)
    docs.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
    return docs


def _published(block: str) -> tuple[dict[str, str], dict[str, str]]:
    """The verdict rows and the sections (from its `### lesson` heading on) already between the markers."""
    rows, sections, current = {}, {}, None
    for line in block.strip("\n").split("\n"):
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = line + "\n"
        elif current is not None:
            sections[current] += line + "\n"
        elif line.startswith("| ") and not line.startswith(("| lesson |", "| --- |")):
            rows[line.split("|")[1].strip()] = line
    return rows, {name: text.rstrip("\n") + "\n" for name, text in sections.items()}   # as lesson_markdown ends
