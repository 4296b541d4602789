"""Probing, plotting and widget tests: attention mapped back to patches, router load, headless figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_config  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mm1lab import MM1Model  # noqa: E402
from mm1lab.connectors.registry import pooling_regions  # noqa: E402
from mm1lab.probe import attention_for_generation, image_attention, image_spans, router_load  # noqa: E402

CONNECTORS = ["avgpool", "attnpool", "d-abstractor", "c-abstractor", "mlp"]
MOE = dict(num_experts=4, top_k=2, every=1)


def two_image_batch(cfg, b: int = 2):
    """Sample 0 holds two images, sample 1 one; text around them."""
    k = cfg.image_tokens
    first = [1, 5] + [cfg.image_token_id] * k + [6, 7] + [cfg.image_token_id] * k + [8, 9]
    second = [1, 5, 6] + [cfg.image_token_id] * k
    second += [7 + i % 20 for i in range(len(first) - len(second))]      # text to the same length
    ids = torch.tensor([first, second])[:b]
    n_images = 3 if b == 2 else 2
    return ids, torch.randn(n_images, 3, cfg.vision.image_size, cfg.vision.image_size)


def probe_forward(kind: str, moe=None):
    cfg = tiny_config(kind, moe=moe)
    model = MM1Model(cfg).eval()
    ids, images = two_image_batch(cfg)
    with torch.no_grad():
        out = model(ids, images, return_attention=True)
    return cfg, model, ids, images, out


@pytest.mark.parametrize("kind", CONNECTORS)
@pytest.mark.parametrize("head", [None, 1])
def test_patch_maps_are_distributions_on_the_grid(kind, head):
    cfg, _, ids, _, out = probe_forward(kind)
    query = ids.shape[1] - 1                                           # the last token sees every image
    for sample, n_images in [(0, 2), (1, 1)]:
        maps = image_attention(out, cfg, input_ids=ids, sample=sample, query_pos=query, layer=1, head=head)
        assert len(maps) == n_images
        for m in maps:
            assert m["patch_map"].shape == out.vision.grid
            assert (m["patch_map"] >= 0).all()
            assert m["patch_map"].sum() == pytest.approx(1.0, abs=1e-5)
            assert m["token_attention"].shape == (cfg.image_tokens,)
            assert 0 < m["mass"] <= 1


@pytest.mark.parametrize("kind", CONNECTORS)
def test_patch_map_is_token_attention_through_regions(kind):
    cfg, _, ids, _, out = probe_forward(kind)
    query, layer, head = ids.shape[1] - 1, 0, 2
    maps = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=query, layer=layer, head=head,
                           normalise=False)
    row = out.lm_attentions[layer][0, head, query]
    for m in maps:
        assert torch.equal(m["token_attention"], row[m["positions"]])
        expected = m["token_attention"] @ out.connector.regions[m["image"]]
        torch.testing.assert_close(m["patch_map"].flatten(), expected)


def test_avgpool_one_hot_attention_is_uniform_over_the_tokens_cell():
    """Hand check: all attention on image token j -> the map is flat over j's pooled cell, zero elsewhere."""
    cfg, _, ids, _, out = probe_forward("avgpool")
    gh, gw = out.vision.grid                                           # 4 x 4 patches, 2 x 2 tokens
    span = image_spans(ids, cfg)[0][1][1]                              # sample 0, second image
    query, token = ids.shape[1] - 1, 3                                 # token 3 = bottom-right cell
    for attn in out.lm_attentions:
        attn.zero_()
    out.lm_attentions[0][0, :, query, span[token]] = 1.0
    maps = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=query, layer=0)
    expected = torch.zeros(gh, gw)
    expected[2:, 2:] = 1 / 4                                           # the 2 x 2 patches pooled into token 3
    torch.testing.assert_close(maps[1]["patch_map"], expected)
    assert maps[1]["mass"] == pytest.approx(1.0)
    assert maps[0]["mass"] == 0 and maps[0]["patch_map"].sum() == 0   # no attention: an all-zero map
    # The same cells as the registry's pooling regions say.
    torch.testing.assert_close(pooling_regions(gh, 2, batch=1)[0, token], expected.flatten())


