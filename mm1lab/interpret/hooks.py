"""Named hook points on `MM1Model`: record any activation (a cache) or edit it (ablate, patch, steer).

N - images, t - encoder tokens (CLS first when the encoder has one), p - patches, k - image tokens per image,
b - batch, n - sequence, s - keys (cached + new), h - heads, e - experts, dv / d / dh - encoder / LM / head width

Every hook point is a PyTorch forward hook on one of the model's own modules, declared once in `HOOK_POINTS`, so
the model files carry no probing code. `{i}` is a block index:

| name | shape | what |
| --- | --- | --- |
| `vision.embed` | (N, t, dv) | encoder input: patch embeddings + positions (after `ln_pre`) |
| `vision.{i}.resid` | (N, t, dv) | encoder residual stream after block i |
| `vision.{i}.pattern` | (N, h, t, t) | encoder attention probabilities of block i (read only) |
| `vision.features` | (N, p, dv) | the patch features handed to the connector |
| `connector.tokens` | (N, k, d) | image tokens in LM space (what fills the placeholders) |
| `lm.embed` | (b, n, d) | LM input: text embeddings with the image tokens written in |
| `lm.{i}.attn` | (b, n, d) | attention output of layer i, before the residual add |
| `lm.{i}.heads` | (b, n, h, dh) | each head's output before `o_proj` (ablate or patch a head here) |
| `lm.{i}.pattern` | (b, h, n, s) | LM attention probabilities of layer i (read only) |
| `lm.{i}.ffn` | (b, n, d) | FFN (or MoE) output of layer i, before the residual add |
| `lm.{i}.router` | (b, n, e) | router probabilities of an MoE layer (read only) |
| `lm.{i}.resid` | (b, n, d) | LM residual stream after layer i |
| `lm.norm` | (b, n, d) | the final RMSNorm's output, what the LM head reads |

An edit is `fn(activation, ctx) -> new activation or None` (None keeps it); `ablate`, `patch` and `steer` build the
common ones. Recording keeps the value after the edits. Patterns are recorded by switching the attention modules to
their explicit path (SDPA never materialises them), so recording a pattern changes numerics at the 1e-6 level.

While a hook is attached inside the LM, `generate` runs every decode step through the module path (the packed step
would bypass the hooks), and a cache joins the steps along the sequence axis: `cache["lm.1.resid"]` after
`generate` covers prompt + generated tokens, as one forward over them would.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


@dataclass(frozen=True)
class HookPoint:
    """Where one named activation lives: a module path ({i}: block index), its input or output, and, for a tuple
    output, which item. `layout` names the axes (see the module legend)."""

    module: str
    at: str                  # "input" (first positional argument) or "output"
    layout: str
    what: str
    item: int = 0            # the item of a tuple output (a tensor output is taken as it is)
    editable: bool = True
    pattern: bool = False    # needs the attention module's explicit path


HOOK_POINTS: dict[str, HookPoint] = {
    "vision.embed": HookPoint("vision.norm_pre", "output", "N t dv", "encoder input: patch embeddings + positions"),
    "vision.{i}.resid": HookPoint("vision.blocks.{i}", "output", "N t dv", "encoder residual stream after block i"),
    "vision.{i}.pattern": HookPoint("vision.blocks.{i}.attn", "output", "N h t t",
                                    "encoder attention probabilities", item=1, editable=False, pattern=True),
    "vision.features": HookPoint("connector", "input", "N p dv", "patch features handed to the connector"),
    "connector.tokens": HookPoint("connector", "output", "N k d", "image tokens in LM space"),
    "lm.embed": HookPoint("lm", "input", "b n d", "LM input embeddings, image tokens written in"),
    "lm.{i}.attn": HookPoint("lm.layers.{i}.attn", "output", "b n d", "attention output before the residual add"),
    "lm.{i}.heads": HookPoint("lm.layers.{i}.attn.o_proj", "input", "b n h dh", "each head's output before o_proj"),
    "lm.{i}.pattern": HookPoint("lm.layers.{i}.attn", "output", "b h n s", "LM attention probabilities",
                                item=1, editable=False, pattern=True),
    "lm.{i}.ffn": HookPoint("lm.layers.{i}.ffn", "output", "b n d", "FFN or MoE output before the residual add"),
    "lm.{i}.router": HookPoint("lm.layers.{i}.ffn", "output", "b n e", "MoE router probabilities",
                               item=1, editable=False),
    "lm.{i}.resid": HookPoint("lm.layers.{i}", "output", "b n d", "LM residual stream after layer i"),
    "lm.norm": HookPoint("lm.norm", "output", "b n d", "final norm output, what the LM head reads"),
}


def hook_names(cfg) -> list[str]:
    """Every hook point name of a model with config `cfg`, in the order a forward pass reaches them."""
    names = ["vision.embed"]
    for i in range(cfg.vision.depth):
        names += [f"vision.{i}.pattern", f"vision.{i}.resid"]
    names += ["vision.features", "connector.tokens", "lm.embed"]
    for i in range(cfg.lm.depth):
        names += [f"lm.{i}.heads", f"lm.{i}.pattern", f"lm.{i}.attn", f"lm.{i}.ffn"]
        names += [f"lm.{i}.router"] if cfg.lm.is_moe_layer(i) else []
        names += [f"lm.{i}.resid"]
    return names + ["lm.norm"]


def point_of(name: str) -> tuple[HookPoint, int | None]:
    """The declared HookPoint of a concrete name ('lm.3.resid') and its block index (None for unnumbered ones)."""
    parts = name.split(".")
    if len(parts) == 3 and parts[1].isdigit():
        key, index = f"{parts[0]}.{{i}}.{parts[2]}", int(parts[1])
    else:
        key, index = name, None
    if key not in HOOK_POINTS:
        raise KeyError(f"unknown hook point {name!r}; names are {', '.join(HOOK_POINTS)} ({{i}}: a block index); "
                       "mm1lab.interpret.hook_names(cfg) lists every one of a model")
    return HOOK_POINTS[key], index


@dataclass
class HookContext:
    """What an edit is told: the hook `name` and `start`, the sequence position of axis 1's first entry (the KV cache
    length for `lm.*` points during `generate`; else 0)."""

    name: str
    start: int


Edit = Callable[[Tensor, HookContext], "Tensor | None"]


@dataclass
class ActivationCache:
    """Recorded activations by hook name. `cache[name]` joins the forward calls of one hooked block (the steps of
    `generate`) along the sequence axis; `calls` keeps them per call; `output` is the MM1Output of `run_with_cache`."""

    calls: list[dict[str, Tensor]] = field(default_factory=list)
    output: object | None = None

    def __getitem__(self, name: str) -> Tensor:
        parts = [call[name] for call in self.calls if name in call]
        if not parts:
            raise KeyError(f"{name!r} was not recorded; recorded: {', '.join(self.keys()) or 'nothing'}")
        return parts[0] if len(parts) == 1 else _join(parts, point_of(name)[0].layout)

    def __contains__(self, name: str) -> bool:
        return any(name in call for call in self.calls)

    def keys(self) -> list[str]:
        """Recorded names in the order the forward pass reached them."""
        seen: dict[str, None] = {}
        for call in self.calls:
            seen.update(dict.fromkeys(call))
        return list(seen)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every recorded name with its (joined) shape."""
        return {name: tuple(self[name].shape) for name in self.keys()}


