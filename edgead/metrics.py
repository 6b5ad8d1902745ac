"""Anomaly detection metrics in plain numpy: image AUROC and F1-max, pixel AUROC and AUPRO.

All metrics are computed exactly, from the sorted scores, with no threshold grid:

- ``auroc`` is the Mann-Whitney statistic, a tie between a good and a defect sample counting one half (the
  same as average ranks); it equals the trapezoidal area under the ROC curve and scikit-learn's
  ``roc_auc_score``.
- ``aupro`` follows the MVTec AD definition: every connected region (8-connectivity) of every ground-truth
  mask weighs the same; the per-region overlap averaged over regions is plotted against the false positive
  rate on normal pixels, one point per distinct map value, integrated with the trapezoid rule from FPR 0 up to
  ``max_fpr`` (the curve is interpolated at exactly ``max_fpr``) and divided by ``max_fpr``.

Pixel metrics hold a few copies of the maps in memory; 300 maps of 224x224 take about 2 s on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgead.errors import EdgeadError


@dataclass(frozen=True)
class Metrics:
    """Evaluation of one detector on one test set; pixel metrics are None when no masks were given."""

    image_auroc: float
    image_f1_max: float
    pixel_auroc: float | None
    aupro: float | None


def _binary_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.size and not np.isin(labels, (0, 1)).all():
        found = np.unique(labels)[:5]
        raise EdgeadError(f"{what} labels must be 0 (good) or 1 (defect), found values {found}")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        only = "defect" if n_pos else "good"
        n = labels.size
        raise EdgeadError(f"{what} needs both good and defect samples, found only {only} ones ({n} in all)")
    return labels


def _scores(scores: np.ndarray, n: int, what: str) -> np.ndarray:
    scores = np.asarray(scores).ravel()
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if scores.size != n:
        raise EdgeadError(f"{what} needs one score per label, found {scores.size} scores for {n} labels")
    if not np.isfinite(scores).all():
        raise EdgeadError(f"{what} needs finite scores, found NaN or infinity")
    return scores


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U / (P * N): per positive, the negatives below it plus half of those tied with it.

    Sorting the two classes separately (``np.sort``) is many times faster than an ``argsort`` of everything.
    """
    neg = np.sort(scores[~labels])
    pos = np.sort(scores[labels])
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    u = below.sum(dtype=np.float64) + 0.5 * (not_above - below).sum(dtype=np.float64)
    return float(u / (float(pos.size) * float(neg.size)))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = defect); ties count one half."""
    y = _binary_labels(labels, "AUROC")
    return _auroc(y, _scores(scores, y.size, "AUROC"))


def best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(max F1, threshold reaching it), predicting a defect where ``score >= threshold``."""
    y = _binary_labels(labels, "F1")
    s = _scores(scores, y.size, "F1")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    f1 = 2.0 * tp / (tp + fp + y.sum())
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last_of_tie][best])


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Largest F1 score over all thresholds."""
    return best_f1(labels, scores)[0]


def _pixel_arrays(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.shape != maps.shape or masks.ndim != 3:
        raise EdgeadError(
            f"expected masks and maps of the same shape (N, H, W), found {masks.shape} and {maps.shape}"
        )
    return (masks > 0), maps


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over all pixels of all maps, defect pixels being those where ``masks`` > 0."""
    m, a = _pixel_arrays(masks, maps)
    y = _binary_labels(m.ravel(), "pixel AUROC")
    return _auroc(y, _scores(a, y.size, "pixel AUROC"))


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """For each defect pixel, in ``masks[masks]`` order: 1 / (its region's area * number of regions)."""
    parts = []
    n_regions = 0
    for mask in masks:
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        if count < 2:
            continue
        areas = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        parts.append((1.0 / areas)[labels[mask]])
        n_regions += count - 1
    if not parts:
        raise EdgeadError("AUPRO needs at least one defect region in the masks, found all masks empty")
    return np.concatenate(parts) / n_regions


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at the distinct map values, from (0, 0) to (1, ~1), FPR non-decreasing.

    Points where only normal pixels cross the threshold lie on horizontal runs and are left out (they do not
    change the area), so the curve needs only the distinct values of the defect pixels: for each, one point
    just above it (normals strictly greater) and one at it (normals greater or equal).
    """
    m, a = _pixel_arrays(masks, maps)
    n_normal = int((~m).sum())
    if n_normal == 0:
        raise EdgeadError("AUPRO needs normal pixels to measure false positives, found every pixel in a mask")
    weights = _region_weights(m)
    a = _scores(a, m.size, "AUPRO").reshape(m.shape)
    normal = np.sort(a[~m])
    order = np.argsort(-a[m])
    region_scores = a[m][order]
    last_of_tie = np.r_[region_scores[1:] != region_scores[:-1], True]
    t = region_scores[last_of_tie]
    pro_at = np.cumsum(weights[order])[last_of_tie]
    pro_before = np.r_[0.0, pro_at[:-1]]
    fpr_gt = (n_normal - np.searchsorted(normal, t, side="right")) / n_normal
    fpr_ge = (n_normal - np.searchsorted(normal, t, side="left")) / n_normal
    fpr = np.r_[0.0, np.column_stack([fpr_gt, fpr_ge]).ravel(), 1.0]
    pro = np.r_[0.0, np.column_stack([pro_before, pro_at]).ravel(), pro_at[-1]]
    fresh = np.r_[True, (np.diff(fpr) != 0) | (np.diff(pro) != 0)]
    return np.clip(fpr[fresh], 0.0, 1.0), np.clip(pro[fresh], 0.0, 1.0)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_max], interpolating y at exactly ``x_max``."""
    keep = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:keep], y[:keep]
    if keep < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[keep - 1], x[keep], y[keep - 1], y[keep]
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (1.0 is perfect)."""
    if not 0.0 < max_fpr <= 1.0:
        raise EdgeadError(f"AUPRO's FPR limit must be in (0, 1], found {max_fpr}")
    fpr, pro = pro_curve(masks, maps)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> Metrics:
    """Image metrics from labels and scores; pixel metrics too when both ``masks`` and ``maps`` are given."""
    if (masks is None) != (maps is None):
        raise EdgeadError("pixel metrics need both masks and anomaly maps, found only one of them")
    pix = aur = None
    if masks is not None and maps is not None:
        pix, aur = pixel_auroc(masks, maps), aupro(masks, maps)
    return Metrics(auroc(labels, scores), f1_max(labels, scores), pix, aur)