def test_attnpool_map_is_attention_times_pooling_weights():
    cfg, _, ids, _, out = probe_forward("attnpool")
    query = ids.shape[1] - 1
    maps = image_attention(out, cfg, input_ids=ids, sample=1, query_pos=query, layer=1, normalise=False)
    pooling = out.connector.extras["attention"]                        # (N, heads, k, n)
    image = maps[0]["image"]
    assert image == 2                                                  # sample 0 holds images 0 and 1
    expected = maps[0]["token_attention"] @ pooling[image].mean(0)
    torch.testing.assert_close(maps[0]["patch_map"].flatten(), expected)


def test_d_abstractor_point_weights_share_the_token_attention():
    cfg, _, ids, _, out = probe_forward("d-abstractor")
    maps = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=ids.shape[1] - 1, layer=1)
    c = cfg.connector
    for m in maps:
        assert m["points"].shape == (cfg.image_tokens * c.heads * c.points, 2)
        assert m["point_weights"].sum() == pytest.approx(float(m["token_attention"].sum()), rel=1e-5)


def test_bad_indices_say_what_is_valid():
    cfg, _, ids, _, out = probe_forward("avgpool")
    with pytest.raises(IndexError, match="layer=9"):
        image_attention(out, cfg, input_ids=ids, sample=0, query_pos=0, layer=9)
    with pytest.raises(IndexError, match="head=7"):
        image_attention(out, cfg, input_ids=ids, sample=0, query_pos=0, layer=0, head=7)


def test_attention_for_generation_rows_are_the_ones_that_chose_each_token():
    cfg = tiny_config("c-abstractor")
    model = MM1Model(cfg).eval()
    ids, images = two_image_batch(cfg)
    new = model.generate(ids, images, max_new_tokens=5)
    probe = attention_for_generation(model, ids, images, new)
    n, t = ids.shape[1], new.shape[1]
    assert probe.prompt_len == n
    assert probe.query_positions.tolist() == [list(range(n - 1, n - 1 + t))] * 2
    assert probe.token_positions.tolist() == [list(range(n, n + t))] * 2
    assert torch.equal(probe.input_ids[:, n:], new)
    assert probe.out.lm_attentions[0].shape[-2:] == (n + t, n + t)
    # Greedy: the logits at each query position pick exactly the generated token (placeholder/pad banned).
    logits = probe.out.logits.gather(1, probe.query_positions[..., None].expand(-1, -1, cfg.lm.vocab_size))
    logits[..., [cfg.image_token_id, cfg.pad_token_id]] = float("-inf")
    assert torch.equal(logits.argmax(-1)[probe.valid], new[probe.valid])


def test_generation_valid_mask_stops_after_eos():
    cfg = tiny_config("avgpool")
    model = MM1Model(cfg).eval()
    ids, images = two_image_batch(cfg, b=1)
    new = torch.tensor([[9, cfg.eos_token_id, cfg.pad_token_id, cfg.pad_token_id]])
    probe = attention_for_generation(model, ids, images, new)
    assert probe.valid.tolist() == [[True, True, False, False]]


def test_router_load_rows_sum_to_one_and_match_router_counts():
    cfg, _, ids, _, out = probe_forward("avgpool", moe=MOE)
    load = router_load(out, cfg)
    assert load.load.shape == (cfg.lm.depth, MOE["num_experts"])
    assert load.layers == [0, 1]
    torch.testing.assert_close(load.load.sum(-1), torch.ones(cfg.lm.depth))
    for row, r in zip(load.load, out.routers):
        torch.testing.assert_close(row, r.counts.float() / r.counts.sum())
    assert load.uniform == 0.25 and (load.entropy <= 1 + 1e-6).all() and (load.cv >= 0).all()
    # Restricting to a mask counts only those tokens' top-k choices.
    image = ids == cfg.image_token_id
    sub = router_load(out, cfg, tokens=image)
    assert sub.counts.sum(-1).tolist() == [int(image.sum()) * MOE["top_k"]] * cfg.lm.depth
    everything = router_load(out, cfg, tokens=torch.ones_like(ids, dtype=torch.bool))
    torch.testing.assert_close(everything.load, load.load)


def test_router_load_needs_an_moe_model():
    _, _, _, _, out = probe_forward("avgpool")
    with pytest.raises(ValueError, match="MoE"):
        router_load(out)