def _join(parts: list[Tensor], layout: str) -> Tensor:
    axes = layout.split()
    if axes[0] == "N":                                   # images: only the prompt's call encodes them
        return torch.cat(parts, 0)
    if "s" in axes:                                      # patterns: pad the growing key axis, then stack the queries
        keys = max(p.shape[-1] for p in parts)
        parts = [F.pad(p, (0, keys - p.shape[-1])) for p in parts]
    return torch.cat(parts, axes.index("n"))


def _wanted(record: str | Iterable[str] | None, names: list[str]) -> list[str]:
    """Names matching `record`: None, a glob ('lm.*.resid', '*') or a list of names and globs."""
    if record is None:
        return []
    patterns = [record] if isinstance(record, str) else list(record)
    out = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if missing:
        raise KeyError(f"record: {missing} match no hook point of this model; see mm1lab.interpret.hook_names(cfg)")
    return out


@contextmanager
def hooked(model, *, edits: Mapping[str, Edit | list[Edit]] | None = None,
           record: str | Iterable[str] | None = None, detach: bool = True) -> Iterator[ActivationCache]:
    """Attach edits and recorders to `model` for the duration of a `with` block; yields the ActivationCache.

    edits: {hook name: edit or list of edits}, applied in order (see `ablate`, `patch`, `steer`).
    record: names or globs to record ('*' for all, 'lm.*.resid'); recorded after the edits.
    detach: False keeps recorded tensors in the autograd graph (for gradients with respect to activations).
    Works under `no_grad` and around `generate`; the hooks are removed when the block ends, even on error.
    """
    names = hook_names(model.cfg)
    edits = {name: list(fns) if isinstance(fns, (list, tuple)) else [fns] for name, fns in (edits or {}).items()}
    for name in edits:
        point, _ = point_of(name)
        if name not in names:
            raise KeyError(f"edit at {name!r}: this model has no such hook point (block index out of range, or not "
                           "an MoE layer)")
        if not point.editable:
            raise ValueError(f"{name!r} is read only: {point.what}. Edit an activation instead (e.g. lm.i.heads)")
    wanted = set(_wanted(record, names))
    cache = ActivationCache()
    state = {"start": 0}
    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        if name in wanted or name in edits:
            point, index = point_of(name)
            groups.setdefault((point.module.format(i=index), point.at), []).append(name)
    handles = []

    def store(name: str, value: Tensor) -> None:
        if name not in wanted:
            return
        if not cache.calls or name in cache.calls[-1]:      # each point fires once per forward call
            cache.calls.append({})
        cache.calls[-1][name] = value.detach() if detach else value

    def run(name: str, x: Tensor) -> Tensor:
        ctx = HookContext(name, state["start"] if name.startswith("lm.") else 0)
        for fn in edits.get(name, ()):
            y = fn(x, ctx)
            if y is not None:
                if y.shape != x.shape:
                    raise ValueError(f"edit at {name!r} returned shape {tuple(y.shape)}, expected {tuple(x.shape)}")
                x = y
        store(name, x)
        return x

    def output_hook(group: list[str]):
        def hook(module, args, output):
            is_tuple = isinstance(output, tuple)
            items = list(output) if is_tuple else [output]
            for name in group:
                point, _ = point_of(name)
                value = items[point.item] if is_tuple else items[0]
                if name.endswith(".router"):
                    store(name, rearrange(value.probs, '(b n) e -> b n e', b=args[0].shape[0]))
                elif value is not None:
                    items[point.item if is_tuple else 0] = run(name, value)
            return tuple(items) if is_tuple else items[0]
        return hook

    def input_hook(group: list[str], heads: int | None):
        def hook(module, args):
            x = args[0]
            for name in group:
                if name.endswith(".heads"):
                    x = rearrange(run(name, rearrange(x, 'b n (h dh) -> b n h dh', h=heads)), 'b n h dh -> b n (h dh)')
                else:
                    x = run(name, x)
            return (x, *args[1:])
        return hook

    def lm_start(module, args, kwargs):                    # where axis 1 of the LM's activations starts
        cache_ = kwargs.get("cache")
        state["start"] = cache_.length if cache_ is not None else 0

    def explicit(module, args, kwargs):                    # patterns exist only on the explicit attention path
        return args, {**kwargs, "return_attention": True}

    try:
        handles.append(model.lm.register_forward_pre_hook(lm_start, with_kwargs=True))
        for (path, at), group in groups.items():
            module = model.get_submodule(path)
            if at == "input":
                heads = model.cfg.lm.heads if path.endswith("o_proj") else None
                handles.append(module.register_forward_pre_hook(input_hook(group, heads)))
            else:
                handles.append(module.register_forward_hook(output_hook(group)))
            if any(point_of(n)[0].pattern for n in group):
                handles.append(module.register_forward_pre_hook(explicit, with_kwargs=True))
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def run_with_cache(model, input_ids: Tensor, images=None, *, record: str | Iterable[str] | None = "*",
                   edits: Mapping[str, Edit | list[Edit]] | None = None, detach: bool = True,
                   **forward_kwargs) -> ActivationCache:
    """One forward pass recording `record` (default: every hook point) -> ActivationCache, `output` included.

    When patterns are recorded the forward runs with `return_attention=True`, so `cache.output` also carries the
    connector's regions for mapping image tokens back onto patches. Runs in the caller's grad mode.
    """
    wanted = _wanted(record, hook_names(model.cfg))
    if any(point_of(n)[0].pattern for n in wanted):
        forward_kwargs.setdefault("return_attention", True)
    with hooked(model, edits=edits, record=wanted, detach=detach) as cache:
        cache.output = model(input_ids, images, **forward_kwargs)
    return cache


