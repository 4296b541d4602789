"""Plotting functions for notebooks, reports and widgets: data in, matplotlib Figure out.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot state), so it runs headless (papermill,
tests, the Agg backend); the Figure subclass has a PNG repr, so a notebook cell shows the figure it returns
exactly once. Widgets call these same
functions; they hold no plotting logic of their own. Heat maps over images go through `overlay`, whose opacity rises
with the value (cells with little weight show the picture untouched), and name their colour scale (`SCALES`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure


class NotebookFigure(Figure):
    """A Figure that a notebook cell shows as PNG by itself (no pyplot, so no inline backend is needed)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=90)
        return buf.getvalue()


def _numpy(x) -> np.ndarray:
    """Tensor / array / list -> float numpy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def to_display(image) -> np.ndarray:
    """Any image -> (H, W, 3) floats in [0, 1] for imshow.

    Accepts PIL images, uint8 or float arrays (H, W), (H, W, 3) or (3, H, W), and torch tensors (normalised
    model inputs are min-max rescaled, so their colours are only approximate).
    """
    if hasattr(image, "convert"):                                    # PIL
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)                            # channels first -> last
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image (H, W), (H, W, 3) or (3, H, W), got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255
    image = image.astype(np.float64)
    lo, hi = image.min(), image.max()
    if lo < 0 or hi > 1:
        image = (image - lo) / max(hi - lo, 1e-12)
    return image


# What a heat map's colour means; the colour bar says which one a figure shows.
SCALES = {
    "share": "share of the token's whole attention",
    "image": "distribution within the image (sums to 1)",
}


def overlay(ax, image, heat, *, vmax: float, cmap: str = "inferno", alpha: float = 0.8, smooth: bool = False):
    """Draw `image` with a (gh, gw) `heat` map stretched over it. Opacity rises with the value, from clear at 0 to
    `alpha` at `vmax`, so cells with little weight show the picture untouched. Returns a mappable for a colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    img, heat = to_display(image), _numpy(heat)
    if heat.ndim != 2:
        raise ValueError(f"the heat map must be a 2-D (gh, gw) grid, got shape {heat.shape}")
    h, w = img.shape[:2]
    norm = Normalize(vmin=0, vmax=max(float(vmax), 1e-12))
    level = np.clip(norm(heat), 0, 1)
    rgba = colormaps[cmap](level)
    rgba[..., 3] = alpha * level
    # nearest keeps a small picture's pixels crisp; extent stretches patch (i, j) over its own pixels.
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
    ax.imshow(rgba, extent=(0, w, h, 0), interpolation="bilinear" if smooth else "nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return ScalarMappable(norm=norm, cmap=cmap)


def scale_label(scale: str, vmax: float | None) -> str:
    """The colour bar's label: what the colour means and how its range was chosen."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; choose one of {', '.join(SCALES)}")
    fixed = f"0 to {vmax:.1%}, fixed" if vmax is not None else "0 to this view's maximum"
    return f"{SCALES[scale]}\n(colour: {fixed})"


def plot_image_attention(image, patch_map, *, scale: str = "image", vmax: float | None = None,
                         alpha: float = 0.8, title: str | None = None, cmap: str = "inferno",
                         smooth: bool = False) -> Figure:
    """The image as it is, beside it with a (gh, gw) patch-level heat map over it, plus a colour bar (3 axes).

    scale: what the map holds, named on the colour bar: "image" (renormalised within the image, e.g.
        `image_attention(..., normalise=True)`) or "share" (the share of the token's whole attention,
        `normalise=False`), which compares across heads and layers when `vmax` is held fixed.
    vmax: top of the colour range; default this map's maximum (then only the pattern compares, not the level).
    smooth: bilinear upsampling instead of one flat block per patch (nearest shows the true resolution).
    """
    heat = _numpy(patch_map)
    top = vmax if vmax is not None else float(heat.max()) if heat.size else 0.0
    fig = NotebookFigure(figsize=(7.4, 3.7), layout="constrained")
    plain, ax = fig.subplots(1, 2)
    img = to_display(image)
    plain.imshow(img, interpolation="nearest")
    plain.set_xticks([])
    plain.set_yticks([])
    plain.set_title("image", fontsize=9)
    mappable = overlay(ax, img, heat, vmax=top, cmap=cmap, alpha=alpha, smooth=smooth)
    if title:
        ax.set_title(title, fontsize=9)
    bar = fig.colorbar(mappable, ax=ax, shrink=0.85)
    bar.set_label(scale_label(scale, vmax), fontsize=8)
    bar.ax.yaxis.set_major_formatter(_percent)
    return fig


def _percent(value, _pos=None) -> str:
    return f"{100 * value:.2g}%"


def plot_sampling_points(image, points, weights, *, title: str | None = None, cmap: str = "viridis") -> Figure:
    """D-Abstractor sampling points (m, 2) in [0, 1], x first, drawn on the image; size and colour show each
    point's weight (m,). Points outside the image are drawn at their place off the picture. 2 axes."""
    img = to_display(image)
    pts = _numpy(points).reshape(-1, 2)
    wts = _numpy(weights).reshape(-1)
    if len(pts) != len(wts):
        raise ValueError(f"{len(pts)} points but {len(wts)} weights; pass one weight per point")
    h, w = img.shape[:2]
    fig = NotebookFigure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, extent=(0, w, h, 0), alpha=0.8)
    order = np.argsort(wts)                                              # heaviest points drawn on top
    scale = wts / max(float(wts.max()), 1e-12)
    dots = ax.scatter(pts[order, 0] * w, pts[order, 1] * h, s=8 + 120 * scale[order], c=wts[order], cmap=cmap,
                      edgecolors="white", linewidths=0.5)
    pad = 0.1 * max(h, w)
    ax.set_xlim(min(0, pts[:, 0].min() * w) - pad / 4, max(w, pts[:, 0].max() * w) + pad / 4)
    ax.set_ylim(max(h, pts[:, 1].max() * h) + pad / 4, min(0, pts[:, 1].min() * h) - pad / 4)
    ax.add_patch(_frame(w, h))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{len(pts)} sampling points", fontsize=9)
    fig.colorbar(dots, ax=ax, shrink=0.8, label="weight")
    return fig


