"""ipywidgets explorers over `mm1lab.probe` and `mm1lab.plots`: pick a sample, token, layer and head, see the map.

The explorers hold no analysis of their own: every forward pass runs once when the explorer is built, and a
control change only re-slices those results and calls a plot function. Widget callbacks swallow exceptions, so
each redraw catches its own error and shows the traceback in the Output area instead of failing silently.
Use them in a notebook cell of their own, tagged so nbval ignores its output; the plain plot functions are what
headless runs and tests exercise.

Samples are model-level: a sequence of dicts with `input_ids` (n,) prompt ids including the image
placeholders, `images` (N, c, H, W) pixels or None, and optionally `pixels` (N pictures to draw, e.g. the PIL
originals; default: the model inputs rescaled) and `id`. A tuple (input_ids, images) works too.
"""

from __future__ import annotations

import base64
import io
import traceback
from collections.abc import Callable, Mapping, Sequence

import torch

from mm1lab import plots
from mm1lab.interpret.heads import head_view
from mm1lab.probe import attention_for_generation, image_attention, image_spans, router_load

MEAN = "mean"                               # the head control's value for the mean over heads
SPECIAL_NAMES = {"pad_token_id": "<pad>", "bos_token_id": "<bos>", "eos_token_id": "<eos>",
                 "image_token_id": "<image>"}


def _as_sample(sample, index: int) -> dict:
    if isinstance(sample, Mapping):
        sample = dict(sample)
    elif isinstance(sample, (tuple, list)) and len(sample) == 2:
        sample = dict(input_ids=sample[0], images=sample[1])
    else:
        raise TypeError(f"sample {index}: expected a dict with 'input_ids' and 'images' or a tuple "
                        f"(input_ids, images), got {type(sample).__name__}")
    ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
    sample["input_ids"] = ids[None] if ids.dim() == 1 else ids
    if sample["input_ids"].shape[0] != 1:
        raise ValueError(f"sample {index}: input_ids must hold one sequence, got shape {tuple(ids.shape)}")
    sample.setdefault("images", None)
    sample.setdefault("id", str(index))
    return sample


def token_label(token: int, cfg, decode: Callable | None) -> str:
    """A readable label for one token id: its text in quotes, or the special token's name (`<|end|>`, `<eos>`).

    A tokenizer's plain decode drops special tokens (an end of turn would show as ''); then the label asks
    `decode(ids, skip_special=False)` (mm1lab's tokenizer), then the config's special ids, then shows `#id`.
    """
    names = {getattr(cfg, key): name for key, name in SPECIAL_NAMES.items() if hasattr(cfg, key)}
    if token == cfg.image_token_id:
        return "<image>"
    if decode is None:
        return names.get(token, f"#{token}")
    try:
        text = decode([token])
        if text == "":
            try:
                text = decode([token], skip_special=False)
            except TypeError:                  # a decode without that keyword
                pass
        return repr(text) if text else names.get(token, f"#{token}")
    except Exception:                          # a label must never break the explorer; fall back to the id
        return names.get(token, f"#{token}")