def run_with_hooks(model, input_ids: Tensor, images=None, *, edits: Mapping[str, Edit | list[Edit]],
                   **forward_kwargs):
    """One forward pass with `edits` applied -> MM1Output."""
    with hooked(model, edits=edits):
        return model(input_ids, images, **forward_kwargs)


# ---- edits ------------------------------------------------------------------------------------------------------
def _where(x: Tensor, ctx: HookContext, positions, samples, heads) -> Tensor:
    """A boolean mask broadcastable to `x`: True at the chosen samples (axis 0), positions (axis 1, shifted by
    ctx.start) and heads (axis 2 of 'b n h dh')."""
    mask = torch.ones(x.shape[:3] if heads is not None else x.shape[:2], dtype=torch.bool, device=x.device)
    if samples is not None:
        keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        keep[torch.as_tensor(samples, device=x.device)] = True
        mask &= keep.view(-1, *[1] * (mask.dim() - 1))
    if positions is not None:
        pos = torch.as_tensor(positions, device=x.device).flatten() - ctx.start
        keep = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        keep[pos[(pos >= 0) & (pos < x.shape[1])]] = True
        mask &= keep.view(1, -1, *[1] * (mask.dim() - 2))
    if heads is not None:
        keep = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
        keep[torch.as_tensor(heads, device=x.device)] = True
        mask &= keep.view(1, 1, -1)
    return mask.view(*mask.shape, *[1] * (x.dim() - mask.dim()))