# ---- plots ---------------------------------------------------------------------------------------------------
def test_plot_functions_return_figures_headless():
    from mm1lab import plots

    cfg, _, ids, images, out = probe_forward("d-abstractor", moe=MOE)
    m = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=ids.shape[1] - 1, layer=1)[0]
    figures = {
        "image_attention": (plots.plot_image_attention(images[0], m["patch_map"], alpha=0.5, title="t"), 3),
        "sampling_points": (plots.plot_sampling_points(images[0], m["points"], m["point_weights"]), 2),
        "router_load": (plots.plot_router_load(router_load(out, cfg)), 2),
        "token_routing": (plots.plot_token_routing(out.routers[0].probs[:6], out.routers[0].experts[:6]), 2),
        "loss_curves": (plots.plot_loss_curves([{"step": 0, "loss": 3.0, "loss/caption": 3.1},
                                                {"step": 1, "loss": 2.5},                  # stream missing
                                                {"step": 2, "loss/text": 2.0, "lr": 1e-4}]), 2),
        "loss_total": (plots.plot_loss_curves([{"loss": 1.0}, {"loss": None}], by_stream=False), 1),
        "scores": (plots.plot_scores({"tasks": {
            "vqa": {"metric": "accuracy", "score": 0.4, "baseline": 0.25, "n": 50},
            "caption": {"metric": "cider", "score": 0.3, "n": 20}}}), 1),           # no baseline
        "scores_empty": (plots.plot_scores({}), 1),
    }
    for name, (fig, n_axes) in figures.items():
        assert isinstance(fig, Figure), name
        assert len(fig.axes) == n_axes, name
        fig.canvas.draw()                                                # really renders with Agg
    # A notebook cell shows a returned figure without pyplot's inline backend.
    assert figures["scores"][0]._repr_png_().startswith(b"\x89PNG")


def test_attention_maps_keep_the_picture_and_name_their_colour_scale():
    """Cells with no weight show the image untouched (opacity rises with the value), the plain image sits beside
    the map, and the colour bar says which scale is shown: renormalised within the image, or the share of all
    attention on a fixed range that compares across heads and layers."""
    import numpy as np

    from mm1lab import plots

    image = np.zeros((32, 32, 3))
    image[:16, :16] = (0.16, 0.7, 0.24)                                 # a green square, top left
    heat = np.zeros((4, 4))
    heat[3, 3] = 0.02                                                   # 2% of the attention, bottom right
    fig = plots.plot_image_attention(image, heat, scale="share", vmax=0.4)
    plain, over, bar = fig.axes
    assert np.array_equal(plain.get_images()[0].get_array(), image)
    rgba = over.get_images()[1].get_array()
    assert rgba[..., 3][heat == 0].max() == 0                           # clear where there is no attention
    assert 0 < rgba[3, 3, 3] < 0.1                                      # faint: 2% on a 0..40% range
    assert "share of the token's whole attention" in bar.get_ylabel() and "0 to 40.0%, fixed" in bar.get_ylabel()
    fig = plots.plot_image_attention(image, heat / heat.sum(), scale="image")
    assert "within the image" in fig.axes[2].get_ylabel() and "this view's maximum" in fig.axes[2].get_ylabel()
    assert fig.axes[1].get_images()[1].get_array()[3, 3, 3] == pytest.approx(0.8)   # its own maximum: opaque
    with pytest.raises(ValueError, match="scale="):
        plots.plot_image_attention(image, heat, scale="attention share")


def test_token_labels_name_special_tokens_instead_of_showing_blanks():
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.widgets import token_label

    tok = load_tokenizer()
    cfg = tiny_config()
    assert tok.decode([tok.end_id]) == ""                              # the plain decode drops it
    assert token_label(tok.end_id, cfg, tok.decode) == "'<|end|>'"
    assert token_label(tok.eos_id, cfg, tok.decode) == "'<eos>'"
    assert token_label(cfg.image_token_id, cfg, tok.decode) == "<image>"
    assert token_label(tok.encode(" red")[0], cfg, tok.decode) == "' red'"
    assert token_label(cfg.eos_token_id, cfg, lambda ids: "") == "<eos>"   # a decode without skip_special
    assert token_label(40, cfg, None) == "#40"


def test_to_display_accepts_pil_uint8_and_tensors():
    import numpy as np
    from PIL import Image

    from mm1lab.plots import to_display

    arr = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    for image in (arr, Image.fromarray(arr), torch.randn(3, 8, 8), torch.rand(8, 8)):
        shown = to_display(image)
        assert shown.shape == (8, 8, 3) and shown.min() >= 0 and shown.max() <= 1


