"""From seeds to a verdict: means with 95% intervals, paired effects, and one rule per lesson.

Every arm of a lesson runs the same seeds, and seed s fixes the data order and the connector's initialisation in
every arm, so an effect is read as a paired difference: arm A's score minus arm B's, seed by seed. Its 95% interval
is Student's t over those differences (n seeds, n - 1 degrees of freedom). A claim is

- "reproduced" when every difference it makes is significantly in its direction (the interval excludes 0);
- "not reproduced" when one of them is significantly the other way;
- "inconclusive" otherwise: the intervals are too wide for this budget to tell.

Scores per run (from 02_pretrain's metrics.json): MM1's average at 0, 4 and 8 shots (captioning CIDEr and VQA-style
accuracy, x100), "few" = the mean of the 4- and 8-shot averages, "all" = the mean over 0, 4 and 8 shots, "text"
= TextCore accuracy x100, and "caption0" = 0-shot captioning CIDEr x100 (reported beside, never in a verdict).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean, stdev

# Two-sided 95% Student t quantiles by degrees of freedom (scipy is not a dependency).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}

Scores = dict[str, dict[str, list[float]]]     # arm -> metric -> one value per seed (seed order shared by arms)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (table, nearest lower entry above 30: 1.96)."""
    if df <= 0:
        return math.inf
    return T975.get(df) or (T975[max(k for k in T975 if k <= df)] if df <= 30 else 1.96)


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% t-interval (infinite with a single value)."""
    m = mean(values)
    if len(values) < 2:
        return m, -math.inf, math.inf
    half = t_quantile(len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


@dataclass
class Effect:
    """A paired difference across seeds: mean and 95% interval; `sign` +1 / -1 when significant, else 0."""

    name: str
    values: list[float]
    mean: float = 0.0
    low: float = 0.0
    high: float = 0.0

    def __post_init__(self) -> None:
        self.mean, self.low, self.high = interval(self.values)

    @property
    def sign(self) -> int:
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


@dataclass
class Verdict:
    """The lesson's verdict, the effects it was read from, and why."""

    verdict: str
    effects: list[Effect] = field(default_factory=list)
    reason: str = ""


def derived(scores: Scores) -> Scores:
    """Add "few" (mean of 4- and 8-shot) and "all" (mean of 0, 4, 8-shot) to every arm."""
    out = {}
    for arm, metrics in scores.items():
        m = dict(metrics)
        shots = [k for k in ("0shot", "4shot", "8shot") if k in m]
        n = len(next(iter(metrics.values())))
        if "4shot" in m and "8shot" in m:
            m["few"] = [(m["4shot"][i] + m["8shot"][i]) / 2 for i in range(n)]
        if shots:
            m["all"] = [sum(m[k][i] for k in shots) / len(shots) for i in range(n)]
        out[arm] = m
    return out


def diff(scores: Scores, a: str, b: str, metric: str, name: str | None = None) -> Effect:
    """Arm a minus arm b on `metric`, seed by seed."""
    return Effect(name or f"{a} - {b} ({metric})", [x - y for x, y in zip(scores[a][metric], scores[b][metric])])


def _all_in_direction(effects: list[Effect]) -> Verdict:
    if all(e.sign > 0 for e in effects):
        return Verdict("reproduced", effects, "every difference the claim makes is significantly positive")
    against = [e.name for e in effects if e.sign < 0]
    if against:
        return Verdict("not reproduced", effects, f"significantly the other way: {', '.join(against)}")
    return Verdict("inconclusive", effects, "the intervals include zero: not enough seeds or steps to tell")


def largest_first(s: Scores) -> Verdict:
    """Encoder: the resolution effect is positive and larger than the size and objective effects (in size)."""
    res = diff(s, "clip-128", "clip-64", "all", "resolution: clip-128 - clip-64")
    others = [diff(s, "clip-small-64", "clip-64", "all", "size: clip-small - clip-64"),
              diff(s, "aim-64", "clip-64", "all", "objective: aim - clip")]
    margins = [Effect(f"resolution - |{o.name.split(':')[0]}|", [r - abs(x) for r, x in zip(res.values, o.values)])
               for o in others]
    verdict = _all_in_direction([res, *margins])
    verdict.effects = [res, *others, *margins]
    return verdict


