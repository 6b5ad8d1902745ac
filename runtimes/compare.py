"""Parity as an API: run one batch through several runners and compare them with explicit tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgead.runtimes.base import Predictions, Runner


@dataclass(frozen=True)
class Difference:
    """How far ``candidate`` is from ``reference`` on one batch."""

    reference: str
    candidate: str
    max_abs_maps: float
    mean_abs_maps: float
    max_abs_scores: float
    mean_abs_scores: float
    map_pearson: float

    def within(self, atol: float) -> bool:
        return self.max_abs_maps <= atol and self.max_abs_scores <= atol

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 1.0


def difference(ref: Predictions, cand: Predictions, ref_name: str = "reference",
               cand_name: str = "candidate") -> Difference:
    dm = np.abs(ref.maps.astype(np.float64) - cand.maps)
    ds = np.abs(ref.scores.astype(np.float64) - cand.scores)
    return Difference(ref_name, cand_name, float(dm.max()), float(dm.mean()), float(ds.max()), float(ds.mean()),
                      pearson(ref.maps, cand.maps))


def compare(reference: Runner, candidates: dict[str, Runner], images: np.ndarray) -> list[Difference]:
    """Differences of each candidate against the reference on ``images``."""
    ref = reference.predict(images)
    return [difference(ref, r.predict(images), reference.describe(), name) for name, r in candidates.items()]


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