def ablate(*, positions=None, samples=None, heads=None, value: float | Tensor = 0.0) -> Edit:
    """Replace the activation at `positions` (axis 1: sequence positions for `lm.*` points, encoder tokens, patches
    or image tokens for the others), `samples` and `heads` (for `lm.i.heads`) with `value`: 0 zero-ablates; a mean
    activation (broadcastable) mean-ablates. None selects everything on that axis."""
    def edit(x: Tensor, ctx: HookContext) -> Tensor:
        return torch.where(_where(x, ctx, positions, samples, heads), torch.as_tensor(value).to(x), x)
    return edit


def patch(source: Tensor, *, positions=None, samples=None, heads=None) -> Edit:
    """Write `source` (the same hook's activation from another run, e.g. `clean_cache[name]`) over this one at
    `positions`, `samples`, `heads`. A batch-1 source patches every sample; for `lm.*` points it covers the whole
    sequence and is sliced to each call's window, so it also patches during `generate`."""
    def edit(x: Tensor, ctx: HookContext) -> Tensor:
        mask = _where(x, ctx, positions, samples, heads)
        if not bool(mask.any()):
            return x
        src = source
        if ctx.name.startswith("lm.") and src.shape[1] != x.shape[1]:
            src = src[:, ctx.start:ctx.start + x.shape[1]]
            if src.shape[1] != x.shape[1]:
                raise ValueError(f"patch at {ctx.name!r}: the source covers {source.shape[1]} positions, this call "
                                 f"needs {ctx.start}..{ctx.start + x.shape[1] - 1}")
        return torch.where(mask, src.to(x), x)
    return edit


def steer(vector: Tensor, *, scale: float = 1.0, positions=None, samples=None) -> Edit:
    """Add `scale * vector` (the activation's last axis, e.g. (d,)) at `positions` and `samples` (None: all)."""
    def edit(x: Tensor, ctx: HookContext) -> Tensor:
        return x + _where(x, ctx, positions, samples, None) * (scale * vector.to(x))
    return edit