def _figure_output(fig, text: str) -> dict:
    """A Jupyter display_data output holding the figure as PNG (works with or without a running kernel)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": text}}


def _text_output(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text if text.endswith("\n") else text + "\n"}


def note_output(*lines: str) -> dict:
    """Explanatory lines as HTML that wraps between words (JupyterLab breaks plain stream text anywhere, even
    mid-word); one line per fact. Class `mm1lab-note` (the browser test looks for it)."""
    import html

    body = "<br>".join(html.escape(line) for line in lines)
    style = "white-space: normal; word-break: normal; overflow-wrap: normal; font-size: 12px; line-height: 1.45"
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": f'<div class="mm1lab-note" style="{style}">{body}</div>',
                     "text/plain": "\n".join(lines)}}


class Explorer:
    """A built explorer: `widget` (the ipywidgets box to display), `controls` by name, the `output` area, and
    `redraw(**overrides)` (control values can be overridden, e.g. `redraw(layer=3)`). Displays as its widget."""

    def __init__(self, widget, controls: dict, output, draw: Callable[..., list[dict]], data):
        self.widget, self.controls, self.output, self.data = widget, controls, output, data
        self._draw = draw
        self.error: str | None = None

    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def redraw(self, **overrides) -> None:
        """Draw into the Output; any exception is shown there as a traceback (and kept in `self.error`)."""
        try:
            outputs = self._draw(**{**self.values(), **overrides})
            self.error = None
        except Exception:
            self.error = traceback.format_exc()
            outputs = [_text_output("Could not draw this view -- the error is below.\n" + self.error, "stderr")]
        self.output.outputs = tuple(outputs)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def wire(explorer: Explorer, controls: dict, options: dict) -> Explorer:
    """Redraw on every control change; a new sample first refills its dependent controls (one redraw, not three)."""
    busy = [False]

    def on_sample(change) -> None:
        busy[0] = True
        try:
            for name, fill in options.items():
                if name in controls:
                    controls[name].options = fill(change["new"])
        finally:
            busy[0] = False
        explorer.redraw()

    def on_other(change) -> None:
        if not busy[0]:
            explorer.redraw()

    controls["sample"].observe(on_sample, names="value")
    for name, control in controls.items():
        if name != "sample":
            control.observe(on_other, names="value")
    explorer.redraw()
    return explorer


@torch.no_grad()
def attention_explorer(model, samples: Sequence, *, decode: Callable | None = None, max_new_tokens: int = 8,
                       alpha: float = 0.8) -> Explorer:
    """Text-to-image attention of generated tokens: sample, generated token, layer, head (or the mean), image,
    and the colour scale: "share" (the share of the token's whole attention, on one fixed range for all layers
    and heads of that token, so they compare by eye) or "image" (renormalised within the image, to each view's max).

    Generates greedily from each sample once and re-runs prompt + answer once with attention (see
    `probe.attention_for_generation`); the map for token j is the attention row that predicted it.
    decode: optional `ids -> str` for token labels (e.g. the tokenizer's decode).
    """
    import ipywidgets as w

    cfg = model.cfg
    model.eval()
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    probes = []
    for s in samples:
        new = model.generate(s["input_ids"], s["images"], max_new_tokens=max_new_tokens)
        probes.append(attention_for_generation(model, s["input_ids"], s["images"], new))
    tops: dict[tuple[int, int, int], float] = {}

    def share_top(sample: int, pos: int, image: int) -> float:
        """The largest share-scale patch value over every layer and head of this token: the fixed colour range."""
        if (sample, pos, image) not in tops:
            p = probes[sample]
            view = head_view(p.out, cfg, input_ids=p.input_ids, query_pos=pos)
            tops[(sample, pos, image)] = float(view.maps[:, :, image].max())
        return tops[(sample, pos, image)]

    def token_options(i: int) -> list[tuple[str, int]]:
        p = probes[i]
        return [(f"{j}: {token_label(int(tok), cfg, decode)}", j)
                for j, tok in enumerate(p.new_tokens[0].tolist()) if p.valid[0, j]]

    def image_options(i: int) -> list[tuple[str, int]]:
        n_images = len(image_spans(samples[i]["input_ids"], cfg)[0])
        return [(f"image {m}", m) for m in range(n_images)] or [("(no image)", -1)]

    heads = model.cfg.lm.heads
    controls = dict(
        sample=w.Dropdown(options=[(f"{i}: {s['id']}", i) for i, s in enumerate(samples)], value=0,
                          description="sample"),
        token=w.Dropdown(options=token_options(0), description="token"),
        layer=w.IntSlider(value=cfg.lm.depth - 1, min=0, max=cfg.lm.depth - 1, description="layer",
                          continuous_update=False),
        # Not None for the mean: a Dropdown treats the value None as "nothing selected" and shows a blank.
        head=w.Dropdown(options=[("mean over heads", MEAN)] + [(f"head {h}", h) for h in range(heads)],
                        value=MEAN, description="head"),
        image=w.Dropdown(options=image_options(0), description="image"),
        scale=w.ToggleButtons(options=[("share of attention", "share"), ("within image", "image")], value="share",
                              description="colour"),
    )
    output = w.Output(layout=w.Layout(min_height="300px"))

    def draw(*, sample, token, layer, head, image, scale) -> list[dict]:
        p, s = probes[sample], samples[sample]
        if token is None:
            return [_text_output(f"sample {sample}: no generated tokens to inspect")]
        if image < 0:
            return [_text_output(f"sample {sample} has no image")]
        head = None if head == MEAN else head
        pos = int(p.query_positions[0, token])
        maps = image_attention(p.out, cfg, input_ids=p.input_ids, sample=0, query_pos=pos, layer=layer, head=head,
                               normalise=scale == "image")
        m = maps[image]
        pixels = s["pixels"][image] if s.get("pixels") is not None else s["images"][image]
        label = token_label(int(p.new_tokens[0, token]), cfg, decode)
        who = "mean over heads" if head is None else f"head {head}"
        title = f"token {token} {label}, layer {layer}, {who}\n{m['mass']:.1%} of its attention is on image {image}"
        vmax = share_top(sample, pos, image) if scale == "share" else None
        masses = ", ".join(f"{x['mass']:.3f}" for x in maps)
        outs = [note_output(f"Query position {pos} predicts token {token} {label}.",
                            f"Attention mass per image: {masses}.",
                            f"Mapped onto patches via {m['mapping']}.",
                            "Colour: " + plots.scale_label(scale, vmax).replace("\n", " "))]
        fig = plots.plot_image_attention(pixels, m["patch_map"], scale=scale, vmax=vmax, alpha=alpha, title=title)
        outs.append(_figure_output(fig, title))
        if "points" in m:
            fig = plots.plot_sampling_points(pixels, m["points"], m["point_weights"],
                                             title="sampling points weighted by this token's attention")
            outs.append(_figure_output(fig, "sampling points"))
        return outs

    box = w.VBox([w.HBox([controls["sample"], controls["token"], controls["image"]]),
                  w.HBox([controls["layer"], controls["head"]]), controls["scale"], output])
    explorer = Explorer(box, controls, output, draw, probes)
    wire(explorer, controls, dict(token=token_options, image=image_options))
    return explorer


@torch.no_grad()
def router_explorer(model, samples: Sequence, *, decode: Callable | None = None,
                    max_tokens: int = 48) -> Explorer:
    """MoE routing per sample: expert load per layer (all / image / text tokens) and, for one layer, each token's
    router probabilities with its chosen experts. One forward per sample, run up front."""
    import ipywidgets as w

    cfg = model.cfg
    if cfg.lm.moe is None:
        raise ValueError("router_explorer needs an MoE model (cfg.lm.moe is None: nothing is routed)")
    model.eval()
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    outs = [model(s["input_ids"], s["images"]) for s in samples]
    moe_layers = [i for i in range(cfg.lm.depth) if cfg.lm.is_moe_layer(i)]
    longest = max(s["input_ids"].shape[1] for s in samples)

    controls = dict(
        sample=w.Dropdown(options=[(f"{i}: {s['id']}", i) for i, s in enumerate(samples)], value=0,
                          description="sample"),
        tokens=w.ToggleButtons(options=["all", "image", "text"], value="all", description="count"),
        layer=w.Dropdown(options=[(f"layer {x}", r) for r, x in enumerate(moe_layers)], value=0,
                         description="MoE layer"),
        start=w.IntSlider(value=0, min=0, max=max(longest - 1, 0), description="from token",
                          continuous_update=False),
    )
    output = w.Output(layout=w.Layout(min_height="300px"))

    def draw(*, sample, tokens, layer, start) -> list[dict]:
        ids, out = samples[sample]["input_ids"], outs[sample]
        is_image = ids == cfg.image_token_id
        mask = {"all": None, "image": is_image, "text": ~is_image}[tokens]
        load = router_load(out, cfg, tokens=mask)
        title = f"sample {sample}, {tokens} tokens: expert share (uniform = {load.uniform:.3f})"
        result = [note_output("Per layer, the largest expert share: "
                              + ", ".join(f"{v:.2f}" for v in load.max_share.tolist()) + ".",
                              "Dead experts per layer: " + ", ".join(str(v) for v in load.dead.tolist()) + "."),
                  _figure_output(plots.plot_router_load(load, title=title), title)]
        n = ids.shape[1]
        if not 0 <= start < n:
            raise IndexError(f"from token={start} is outside sample {sample} ({n} tokens)")
        stop = min(n, start + max_tokens)
        r = out.routers[layer]
        labels = [f"{i} {token_label(t, cfg, decode)}" for i, t in enumerate(ids[0, start:stop].tolist(), start)]
        fig = plots.plot_token_routing(r.probs[start:stop], r.experts[start:stop], labels=labels,
                                       title=f"layer {moe_layers[layer]}: tokens {start}..{stop - 1}")
        result.append(_figure_output(fig, "token routing"))
        return result

    box = w.VBox([w.HBox([controls["sample"], controls["tokens"]]),
                  w.HBox([controls["layer"], controls["start"]]), output])
    explorer = Explorer(box, controls, output, draw, outs)
    for c in controls.values():
        c.observe(lambda change: explorer.redraw(), names="value")
    explorer.redraw()
    return explorer
