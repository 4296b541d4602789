"""JupyterLab explorers over `mm1lab.interpret`: logit lens, activation patching, head views and attribution.

As in `mm1lab.widgets` (whose `Explorer`, labels and outputs these reuse): every forward pass runs when the explorer
is built (attribution: once per token, on first view), a control change only re-slices results and calls a plot
function from `mm1lab.interpret.plots`, and a drawing error shows its traceback in the output area. Put each in a
cell of its own, tagged so nbval ignores its output. Samples are as for `mm1lab.widgets.attention_explorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mm1lab import plots
from mm1lab.interpret import plots as iplots
from mm1lab.interpret.attribution import METHODS, attribute
from mm1lab.interpret.heads import head_view
from mm1lab.interpret.hooks import run_with_cache
from mm1lab.interpret.lens import layer_label, logit_lens
from mm1lab.interpret.patching import POINTS, activation_patching
from mm1lab.probe import attention_for_generation, image_spans
from mm1lab.widgets import Explorer, _as_sample, _figure_output, note_output, token_label, wire


def _generated(model, samples, max_new_tokens: int) -> list:
    """Each sample's prompt + greedy answer, re-run once with attention (probe.GenerationProbe)."""
    model.eval()
    probes = []
    for s in samples:
        new = model.generate(s["input_ids"], s["images"], max_new_tokens=max_new_tokens)
        probes.append(attention_for_generation(model, s["input_ids"], s["images"], new))
    return probes


def _pixels(sample: dict, image: int):
    return sample["pixels"][image] if sample.get("pixels") is not None else sample["images"][image]


def _controls(w, samples, probes, cfg, decode, *, with_token: bool = True) -> dict:
    def token_options(i: int):
        p = probes[i]
        return [(f"{j}: {token_label(int(t), cfg, decode)}", j)
                for j, t in enumerate(p.new_tokens[0].tolist()) if p.valid[0, j]] or [("(none)", -1)]

    def image_options(i: int):
        n = len(image_spans(samples[i]["input_ids"], cfg)[0])
        return [(f"image {m}", m) for m in range(n)] or [("(no image)", -1)]

    controls = dict(sample=w.Dropdown(options=[(f"{i}: {s['id']}", i) for i, s in enumerate(samples)], value=0,
                                      description="sample"))
    if with_token:
        controls["token"] = w.Dropdown(options=token_options(0), description="token")
    controls["image"] = w.Dropdown(options=image_options(0), description="image")
    return controls, dict(token=token_options, image=image_options)


@torch.no_grad()
def lens_explorer(model, samples: Sequence, *, decode: Callable | None = None, max_new_tokens: int = 4,
                  columns: int = 12) -> Explorer:
    """Logit lens of prompt + answer: the top token per layer at the last `columns` positions, and at one layer
    the top token of every image token, written over the image where that token reads."""
    import ipywidgets as w

    cfg = model.cfg
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    probes = _generated(model, samples, max_new_tokens)
    caches = [run_with_cache(model, p.input_ids, s["images"], record=["lm.embed", "lm.*.resid"],
                             return_attention=True) for p, s in zip(probes, samples)]
    lenses = [logit_lens(model, c) for c in caches]
    controls, options = _controls(w, samples, probes, cfg, decode, with_token=False)
    controls["layer"] = w.SelectionSlider(options=[(layer_label(n), r) for r, n in enumerate(lenses[0].layers)],
                                          value=len(lenses[0].layers) - 1, description="layer",
                                          continuous_update=False)
    output = w.Output(layout=w.Layout(min_height="300px"))

    def label(t: int) -> str:
        return token_label(t, cfg, decode).strip("'")

    def draw(*, sample, image, layer) -> list[dict]:
        p, lens, cache = probes[sample], lenses[sample], caches[sample]
        probs, ids = lens.top(1)
        probs, ids = probs[:, 0, :, 0], ids[:, 0, :, 0]                                # (L, n)
        n = ids.shape[1]
        keep = list(range(max(0, n - columns), n))
        tokens = p.input_ids[0].tolist()
        fig = iplots.plot_logit_lens(probs[:, keep], [[label(int(t)) for t in row] for row in ids[:, keep]],
                                     layers=[layer_label(x) for x in lens.layers],
                                     columns=[f"{j} {label(tokens[j])}" for j in keep],
                                     title=f"sample {sample}: top token per layer (columns: position and its token)")
        outs = [note_output(f"Each column is a position and the token there; its cells say what the residual stream "
                            f"after each layer would predict next. The last row is the model's own output; "
                            f"the answer starts at position {p.prompt_len}."),
                _figure_output(fig, "logit lens")]
        if image >= 0:
            index, positions = image_spans(p.input_ids, cfg)[0][image]
            centres = iplots.region_centres(cache.output.connector.regions[index], cache.output.vision.grid)
            words = [label(int(t)) for t in ids[layer, positions]]
            fig = iplots.plot_token_words(_pixels(samples[sample], image), centres, words, probs[layer, positions],
                                          title=f"image {image}, {layer_label(lens.layers[layer])}: "
                                                "top token of each image token")
            outs.append(_figure_output(fig, "image tokens through the LM head"))
        return outs

    box = w.VBox([w.HBox([controls["sample"], controls["image"], controls["layer"]]), output])
    return wire(Explorer(box, controls, output, draw, lenses), controls, options)