def _frame(w: float, h: float):
    from matplotlib.patches import Rectangle
    return Rectangle((0, 0), w, h, fill=False, edgecolor="0.3", linewidth=1)


def plot_router_load(load, *, layers: list[int] | None = None, title: str | None = None) -> Figure:
    """Heatmap of token share per expert (layers x experts), coloured around the uniform share 1/e (2 axes).

    load: a `probe.RouterLoad` or a (layers, e) array whose rows sum to 1.
    """
    if hasattr(load, "load"):
        layers = layers if layers is not None else load.layers
        load = load.load
    share = _numpy(load)
    if share.ndim != 2:
        raise ValueError(f"load must be (layers, experts), got shape {share.shape}")
    n_layers, e = share.shape
    uniform = 1.0 / e
    fig = NotebookFigure(figsize=(min(2.5 + 0.45 * e, 12), 1.4 + 0.45 * n_layers), layout="constrained")
    ax = fig.add_subplot()
    # Diverging around 1/e: white is balanced, red overloaded, blue starved.
    top = max(float(share.max()), uniform * 1.001)
    image = ax.imshow(share, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=uniform, vmin=0, vmax=top), aspect="auto")
    if n_layers * e <= 160:
        for (i, j), v in np.ndenumerate(share):
            far = abs(v - uniform) > 0.6 * max(top - uniform, uniform)     # dark cell: white text
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if far else "black")
    ax.set_xticks(range(e))
    ax.set_yticks(range(n_layers), [str(x) for x in (layers if layers is not None else range(n_layers))])
    ax.set_xlabel("expert")
    ax.set_ylabel("LM layer")
    ax.set_title(title or f"router load (uniform = 1/{e} = {uniform:.3f})", fontsize=9)
    bar = fig.colorbar(image, ax=ax, label="token share (line: uniform)")
    bar.add_lines([uniform], colors=["black"], linewidths=[2])
    return fig


