"""Parity as an API: run one batch through several runners and compare them with explicit tolerances.

The FP32 parity rule, one for every check (export, ``verify``, the compile gate): each map pixel and score is
within ``atol`` of the reference in absolute terms where the reference's magnitude is at most 1, and in relative
terms above that (``scaled_error``). Float32 keeps about seven significant digits of any magnitude, so an absolute
1e-4 on a value of 1e5 would ask for more digits than the format has: a density head's negative log-likelihood on
an image far from its training data reaches 1e7 and more, and two correct kernels differ there by about 1e-6 of the
value. Maps of unit scale (cosine distances, normalised errors) are judged exactly as before.

Outputs that cannot be right fail before any tolerance is read (``output_problems``): a NaN or infinity in a score
or a map, and a map that is one value over the whole image (it localises nothing; every detector's map varies over
a real image). The map Pearson r is undefined, NaN, when either side has no variance or holds NaN/Inf: a NaN
fails every ``>=`` target, so a flat or broken artifact can never pass a map-r target.
"""

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
    max_scaled_maps: float  # worst |diff| / max(1, |reference|), see the module docstring
    max_scaled_scores: float
    problems: tuple[str, ...] = ()  # NaN/Inf or flat outputs of either side (``output_problems``): always a miss

    def within(self, atol: float) -> bool:
        """True when every map pixel and score meets ``atol`` under the FP32 parity rule and neither side's outputs
        hold NaN/Inf or a flat map."""
        return not self.problems and self.max_scaled_maps <= atol and self.max_scaled_scores <= atol

    def describe(self) -> str:
        """``max |diff| maps 108 (1.2e-06 relative), scores ...``-style text of the worst differences (problems
        such as ``candidate maps flat ...`` first)."""
        text = (f"max |diff| maps {self.max_abs_maps:.3g} ({_scaled_text(self.max_scaled_maps, self.max_abs_maps)}), "
                f"scores {self.max_abs_scores:.3g} ({_scaled_text(self.max_scaled_scores, self.max_abs_scores)})")
        return "; ".join([*self.problems, text])

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def _scaled_text(scaled: float, absolute: float) -> str:
    return "absolute" if scaled == absolute else f"{scaled:.2g} relative"


def scaled_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Worst ``|candidate - reference| / max(1, |reference|)``: absolute up to magnitude 1, relative above."""
    ref = np.asarray(reference, np.float64)
    d = np.abs(ref - np.asarray(candidate, np.float64))
    if d.size == 0:
        return 0.0
    worst = d / np.maximum(1.0, np.abs(ref))
    return float(np.nan) if np.isnan(worst).any() else float(worst.max())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays of the same size; NaN (undefined) when either has no variance or holds NaN/Inf."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    if a.max() == a.min() or b.max() == b.min():  # exactly constant: a - mean() may still hold rounding dust
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(np.clip((a * b).sum() / den, -1.0, 1.0)) if den > 0 else float("nan")


#: a map whose spread is at most this many float32 epsilons of its largest magnitude is flat (one value)
FLAT_EPS = 4


def nonfinite_images(values: np.ndarray) -> int:
    """Images (first axis) with at least one NaN or infinity."""
    v = np.asarray(values)
    return int((~np.isfinite(v.reshape(v.shape[0], -1))).any(1).sum()) if v.ndim and v.shape[0] else 0


def flat_maps(maps: np.ndarray) -> int:
    """Images whose map is one value up to float32 rounding (NaN maps are counted by ``nonfinite_images``)."""
    m = np.asarray(maps, np.float64)
    if m.ndim == 0 or m.shape[0] == 0 or m[0].size < 2:
        return 0
    m = m.reshape(m.shape[0], -1)
    with np.errstate(invalid="ignore"):
        spread = m.max(1) - m.min(1)
        flat = spread <= FLAT_EPS * np.finfo(np.float32).eps * np.abs(m).max(1)
    return int(flat.sum())


def output_problems(scores: np.ndarray, maps: np.ndarray, who: str = "candidate") -> list[str]:
    """What makes a set of outputs wrong whatever the reference says: NaN/Inf scores or maps, flat maps.

    Each is one phrase naming ``who`` and the count, e.g. ``candidate maps flat (one value) in 12 of 12 images``.
    """
    n = int(np.asarray(scores).reshape(-1).shape[0])
    out = []
    if k := nonfinite_images(np.asarray(scores).reshape(n, -1)):
        out.append(f"{who} scores not finite (NaN/Inf) in {k} of {n} images")
    if k := nonfinite_images(maps):
        out.append(f"{who} maps not finite (NaN/Inf) in {k} of {n} images")
    if k := flat_maps(maps):
        out.append(f"{who} maps flat (one value) in {k} of {n} images")
    return out


def problems_of(ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray) -> tuple[str, ...]:
    """``output_problems`` of the reference and of the candidate together."""
    return (*output_problems(ref_scores, ref_maps, "reference"), *output_problems(scores, maps, "candidate"))


def difference(ref: Predictions, cand: Predictions, ref_name: str = "reference",
               cand_name: str = "candidate") -> Difference:
    dm = np.abs(ref.maps.astype(np.float64) - cand.maps)
    ds = np.abs(ref.scores.astype(np.float64) - cand.scores)
    return Difference(ref_name, cand_name, float(dm.max()), float(dm.mean()), float(ds.max()), float(ds.mean()),
                      pearson(ref.maps, cand.maps), scaled_error(ref.maps, cand.maps),
                      scaled_error(ref.scores, cand.scores),
                      problems_of(ref.scores, ref.maps, cand.scores, cand.maps))


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