# ---- widgets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["avgpool", "d-abstractor"])
def test_attention_explorer_builds_draws_and_shows_errors(kind):
    pytest.importorskip("ipywidgets")
    import ipywidgets

    from mm1lab.widgets import attention_explorer

    cfg = tiny_config(kind)
    model = MM1Model(cfg).eval()
    ids, images = two_image_batch(cfg)
    samples = [dict(input_ids=ids[0], images=images[:2], id="two"), (ids[1], images[2:])]
    ex = attention_explorer(model, samples, decode=lambda t: f"w{t[0]}", max_new_tokens=3)
    assert isinstance(ex.widget, ipywidgets.VBox)
    assert set(ex.controls) == {"sample", "token", "layer", "head", "image", "scale"}
    assert ex.controls["head"].options[0] == ("mean over heads", ex.controls["head"].value)   # shown, not blank
    assert ex.error is None
    pngs = [o for o in ex.output.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == (2 if kind == "d-abstractor" else 1)           # the initial draw happened
    ex.controls["sample"].value = 1                                    # a control change redraws
    assert ex.controls["image"].options == (("image 0", 0),) and ex.error is None
    ex.controls["head"].value = 1
    assert ex.error is None and any("image/png" in o.get("data", {}) for o in ex.output.outputs)
    note = ex.output.outputs[0]["data"]                                 # explanations wrap between words
    assert 'class="mm1lab-note"' in note["text/html"] and "word-break: normal" in note["text/html"]
    assert "fixed" in note["text/plain"]                                # the share scale: one range per token
    ex.controls["scale"].value = "image"
    assert ex.error is None and "within the image" in ex.output.outputs[0]["data"]["text/plain"]
    ex.redraw(layer=99)                                                # a bad layer: shown, not swallowed
    assert "layer=99" in ex.error
    (shown,) = ex.output.outputs
    assert shown["name"] == "stderr" and "IndexError" in shown["text"] and "layer=99" in shown["text"]


def test_router_explorer_builds_and_shows_errors():
    pytest.importorskip("ipywidgets")
    from mm1lab.widgets import router_explorer

    cfg = tiny_config("avgpool", moe=MOE)
    model = MM1Model(cfg).eval()
    ids, images = two_image_batch(cfg)
    ex = router_explorer(model, [(ids[0], images[:2]), (ids[1], images[2:])])
    assert ex.error is None
    assert sum("image/png" in o.get("data", {}) for o in ex.output.outputs) == 2
    ex.controls["tokens"].value = "image"
    assert ex.error is None
    ex.redraw(layer=5)
    assert ex.error is not None and "IndexError" in ex.output.outputs[0]["text"]
    with pytest.raises(ValueError, match="MoE"):
        router_explorer(MM1Model(tiny_config("avgpool")), [(ids[0], images[:2])])


def test_loss_curves_read_the_trainers_nested_stream_losses():
    from mm1lab.plots import plot_loss_curves

    records = [{"step": i, "loss": 5.0 - i, "stream_loss": {"caption": 4.0 - i, "text": 6.0 - i}} for i in range(3)]
    fig = plot_loss_curves(records)
    labels = sorted(line.get_label() for line in fig.axes[1].get_lines())
    assert labels == ["caption", "text"]


@pytest.mark.parametrize("name", ["05_probe", "09_interpret"])
def test_every_figure_a_probing_cell_builds_is_shown(name):
    """A cell shows only its last expression, so a figure built earlier in the cell (05_probe's "Where does the
    answer look?" once showed `PosixPath('.../metrics.json')` instead of its map) must be that expression, be
    named in it, or go through `display(...)`."""
    import ast
    from pathlib import Path

    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb", as_version=4)
    called = lambda node: getattr(node.func, "attr", getattr(node.func, "id", ""))      # noqa: E731
    hidden = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "interactive" in cell.metadata.get("tags", []):
            continue
        body = ast.parse(cell.source).body
        last = body[-1] if body and isinstance(body[-1], ast.Expr) else None
        shown = {id(n) for n in ast.walk(last)} if last else set()
        shown_names = {n.id for n in ast.walk(last) if isinstance(n, ast.Name)} if last else set()
        for statement in body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Call) and called(node) == "display":
                    shown |= {id(n) for n in ast.walk(node)}
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                        and called(node.value).startswith("plot_") \
                        and {t.id for t in node.targets if isinstance(t, ast.Name)} & shown_names:
                    shown.add(id(node.value))
        hidden += [(i, called(node)) for node in ast.walk(ast.Module(body=body, type_ignores=[]))
                   if isinstance(node, ast.Call) and called(node).startswith("plot_") and id(node) not in shown]
    assert not hidden, f"{name}: figures built but never shown (cell, function): {hidden}"
