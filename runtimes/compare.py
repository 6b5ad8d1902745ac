"""Parity as an API: run one batch through several runners and measure each against the first.

The measuring and the FP32 parity rule live in ``edgead.fidelity`` (one result type, ``Fidelity``, one
``Budget``): each map pixel and score is within ``atol`` of the reference in absolute terms where the reference's
magnitude is at most 1, and in relative terms above that (``scaled_error``); NaN/Inf or flat outputs fail before
any tolerance is read. ``check_batch`` makes the deterministic uint8 batch parity checks run on.
"""

from __future__ import annotations

import numpy as np

from edgead import precisions
from edgead.fidelity import Fidelity, measure, pearson, scaled_error
from edgead.runtimes.base import Runner

__all__ = ["check_batch", "compare", "pearson", "scaled_error"]


def compare(reference: Runner, candidates: dict[str, Runner], images: np.ndarray) -> list[Fidelity]:
    """Each candidate measured against the reference on ``images`` (FP32 figures: ``Fidelity.within(atol)``)."""
    ref = reference.predict(images)
    out = []
    for name, runner in candidates.items():
        got = runner.predict(images)
        out.append(measure(ref.scores, ref.maps, got.scores, got.maps, reference=reference.describe(),
                           candidate=name, precision=precisions.full().name))
    return out


def check_batch(seed: int, n: int, size: tuple[int, int]) -> np.ndarray:
    """A deterministic uint8 batch for parity checks: smooth random structure plus noise, not pure noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        f = rng.uniform(0.02, 0.15, size=(3, 2))
        base = np.stack([np.sin(xx * f[c, 0] + yy * f[c, 1] + rng.uniform(0, 6)) for c in range(3)], -1)
        img = 128 + 80 * base + rng.normal(0, 12, size=(h, w, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out