@torch.no_grad()
def patching_explorer(model, pairs: Sequence[dict], *, decode: Callable | None = None,
                      batch_size: int = 64) -> Explorer:
    """Activation patching of clean into corrupt, per pair (e.g. `counting_pair`): the effect per layer x position
    for the residual stream, attention or FFN outputs, or per layer x head; and at one layer, the effect of each
    image token mapped onto the clean image. Each (pair, what) is patched once, on first view."""
    import ipywidgets as w

    cfg = model.cfg
    results: dict[tuple[int, str], object] = {}

    def result(i: int, what: str):
        if (i, what) not in results:
            pair = pairs[i]
            results[(i, what)] = activation_patching(model, pair["clean"], pair["corrupt"], answer=pair["answer"],
                                                     wrong=pair.get("wrong"), what=what, batch_size=batch_size)
        return results[(i, what)]

    ids = [torch.as_tensor(pair["clean"]["input_ids"]).view(1, -1) for pair in pairs]
    controls = dict(
        sample=w.Dropdown(options=[(f"{i}: {pair['clean'].get('id', 'clean')} vs {pair['corrupt'].get('id', '')}", i)
                                   for i, pair in enumerate(pairs)], value=0, description="pair"),
        what=w.ToggleButtons(options=list(POINTS), value="resid", description="patch"),
        layer=w.IntSlider(value=0, min=0, max=cfg.lm.depth, description="row", continuous_update=False),
    )
    output = w.Output(layout=w.Layout(min_height="300px"))

    def draw(*, sample, what, layer) -> list[dict]:
        r, pair = result(sample, what), pairs[sample]
        layer = min(layer, len(r.layers) - 1)         # 'resid' has one more row (the embeddings) than the others
        words = [token_label(int(t), cfg, decode).strip("'") for t in ids[sample][0].tolist()]
        columns = [f"h{h}" for h in range(cfg.lm.heads)] if what == "heads" else \
            [f"{j} {words[j]}" for j in r.positions.tolist()]
        wrong = f" - logit({token_label(pair['wrong'], cfg, decode)})" if pair.get("wrong") is not None else ""
        outs = [note_output(f"Metric: logit({token_label(pair['answer'], cfg, decode)}){wrong} where the answer "
                            f"is predicted; clean {r.clean:.3f}, corrupt {r.corrupt:.3f}.",
                            "Effect 1: patching this one activation from the clean run restores the clean metric; "
                            "0: no change."),
                _figure_output(iplots.plot_patching(r.effect, layers=r.layers, columns=columns,
                                                    is_image=None if what == "heads" else r.is_image,
                                                    title=f"patching {what}: {r.metric_name}"), "patching")]
        spans = image_spans(ids[sample], cfg)[0]
        if what != "heads" and spans:
            index, positions = spans[0]
            out = r.cache.output
            effect = r.effect[layer][positions] @ out.connector.regions[index].float()
            fig = iplots.plot_effect_map(_pixels(pair["clean"], 0), effect.view(*out.vision.grid),
                                         title=f"{r.layers[layer]}: effect of each image token, mapped onto patches")
            outs.append(_figure_output(fig, "effect on the image"))
        return outs

    box = w.VBox([w.HBox([controls["sample"], controls["layer"]]), controls["what"], output])
    return wire(Explorer(box, controls, output, draw, results), controls, {})