def tokens_and_resolution_over_type(s: Scores) -> Verdict:
    """Connector: the token-count and resolution effects each exceed the spread between connector types."""
    types = [t for t in ("avgpool", "attnpool", "c-abstractor", "d-abstractor") if t in s]   # d-: gpu scale only
    n = len(s["c-abstractor"]["all"])
    spread = Effect("type spread (best - worst type)",
                    [max(s[t]["all"][i] for t in types) - min(s[t]["all"][i] for t in types) for i in range(n)])
    tokens = diff(s, "tokens-64", "tokens-4", "all", "tokens: 64 - 4")
    res = diff(s, "res-128", "c-abstractor", "all", "resolution: 128 - 64 px")
    margins = [Effect(f"{e.name.split(':')[0]} - type spread", [x - y for x, y in zip(e.values, spread.values)])
               for e in (tokens, res)]
    verdict = _all_in_direction(margins)
    verdict.effects = [tokens, res, spread, *margins]
    return verdict


def caption_zero_interleaved_few(s: Scores) -> Verdict:
    """Data 1: captions lift 0-shot; interleaved data lifts few-shot (and text-only, reported beside)."""
    effects = [diff(s, "captions-100", "captions-0", "0shot", "0-shot: captions 100% - 0%"),
               diff(s, "captions-0", "captions-100", "few", "few-shot: interleaved 100% - 0%")]
    verdict = _all_in_direction(effects)
    verdict.effects.append(diff(s, "captions-0", "captions-100", "text", "text-only: interleaved 100% - 0%"))
    if all("caption0" in m for m in s.values()):   # reported beside: the average is mostly VQA-style tasks
        verdict.effects.append(diff(s, "captions-100", "captions-0", "caption0",
                                    "0-shot captioning alone (CIDEr): captions 100% - 0%"))
    return verdict


def text_helps_few_and_text(s: Scores) -> Verdict:
    """Data 2: text-only data lifts few-shot and text-only scores."""
    return _all_in_direction([diff(s, "text-30", "text-0", "few", "few-shot: text 30% - 0%"),
                              diff(s, "text-30", "text-0", "text", "text-only: text 30% - 0%")])


def mixture_best(s: Scores) -> Verdict:
    """Data 3: 5:5:1 is not significantly below any mix (multimodal) and beats at least one, and keeps text-only
    performance (not significantly below the best text-only arm)."""
    others = [a for a in s if a != "5:5:1"]
    vs = [diff(s, "5:5:1", a, "all", f"5:5:1 - {a} (all shots)") for a in others]
    best_text = max(others, key=lambda a: mean(s[a]["text"]))
    text = diff(s, "5:5:1", best_text, "text", f"5:5:1 - {best_text} (text-only)")
    worse = [e.name for e in vs if e.sign < 0]
    if worse:
        verdict = Verdict("not reproduced", [], f"another mixture is significantly better: {', '.join(worse)}")
    elif any(e.sign > 0 for e in vs) and text.sign >= 0:
        verdict = Verdict("reproduced", [], "5:5:1 is never significantly worse, significantly better than at least "
                                            "one mix, and keeps text-only performance")
    else:
        verdict = Verdict("inconclusive", [], "5:5:1 is not separated from the other mixes at this budget")
    verdict.effects = [*vs, text]
    return verdict


def positive_few(s: Scores) -> Verdict:
    """Data 4: synthetic (dense) captions lift few-shot scores."""
    return _all_in_direction([diff(s, "dense-7", "dense-0", "few", "few-shot: dense captions on - off")])


RULES: dict[str, Callable[[Scores], Verdict]] = {f.__name__: f for f in (
    largest_first, tokens_and_resolution_over_type, caption_zero_interleaved_few, text_helps_few_and_text,
    mixture_best, positive_few)}


def judge(rule: str, scores: Scores) -> Verdict:
    """Apply lesson rule `rule` to per-arm, per-seed scores."""
    return RULES[rule](derived(scores))
