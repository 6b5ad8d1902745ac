"""Fidelity of an artifact against its reference: measured figures over a whole data set, and a verdict.

One place for "does this artifact still do the job": ``edgead verify`` (artifact against the PyTorch
checkpoint) and the compile-time gate (INT8/FP16/BF16 artifact against the FP32 export) both measure with
``measure`` and judge with ``Budget.failures``. Imports no torch.

The targets (DESIGN.md): an FP32 artifact matches its reference within ``atol`` on every map pixel and score
(absolute where the reference's magnitude is at most 1, relative above: ``runtimes.compare.scaled_error``); a
reduced-precision artifact keeps the Pearson correlation of its maps with the reference's at or above
``min_map_r`` and, on labelled data, loses at most ``max_drop`` of ``metric`` (0.005 = 0.5 AUROC points).
Label flips against the artifact's threshold are always counted; they fail the verdict only when
``max_flips`` is set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgead.errors import InputError
from edgead.metrics import evaluate
from edgead.runtimes.compare import pearson, scaled_error

#: metrics a budget can be stated in; ``map_r`` is the Pearson correlation of maps with the reference's.
METRICS = ("image_auroc", "aupro", "pixel_auroc", "map_r")
_ALIASES = {"auroc": "image_auroc", "image-auroc": "image_auroc", "pro": "aupro", "pixel-auroc": "pixel_auroc",
            "map-r": "map_r"}
FULL_PRECISION = ("fp32",)


def metric_name(name: str) -> str:
    """The canonical metric name for ``name`` (``auroc`` -> ``image_auroc``), or an ``InputError``."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in METRICS:
        raise InputError(f"expected a metric in auroc, aupro, pixel_auroc, map_r, found '{name}'")
    return key


@dataclass(frozen=True)
class Budget:
    """Tolerances an artifact must meet against its reference (see the module docstring)."""

    atol: float = 1e-4
    min_map_r: float = 0.99
    max_drop: float = 0.005
    metric: str = "image_auroc"
    max_flips: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", metric_name(self.metric))
        for name in ("atol", "max_drop"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise InputError(f"expected {name} >= 0, found {v}")
        if not -1.0 <= self.min_map_r <= 1.0:
            raise InputError(f"expected a minimum map r in [-1, 1], found {self.min_map_r}")
        if self.max_flips is not None and self.max_flips < 0:
            raise InputError(f"expected a maximum number of label flips >= 0, found {self.max_flips}")

    def failures(self, f: Fidelity) -> list[str]:
        """What ``f`` misses, one readable phrase per target; empty when it meets the budget."""
        out: list[str] = []
        if f.precision in FULL_PRECISION:
            for what, absolute, scaled in (("maps", f.max_abs_maps, f.max_scaled_maps),
                                           ("scores", f.max_abs_scores, f.max_scaled_scores)):
                err = absolute if scaled is None else scaled
                if not err <= self.atol:  # NaN fails too
                    rel = "" if err == absolute else f" ({err:.2e} relative)"
                    out.append(f"max |diff| of {what} {absolute:.2e}{rel} > {self.atol:.0e}")
        else:
            if not f.map_r >= self.min_map_r:  # NaN fails too
                out.append(f"map r {f.map_r:.4f} < {self.min_map_r}")
            drop = f.drop(self.metric)
            if drop is not None and not drop <= self.max_drop + 1e-12:
                out.append(f"{self.metric} drop {100 * drop:.2f} points > {100 * self.max_drop:.2f}")
        if self.max_flips is not None and f.flips is not None and f.flips > self.max_flips:
            out.append(f"{f.flips} label flips > {self.max_flips}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fidelity:
    """Differences of one artifact from its reference over every image of one data set.

    ``score_error_rel`` is the worst |score difference| as a fraction of the threshold; flips count images whose
    label (score > threshold) differs from the reference's. ``metrics``/``reference_metrics`` are filled on
    labelled data only (``map_r`` included in both for uniform look-ups).
    """

    reference: str
    candidate: str
    precision: str
    images: int
    max_abs_maps: float
    mean_abs_maps: float
    max_abs_scores: float
    mean_abs_scores: float
    map_r: float
    threshold: float | None = None
    score_error_rel: float | None = None
    flips_to_anomalous: int | None = None
    flips_to_normal: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    reference_metrics: dict[str, float | None] = field(default_factory=dict)
    max_scaled_maps: float | None = None  # worst |diff| / max(1, |reference|): what the FP32 target judges
    max_scaled_scores: float | None = None

    @property
    def flips(self) -> int | None:
        if self.flips_to_anomalous is None or self.flips_to_normal is None:
            return None
        return self.flips_to_anomalous + self.flips_to_normal

    def drop(self, metric: str) -> float | None:
        """Reference minus artifact for ``metric`` (positive = worse); None when it was not measured."""
        metric = metric_name(metric)
        if metric == "map_r":
            return 1.0 - self.map_r
        a, b = self.reference_metrics.get(metric), self.metrics.get(metric)
        return None if a is None or b is None else float(a - b)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flips"] = self.flips
        d["delta_vs_reference"] = {k: (None if v is None or self.reference_metrics.get(k) is None
                                       else v - self.reference_metrics[k]) for k, v in self.metrics.items()}
        return d


def _metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray) -> dict:
    return dict(evaluate(labels, scores, masks, None if masks is None else maps).__dict__)


def measure(ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray, *,
            reference: str, candidate: str, precision: str, threshold: float | None = None,
            labels: np.ndarray | None = None, masks: np.ndarray | None = None,
            reference_metrics: dict[str, float | None] | None = None) -> Fidelity:
    """Compare an artifact's outputs with the reference's over the same images (all of them at once).

    ``labels`` (0 good / 1 defect, both present) adds metrics; ``masks`` adds pixel metrics. Pass
    ``reference_metrics`` to reuse the reference's metrics across several artifacts.
    """
    ref_scores = np.asarray(ref_scores, np.float64).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if ref_scores.shape != scores.shape or np.shape(ref_maps) != np.shape(maps):
        raise InputError(f"expected outputs of the same images, found scores {ref_scores.shape} vs "
                         f"{scores.shape}, maps {np.shape(ref_maps)} vs {np.shape(maps)}")
    dm = np.abs(np.asarray(ref_maps, np.float64) - maps)
    ds = np.abs(ref_scores - scores)
    rel = flips_up = flips_down = None
    if threshold is not None and np.isfinite(threshold):
        ref_lab, lab = ref_scores > threshold, scores > threshold
        flips_up, flips_down = int((lab & ~ref_lab).sum()), int((~lab & ref_lab).sum())
        rel = float(ds.max() / threshold) if threshold > 0 else None
    met: dict[str, float | None] = {}
    ref_met: dict[str, float | None] = {}
    r = pearson(ref_maps, maps)
    if labels is not None:
        ref_met = dict(reference_metrics) if reference_metrics else _metrics(labels, ref_scores, masks, ref_maps)
        met = _metrics(labels, scores, masks, maps)
        ref_met["map_r"], met["map_r"] = 1.0, r
    return Fidelity(reference, candidate, precision, int(scores.size), float(dm.max()), float(dm.mean()),
                    float(ds.max()), float(ds.mean()), r, threshold, rel, flips_up, flips_down, met, ref_met,
                    scaled_error(ref_maps, maps), scaled_error(ref_scores, scores))
