"""Figures for the interpretability tools: logit lens, patching, head views, attribution. Data in, Figure out.

Like `mm1lab.plots` (whose `overlay`, `NotebookFigure` and `SCALES` these reuse), every function builds a
Figure without pyplot, so it runs headless and a notebook cell shows the returned figure once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from mm1lab.plots import SCALES, NotebookFigure, _numpy, _percent, overlay, scale_label, to_display


def _grid_text(ax, values: np.ndarray, labels=None, *, fmt: str = "{:.2f}", top: float | None = None,
               dark_above: float = 0.6) -> None:
    """Write each cell's label (or value) in it, white on dark cells (above `dark_above` of the colour range `top`)."""
    top = top or max(float(np.abs(values).max()), 1e-12)
    for (i, j), v in np.ndenumerate(values):
        text = labels[i][j] if labels is not None else fmt.format(v)
        ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                color="white" if abs(v) / top > dark_above else "black")


def plot_logit_lens(probs, labels: Sequence[Sequence[str]], *, layers: Sequence[str], columns: Sequence[str],
                    title: str | None = None) -> Figure:
    """The logit lens as a table: rows are layers (embeddings at the top), columns positions; each cell names the
    top token and is coloured by its probability (2 axes). probs: (L, n); labels: (L, n) strings."""
    p = _numpy(probs)
    n_layers, n = p.shape
    fig = NotebookFigure(figsize=(min(2.2 + 0.75 * n, 16), 1.3 + 0.36 * n_layers), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(p, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    _grid_text(ax, p, [[str(x)[:8] for x in row] for row in labels], top=1.0)
    ax.set_xticks(range(n), list(columns), fontsize=7, rotation=45, ha="right")
    ax.set_yticks(range(n_layers), list(layers), fontsize=7)
    ax.set_title(title or "logit lens: top token per layer (colour: its probability)", fontsize=9)
    fig.colorbar(image, ax=ax, label="probability of the top token")
    return fig


def plot_patching(effect, *, layers: Sequence[str], columns: Sequence[str], is_image=None,
                  title: str | None = None) -> Figure:
    """Patching effect per layer x position (or layer x head), diverging around 0 (2 axes). 1 means patching that
    activation alone restores the clean answer; image-token columns have purple labels."""
    e = _numpy(effect)
    n_layers, n = e.shape
    fig = NotebookFigure(figsize=(min(2.4 + 0.22 * n, 16), 1.4 + 0.34 * n_layers), layout="constrained")
    ax = fig.add_subplot()
    top = max(float(np.abs(e).max()), 1e-6)
    image = ax.imshow(e, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0, vmin=-top, vmax=top), aspect="auto")
    if n_layers * n <= 120:
        _grid_text(ax, e, top=top)
    step = max(1, n // 40)                                  # at most ~40 labels on the axis
    shown = list(range(0, n, step))
    ax.set_xticks(shown, [columns[j] for j in shown], fontsize=6.5, rotation=90)
    ax.set_yticks(range(n_layers), list(layers), fontsize=7)
    if is_image is not None:
        marked = _numpy(is_image) > 0
        for tick, j in zip(ax.get_xticklabels(), shown):
            tick.set_color("purple" if marked[j] else "black")
    ax.set_title(title or "activation patching: effect on the answer (1 = clean restored)", fontsize=9)
    fig.colorbar(image, ax=ax, label="normalised effect")
    return fig


def plot_effect_map(image, effect, *, title: str | None = None) -> Figure:
    """A signed (gh, gw) map over the image (e.g. patching effects): red positive, blue negative, opacity rising
    with the size of the value, so cells near 0 show the picture untouched (3 axes: image, map, colour bar)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    img, heat = to_display(image), _numpy(effect)
    h, w = img.shape[:2]
    top = max(float(np.abs(heat).max()), 1e-12)
    norm = TwoSlopeNorm(vcenter=0, vmin=-top, vmax=top)
    rgba = colormaps["RdBu_r"](norm(heat))
    rgba[..., 3] = 0.85 * np.abs(heat) / top
    fig = NotebookFigure(figsize=(7.4, 3.7), layout="constrained")
    plain, ax = fig.subplots(1, 2)
    for a in (plain, ax):
        a.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
        a.set_xticks([])
        a.set_yticks([])
    ax.imshow(rgba, extent=(0, w, h, 0), interpolation="nearest")
    plain.set_title("image", fontsize=9)
    ax.set_title(title or "effect per patch", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="RdBu_r"), ax=ax, shrink=0.85)
    bar.set_label(f"effect (colour: -{top:.2g} to {top:.2g}, this view)", fontsize=8)
    return fig


def plot_head_grid(share, *, title: str | None = None, vmax: float | None = None) -> Figure:
    """Layers x heads: the share of one token's attention that lands on the image (2 axes)."""
    s = _numpy(share)
    n_layers, heads = s.shape
    fig = NotebookFigure(figsize=(2.2 + 0.55 * heads, 1.3 + 0.42 * n_layers), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(s, cmap="Purples", vmin=0, vmax=vmax or max(float(s.max()), 1e-12), aspect="auto")
    _grid_text(ax, s, [[_percent(v) for v in row] for row in s])
    ax.set_xticks(range(heads), [f"h{h}" for h in range(heads)], fontsize=7)
    ax.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers)], fontsize=7)
    ax.set_title(title or "share of the token's attention on the image, per layer and head", fontsize=9)
    bar = fig.colorbar(image, ax=ax, label=SCALES["share"])
    bar.ax.yaxis.set_major_formatter(_percent)
    return fig


