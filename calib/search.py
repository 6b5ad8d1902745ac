"""The accuracy-aware search every INT8 path shares: the fewest layers to keep in float for a budget.

1. Measure full INT8; if it meets the budget, nothing stays float.
2. Measure with every candidate layer in float. That probe is the FP32 model (each engine puts back the float
   inputs, weights and biases of every candidate), so it meets every budget: a probe within the FP32 parity target
   of the reference (``Budget.atol``) passes whatever drop its numerical noise shows. If it still misses, the
   budget is out of reach: say so with the best drop reached, why it misses (a set too small to tell says how many
   labelled images would), how far that probe is from the reference and which ops the engine kept quantised.
3. Rank the layers by sensitivity: how much keeping that one layer in float improves (1 - map r) + metric drop.
4. Keep the top-k in float for the smallest k that meets the budget: doubling, then bisection (about 2 log2 n
   measurements). At least one layer stays INT8: an "INT8" artifact with every layer in float is the FP32 model.

The engine supplies ``measure(layers, quick)``: the fidelity of its INT8 model with ``layers`` in float
(``quick``: a cheaper set-up for the many ranking measurements, same numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgead import precisions
from edgead.errors import FidelityError
from edgead.fidelity import Budget, Fidelity

Measure = Callable[[list[str], bool], Fidelity]


@dataclass(frozen=True)
class Search:
    """The outcome of the accuracy-aware search: the float layers chosen and what each step measured."""

    float_layers: list[str]
    sensitivity: dict[str, float]
    steps: list[dict[str, Any]]
    fidelity: Fidelity


def _loss(f: Fidelity, metric: str) -> float:
    """A continuous badness for ranking: map error plus the metric drop (NaN counts as worst)."""
    drop = f.drop(metric) if metric != "map_r" else 0.0
    v = (1.0 - f.map_r) + max(0.0, drop or 0.0)
    return float(v) if np.isfinite(v) else float("inf")


def parity_failures(f: Fidelity, budget: Budget) -> list[str]:
    """What keeps ``f`` from being the FP32 model: the FP32 parity target (``budget.atol``) applied to it."""
    return Budget(atol=budget.atol).failures(replace(f, precision=precisions.full().name))


def fewest_float_layers(layers: Sequence[str], measure: Measure, budget: Budget, what: str,
                        progress: Any = None, max_float: int | None = None,
                        still_quantised: Sequence[str] = ()) -> Search:
    """Fewest of ``layers`` to keep in float so that ``measure`` meets ``budget`` (see the module docstring).

    ``still_quantised``: the ops the engine leaves quantised with every one of ``layers`` in float (named when
    the all-float probe misses the budget).
    """
    metric = budget.metric
    layers = list(layers)
    steps: list[dict[str, Any]] = []

    def step(chosen: list[str], f: Fidelity) -> bool:
        ok = not budget.failures(f)
        rec = {"float_layers": len(chosen), "map_r": f.map_r, "drop": f.drop(metric), "passed": ok}
        if chosen and len(chosen) == len(layers):  # the all-float probe: the FP32 model, within its parity target
            rec["fp32_parity"] = not parity_failures(f, budget)
            rec["passed"] = ok = ok or rec["fp32_parity"]
        steps.append(rec)
        return ok

    def impossible(best: Fidelity, n: int, cap: int | None = None) -> FidelityError:
        drop = best.drop(metric)
        if cap is None:  # the all-float probe is not the FP32 model: say how far it is, and what stays quantised
            kept = (f"; {len(still_quantised)} ops stay quantised in it: {', '.join(still_quantised[:5])}"
                    f"{', ...' if len(still_quantised) > 5 else ''}" if still_quantised else "")
            how = (f"even with all {n} candidate layers in float (that probe is not the FP32 model: "
                   f"{'; '.join(parity_failures(every, budget))}{kept})")
        else:
            how = f"with at most {cap} of {n} layers in float"
        if cap == n - 1 and n > 0:
            how += " (all of them would be the FP32 model, not INT8)"
        return FidelityError(
            f"{what} cannot meet the budget ({metric} drop <= {budget.max_drop}, map r >= {budget.min_map_r}) "
            f"{how}; best reached: {metric} drop {'n/a' if drop is None else f'{drop:.6f}'}, map r "
            f"{best.map_r:.6f} ({'; '.join(budget.failures(best))}); nothing written")

    full = every = measure([], False)
    if step([], full):
        return Search([], {}, steps, full)
    if max_float == 0:  # pure INT8 or nothing
        raise impossible(full, len(layers), 0)
    every = measure(layers, False)  # a budget that all-float misses cannot be met: say so before ranking anything
    if not step(layers, every):
        raise impossible(min((full, every), key=lambda f: _loss(f, metric)), len(layers))
    sens: dict[str, float] = {}
    base = _loss(measure([], True), metric)
    for i, name in enumerate(layers):  # how much floating this one layer alone helps
        sens[name] = base - _loss(measure([name], True), metric)
        if progress:
            progress("sensitivity", i + 1, len(layers))
    ranked = sorted(layers, key=lambda n: -sens[n])
    tried: dict[int, Fidelity] = {0: full, len(layers): every}

    def ok_at(k: int) -> bool:
        if k not in tried:
            tried[k] = measure(ranked[:k], False)
            step(ranked[:k], tried[k])
        return not budget.failures(tried[k])  # k < len(layers): an INT8 artifact is judged by the budget alone

    # at least one layer stays INT8: keeping every layer in float would write the FP32 model as an INT8 artifact
    top = len(ranked) - 1 if max_float is None else min(max_float, len(ranked) - 1)
    def best(cap: int) -> Fidelity:  # the best artifact that could have been written: at most ``cap`` in float
        return min((f for k, f in tried.items() if k <= cap), key=lambda f: _loss(f, metric))

    if top < 1:
        raise impossible(best(top), len(ranked), top)
    lo, hi = 0, 1  # the budget fails at lo and (after the loop) holds at hi
    while hi < top and not ok_at(hi):
        lo, hi = hi, min(2 * hi, top)
    if not ok_at(hi):
        raise impossible(best(top), len(ranked), top)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok_at(mid):
            hi = mid
        else:
            lo = mid
    return Search(ranked[:hi], {n: sens[n] for n in ranked[:hi]}, steps, tried[hi])
