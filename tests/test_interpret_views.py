"""Head views, attribution, counting pairs, the interpretability figures and explorers (headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from test_interpret import model_and_input  # noqa: E402

from mm1lab import MM1Config  # noqa: E402
from mm1lab.interpret import METHODS, attribute, counting_pair, head_view, run_with_cache  # noqa: E402
from mm1lab.probe import image_attention  # noqa: E402

CONNECTORS = ["avgpool", "c-abstractor", "d-abstractor"]


@pytest.mark.parametrize("kind", CONNECTORS)
def test_head_view_maps_are_each_heads_attention_through_the_regions(kind):
    cfg, model, ids, images = model_and_input(kind)
    with torch.no_grad():
        out = model(ids, images, return_attention=True)
    query = ids.shape[1] - 1
    view = head_view(out, cfg, input_ids=ids, query_pos=-1)
    assert view.maps.shape == (cfg.lm.depth, cfg.lm.heads, 1, *out.vision.grid) and view.query_pos == query
    for layer in range(cfg.lm.depth):
        for head in range(cfg.lm.heads):
            (m,) = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=query, layer=layer, head=head,
                                   normalise=False)
            torch.testing.assert_close(view.maps[layer, head, 0], m["patch_map"])
            assert view.image_share[layer, head] == pytest.approx(m["mass"], abs=1e-6)
        (mean,) = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=query, layer=layer)
        torch.testing.assert_close(view.maps[layer, :, 0].mean(0) / view.maps[layer, :, 0].mean(0).sum(),
                                   mean["patch_map"])
    torch.testing.assert_close(view.within_image(0).sum((-2, -1)), torch.ones(cfg.lm.depth, cfg.lm.heads))


@pytest.mark.parametrize("kind", CONNECTORS)
def test_attribution_maps_are_distributions_and_leave_the_weights_alone(kind):
    cfg, model, ids, images = model_and_input(kind)
    found = attribute(model, ids, images, target=9)
    assert set(found) == set(METHODS)
    for method, a in found.items():
        assert a.patch_maps[0].shape == (cfg.vision.image_size // cfg.vision.patch_size,) * 2
        assert a.patch_maps[0].sum() == pytest.approx(1.0, abs=1e-5), method
        assert (a.patch_maps[0] >= 0).all() and a.token_scores[0].shape == (cfg.image_tokens,)
    assert all(p.grad is None for p in model.parameters())              # gradients only for activations
    # Plain attention is probe.image_attention of the last layer (mean over heads).
    with torch.no_grad():
        out = model(ids, images, return_attention=True)
    (m,) = image_attention(out, cfg, input_ids=ids, sample=0, query_pos=ids.shape[1] - 1, layer=-1)
    torch.testing.assert_close(found["attention"].patch_maps[0], m["patch_map"])


def test_grad_input_and_rollout_agree_with_their_definitions():
    cfg, model, ids, images = model_and_input()
    found = attribute(model, ids, images, target=9, methods=("rollout", "grad_input"))
    with torch.no_grad():
        cache = run_with_cache(model, ids, images, record="lm.embed", return_attention=True)
    x = cache["lm.embed"].clone().requires_grad_(True)
    logit = model.lm(x, torch.arange(ids.shape[1])[None]).logits[0, -1, 9]
    (grad,) = torch.autograd.grad(logit, x)
    torch.testing.assert_close(found["grad_input"].scores, (grad * x.detach())[0].sum(-1))
    rollout = found["rollout"].scores                                    # a mixture of attention rows: sums to 1
    assert rollout.sum() == pytest.approx(1.0, abs=1e-5) and (rollout >= 0).all()
    with pytest.raises(ValueError, match="unknown methods"):
        attribute(model, ids, images, target=9, methods=("saliency",))


def test_counting_pair_differs_only_in_the_removed_shape():
    from mm1lab.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    model = SimpleNamespace(cfg=MM1Config.preset("tiny"))                # only the config is read
    pair = counting_pair(model, tok, objects=3)
    clean, corrupt = pair["clean"], pair["corrupt"]
    assert torch.equal(clean["input_ids"], corrupt["input_ids"])
    assert len(clean["scene"].objects) == 3 and clean["scene"].objects[:2] == corrupt["scene"].objects
    assert tok.decode([pair["answer"]]).strip() == "3" and tok.decode([pair["wrong"]]).strip() == "2"
    assert not torch.equal(clean["images"], corrupt["images"])
    with pytest.raises(ValueError, match="at least one"):
        counting_pair(model, tok, objects=1)


# ---- figures ----------------------------------------------------------------------------------------------------
def test_interpret_figures_render_headless():
    import numpy as np

    from mm1lab.interpret import plots as ip

    image = np.random.rand(32, 32, 3)
    grid = (4, 4)
    regions = torch.rand(4, 16)
    figures = {
        "logit_lens": (ip.plot_logit_lens(np.random.rand(3, 5), [["a"] * 5] * 3, layers=["e", "0", "1"],
                                          columns=list("vwxyz")), 2),
        "patching": (ip.plot_patching(np.random.randn(3, 9), layers=["e", "0", "1"], columns=list("abcdefghi"),
                                      is_image=np.arange(9) % 2), 2),
        "effect_map": (ip.plot_effect_map(image, np.random.randn(4, 4)), 3),
        "head_grid": (ip.plot_head_grid(np.random.rand(2, 4)), 2),
        "head_maps": (ip.plot_head_maps(image, np.random.rand(4, 4, 4), labels=list("abcd"), vmax=0.25), 5),
        "head_maps_odd": (ip.plot_head_maps(image, np.random.rand(5, 4, 4), labels=list("abcde"), columns=4), 9),
        "attributions": (ip.plot_attributions(image, {m: np.random.rand(4, 4) for m in METHODS}, title="t"), 5),
        "token_words": (ip.plot_token_words(image, ip.region_centres(regions, grid), list("abcd")), 1),
    }
    for name, (fig, n_axes) in figures.items():
        assert isinstance(fig, Figure), name
        assert len(fig.axes) == n_axes, name
        fig.canvas.draw()
    assert "0 to 25.0%, fixed" in figures["head_maps"][0].axes[-1].get_ylabel()
    centres = ip.region_centres(torch.eye(16), grid)                     # one token per patch: the patch centres
    assert centres[0].tolist() == [0.125, 0.125] and centres[-1].tolist() == [0.875, 0.875]


# ---- explorers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lens", "patching", "heads", "attribution"])
def test_interpret_explorers_build_draw_and_show_errors(name):
    pytest.importorskip("ipywidgets")
    from mm1lab.interpret import widgets

    cfg, model, ids, images = model_and_input("c-abstractor")
    other = images + torch.randn_like(images)
    samples = [dict(input_ids=ids[0], images=images, id="a"), (ids[0], other)]
    if name == "patching":
        ex = widgets.patching_explorer(model, [dict(clean=samples[0], corrupt=dict(input_ids=ids, images=other),
                                                    answer=9, wrong=10)])
    else:
        build = dict(lens=widgets.lens_explorer, heads=widgets.head_explorer,
                     attribution=widgets.attribution_explorer)[name]
        ex = build(model, samples, decode=lambda t: f"w{t[0]}", max_new_tokens=3)
    assert ex.error is None, ex.error
    assert any("image/png" in o.get("data", {}) for o in ex.output.outputs)
    assert ex.output.outputs[0]["data"]["text/html"].startswith('<div class="mm1lab-note"')
    for control_name, control in ex.controls.items():                  # every control redraws without error
        options = getattr(control, "options", None)
        if options and len(options) > 1:
            last = options[-1]
            control.value = last[1] if isinstance(last, tuple) else last
            assert ex.error is None, (control_name, ex.error)
    ex.redraw(sample=7)                                                  # a bad value: shown, not swallowed
    assert ex.error is not None and ex.output.outputs[0]["name"] == "stderr"