def plot_head_maps(image, maps, *, labels: Sequence[str], scale: str = "share", vmax: float | None = None,
                   columns: int = 4, title: str | None = None) -> Figure:
    """One image overlay per head (or any list of maps), all on one colour scale so they compare by eye.

    maps: (m, gh, gw); labels: one per map; vmax: the shared top of the scale (default the largest value).
    """
    heat = _numpy(maps)
    m = heat.shape[0]
    rows = -(-m // columns)
    top = vmax if vmax is not None else max(float(heat.max()), 1e-12)
    fig = NotebookFigure(figsize=(1.9 * min(columns, m) + 1.2, 1.95 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, min(columns, m), squeeze=False)).ravel()
    img = to_display(image)
    mappable = None
    for ax, h, label in zip(axes, heat, labels):
        mappable = overlay(ax, img, h, vmax=top)
        ax.set_title(label, fontsize=8)
    for ax in axes[m:]:
        ax.axis("off")
    bar = fig.colorbar(mappable, ax=axes.tolist(), shrink=0.85)
    bar.set_label(scale_label(scale, top), fontsize=8)
    bar.ax.yaxis.set_major_formatter(_percent)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_attributions(image, maps: Mapping[str, object], *, title: str | None = None) -> Figure:
    """Attribution maps of several methods side by side over one image, each normalised within the image
    (sums to 1) and coloured from 0 to its own maximum, but at least twice the uniform share, so a flat map stays
    faint: they compare by where they point, not by level."""
    img = to_display(image)
    names = list(maps)
    fig = NotebookFigure(figsize=(2.3 * (len(names) + 1), 2.9), layout="constrained")
    axes = fig.subplots(1, len(names) + 1)
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, name in zip(axes[1:], names):
        heat = _numpy(maps[name])
        overlay(ax, img, heat, vmax=max(float(heat.max()), 2 / max(heat.size, 1)))
        ax.set_title(name.replace("_", " x ") if name.startswith("grad") else name, fontsize=8)
    if title:
        fig.suptitle(title + "\n(each map sums to 1 within the image; colour from 0 to its maximum, at least twice "
                             "the uniform share)", fontsize=8)
    return fig


def plot_token_words(image, centres, words: Sequence[str], values=None, *, title: str | None = None) -> Figure:
    """Words written over an image at its image tokens' places (e.g. the logit lens's top token per image token).

    centres: (k, 2) in [0, 1], x first (`region_centres`); values: optional (k,) in [0, 1] shading each label."""
    img = to_display(image)
    h, w = img.shape[:2]
    xy = _numpy(centres).reshape(-1, 2)
    shade = np.ones(len(xy)) if values is None else np.clip(_numpy(values).reshape(-1), 0, 1)
    fig = NotebookFigure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest")
    for (x, y), word, v in zip(xy, words, shade):
        ax.text(x * w, y * h, str(word)[:8], ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.35 + 0.6 * v, linewidth=0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "top token per image token", fontsize=9)
    return fig


def region_centres(regions, grid: tuple[int, int]):
    """Centre (x, y) in [0, 1] of each image token's region: regions (k, p) weighted over the gh x gw patch grid."""
    r = _numpy(regions)
    gh, gw = grid
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    weights = r / np.maximum(r.sum(-1, keepdims=True), 1e-12)
    return np.stack([weights @ xs.ravel(), weights @ ys.ravel()], -1)

