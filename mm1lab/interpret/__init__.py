"""Taking MM1 apart: named hook points with a cache, logit lens, activation patching, head views, attribution.

    hooks.py        HOOK_POINTS, hook_names, hooked, run_with_cache, run_with_hooks; edits ablate, patch, steer
    lens.py         logit_lens: every layer's residual stream read through the final norm and LM head
    patching.py     activation_patching: clean activations into a corrupt run, per layer x position (or head)
    heads.py        head_view: one token's attention in every layer and head, mapped onto the image
    attribution.py  attribute: attention, rollout, gradient x attention, gradient x input onto image patches
    pairs.py        counting_pair: the same ShapeWorld scene with one shape removed (a patching pair)
    plots.py        the figures; widgets.py the JupyterLab explorers (import it explicitly)

`docs/interpret.md` walks through them; notebooks/09_interpret.ipynb tells the story on the demo's model.
"""

from mm1lab.interpret.attribution import METHODS, Attribution, attribute
from mm1lab.interpret.heads import HeadView, head_view
from mm1lab.interpret.hooks import (
    HOOK_POINTS,
    ActivationCache,
    HookContext,
    ablate,
    hook_names,
    hooked,
    patch,
    run_with_cache,
    run_with_hooks,
    steer,
)
from mm1lab.interpret.lens import LogitLens, lens_names, logit_lens
from mm1lab.interpret.pairs import counting_pair
from mm1lab.interpret.patching import PatchingResult, activation_patching

__all__ = ["HOOK_POINTS", "METHODS", "ActivationCache", "Attribution", "HeadView", "HookContext", "LogitLens",
           "PatchingResult", "ablate", "activation_patching", "attribute", "counting_pair", "head_view",
           "hook_names", "hooked", "lens_names", "logit_lens", "patch", "run_with_cache", "run_with_hooks", "steer"]