def plot_token_routing(probs, experts=None, *, labels: list[str] | None = None, title: str | None = None) -> Figure:
    """Router probabilities of a few tokens (tokens x experts), chosen top-k experts boxed (2 axes).

    probs: (t, e); experts: optional (t, top_k) chosen experts; labels: one string per token.
    """
    p = _numpy(probs)
    t, e = p.shape
    fig = NotebookFigure(figsize=(min(2.5 + 0.4 * e, 12), 1.2 + 0.22 * t), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(p, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    if experts is not None:
        from matplotlib.patches import Rectangle
        for i, row in enumerate(_numpy(experts).astype(int)):
            for j in row:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=1.2))
    ax.set_xticks(range(e))
    ax.set_yticks(range(t), labels if labels is not None else [str(i) for i in range(t)], fontsize=7)
    ax.set_xlabel("expert")
    ax.set_title(title or "router probabilities (boxes: chosen experts)", fontsize=9)
    fig.colorbar(image, ax=ax, label="probability")
    return fig


def _read_records(records) -> list[dict]:
    if isinstance(records, (str, Path)):
        lines = Path(records).read_text().splitlines()
        records = [json.loads(x) for x in lines if x.strip()]
    # The trainer logs per-stream losses nested ({"stream_loss": {"caption": ...}}); plot them as loss/<stream>.
    return [{**r, **{f"loss/{k}": v for k, v in (r.get("stream_loss") or {}).items()}}
            for r in records if isinstance(r, Mapping)]


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every record that has a finite number under `key`; step falls back to the index."""
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i))
            ys.append(v)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_loss_curves(records: Iterable[Mapping] | str | Path, by_stream: bool = True, *,
                     title: str | None = None) -> Figure:
    """Loss against step from metrics.jsonl-style records (dicts, or the file's path).

    Draws 'loss' (and 'val/loss' if logged); with by_stream, a second panel with every 'loss/<stream>' key.
    Records missing a key are skipped for that curve, so partial logs plot fine. 1 axes, or 2 with by_stream.
    """
    records = _read_records(records)
    fig = NotebookFigure(figsize=(9 if by_stream else 5, 3.4), layout="constrained")
    axes = fig.subplots(1, 2 if by_stream else 1, squeeze=False)[0]
    total = axes[0]
    for key in ("loss", "val/loss"):
        x, y = _series(records, key)
        if len(x):
            total.plot(x, y, label=key, marker="." if len(x) < 30 else None)
    total.set_title(title or "loss", fontsize=9)
    if by_stream:
        streams = sorted({k for r in records for k in r if k.startswith("loss/")})
        for key in streams:
            x, y = _series(records, key)
            if len(x):
                axes[1].plot(x, y, label=key.removeprefix("loss/"), marker="." if len(x) < 30 else None)
        axes[1].set_title("loss per stream", fontsize=9)
        if not streams:
            axes[1].text(0.5, 0.5, "no 'loss/<stream>' keys logged", ha="center", va="center",
                         transform=axes[1].transAxes, fontsize=8, color="0.4")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def plot_scores(report: Mapping, *, title: str | None = None) -> Figure:
    """Per-task score next to its baseline, from {"tasks": {name: {"metric", "score", "baseline", "n"}}} (1 axes).

    Missing baselines or scores are left out of the bars; the label under each task says its metric and n.
    """
    tasks = report.get("tasks", {}) if isinstance(report, Mapping) else {}
    names = list(tasks)
    score = [tasks[t].get("score") for t in names]
    base = [tasks[t].get("baseline") for t in names]
    fig = NotebookFigure(figsize=(max(3.5, 1.2 + 1.1 * len(names)), 3.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.38

    def bars(values, offset, label, color):
        keep = [i for i, v in enumerate(values) if isinstance(v, (int, float))]
        drawn = ax.bar(x[keep] + offset, [values[i] for i in keep], width, label=label, color=color)
        ax.bar_label(drawn, fmt="%.2f", fontsize=7)

    bars(score, -width / 2, "model", "tab:blue")
    bars(base, width / 2, "baseline", "0.7")
    labels = [f"{t}\n{tasks[t].get('metric', '?')}, n={tasks[t].get('n', '?')}" for t in names]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("score")
    ax.set_title(title or "scores vs baseline", fontsize=9)
    if not names:
        ax.text(0.5, 0.5, "report has no tasks", ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        ax.legend(fontsize=7)
    return fig