@torch.no_grad()
def head_explorer(model, samples: Sequence, *, decode: Callable | None = None, max_new_tokens: int = 4) -> Explorer:
    """Head view of a generated token: the layers x heads grid of its attention on the image, and every head's map
    of one layer, all on one colour scale ("share": fixed over all layers and heads; "image": within the image)."""
    import ipywidgets as w

    cfg = model.cfg
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    probes = _generated(model, samples, max_new_tokens)
    controls, options = _controls(w, samples, probes, cfg, decode)
    controls["layer"] = w.IntSlider(value=cfg.lm.depth - 1, min=0, max=cfg.lm.depth - 1, description="layer",
                                    continuous_update=False)
    controls["scale"] = w.ToggleButtons(options=[("share of attention", "share"), ("within image", "image")],
                                        value="share", description="colour")
    output = w.Output(layout=w.Layout(min_height="300px"))

    def draw(*, sample, token, image, layer, scale) -> list[dict]:
        p = probes[sample]
        if token < 0 or image < 0:
            return [note_output(f"sample {sample}: nothing to show (no generated token or no image)")]
        view = head_view(p.out, cfg, input_ids=p.input_ids, query_pos=int(p.query_positions[0, token]))
        label = token_label(int(p.new_tokens[0, token]), cfg, decode)
        grid = iplots.plot_head_grid(view.share_of_image[..., image],
                                     title=f"token {token} {label}: share of its attention on image {image}")
        maps = view.maps[:, :, image] if scale == "share" else view.within_image(image)
        top = float(maps.max()) if scale == "share" else None
        fig = iplots.plot_head_maps(_pixels(samples[sample], image), maps[layer],
                                    labels=[f"head {h}: {view.share_of_image[layer, h, image]:.1%}"
                                            for h in range(maps.shape[1])],
                                    scale=scale, vmax=top, title=f"layer {layer}, token {token} {label}")
        return [note_output("Grid: how much of the token's attention each head puts on the image.",
                            "Maps: " + plots.scale_label(scale, top).replace("\n", " ")),
                _figure_output(grid, "head grid"), _figure_output(fig, "head maps")]

    box = w.VBox([w.HBox([controls["sample"], controls["token"], controls["image"]]),
                  w.HBox([controls["layer"], controls["scale"]]), output])
    return wire(Explorer(box, controls, output, draw, probes), controls, options)


def attribution_explorer(model, samples: Sequence, *, decode: Callable | None = None,
                         max_new_tokens: int = 4) -> Explorer:
    """Attribution of a generated token onto the image by every method of `attribute`, beside plain attention.
    Computed once per (sample, token), on first view (one forward and one backward through the LM)."""
    import ipywidgets as w

    cfg = model.cfg
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    with torch.no_grad():
        probes = _generated(model, samples, max_new_tokens)
    done: dict[tuple[int, int], dict] = {}
    controls, options = _controls(w, samples, probes, cfg, decode)
    output = w.Output(layout=w.Layout(min_height="300px"))

    def draw(*, sample, token, image) -> list[dict]:
        p = probes[sample]
        if token < 0 or image < 0:
            return [note_output(f"sample {sample}: nothing to show (no generated token or no image)")]
        if (sample, token) not in done:
            done[(sample, token)] = attribute(model, p.input_ids, samples[sample]["images"],
                                              target=int(p.new_tokens[0, token]),
                                              query_pos=int(p.query_positions[0, token]))
        found = done[(sample, token)]
        label = token_label(int(p.new_tokens[0, token]), cfg, decode)
        fig = iplots.plot_attributions(_pixels(samples[sample], image),
                                       {m: found[m].patch_maps[image] for m in METHODS},
                                       title=f"token {token} {label}, image {image}")
        return [note_output("attention: the last layer, mean over heads; rollout: attention through every layer; "
                            "grad x attention and grad x input: gradients of this token's logit."),
                _figure_output(fig, "attribution")]

    box = w.VBox([w.HBox([controls["sample"], controls["token"], controls["image"]]), output])
    return wire(Explorer(box, controls, output, draw, done), controls, options)
