"""Anomaly detection metrics in plain numpy: image AUROC and F1-max, pixel AUROC and AUPRO.

All metrics are computed exactly, from the sorted scores, with no threshold grid:

- ``auroc`` is the Mann-Whitney statistic, a tie between a good and a defect sample counting one half (the
  same as average ranks); it equals the trapezoidal area under the ROC curve and scikit-learn's
  ``roc_auc_score``.
- ``aupro`` follows the MVTec AD definition: every connected region (8-connectivity) of every ground-truth
  mask weighs the same; the per-region overlap averaged over regions is plotted against the false positive
  rate on normal pixels, one point per distinct map value, integrated with the trapezoid rule from FPR 0 up to
  ``max_fpr`` (the curve is interpolated at exactly ``max_fpr``) and divided by ``max_fpr``.
- ``aupro_by_size`` splits the regions into cumulative quartiles of their pixel area (Q1 the smallest quarter,
  Q4 all of them), gives the AUPRO of each at 30 % and 5 % FPR and the defect-size robustness score of the
  FBFT benchmark; definitions and sources in docs/metrics.md.

Pixel metrics take masks and maps as one (N, H, W) stack or as one (H_i, W_i) pair per image, so each mask can
keep its own resolution (``edgead.geometry.map_to_frame`` brings a model's map to it). Pixel metrics hold a
few copies of the maps in memory; 300 maps of 224x224 take about 2 s on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    return _mann_whitney(np.sort(scores[~labels]), scores[labels])


def _mann_whitney(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUROC of positives ``pos`` against negatives ``neg`` (already sorted); ties count one half."""
    pos = np.sort(pos)
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


def _as_images(a: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """A stack (N, H, W), one (H, W) image, or a sequence of (H_i, W_i) images, as a list of 2-D arrays."""
    if isinstance(a, np.ndarray):
        return [a] if a.ndim == 2 else list(a)
    return [np.asarray(x) for x in a]


def _pixel_pairs(masks: np.ndarray | Sequence[np.ndarray],
                 maps: np.ndarray | Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(defect pixels as bool, finite float scores) per image; each mask and its map must share one (H, W).

    Images may differ in size from each other: pixel metrics are computed at each ground truth's own resolution.
    """
    if isinstance(masks, np.ndarray) and isinstance(maps, np.ndarray):
        if masks.ndim == 2 and maps.ndim == 2:
            masks, maps = masks[None], maps[None]
        if masks.shape != maps.shape or masks.ndim != 3:
            raise EdgeadError(
                f"expected masks and maps of the same shape (N, H, W), found {masks.shape} and {maps.shape}"
            )
    ms, ps = _as_images(masks), _as_images(maps)
    if len(ms) != len(ps):
        raise EdgeadError(f"expected one anomaly map per mask, found {len(ps)} maps for {len(ms)} masks")
    pairs = []
    for i, (m, p) in enumerate(zip(ms, ps, strict=True)):
        if m.ndim != 2 or m.shape != p.shape:
            raise EdgeadError(f"expected mask {i} and map {i} of the same (H, W), found {m.shape} and {p.shape}; "
                              f"bring maps to the masks' resolution first (edgead.geometry.map_to_frame)")
        if not np.issubdtype(p.dtype, np.floating):
            p = p.astype(np.float64)
        if not np.isfinite(p).all():
            raise EdgeadError(f"pixel metrics need finite anomaly maps, found NaN or infinity in map {i}")
        pairs.append((m > 0, p))
    if not pairs:
        raise EdgeadError("pixel metrics need at least one mask and map, found none")
    return pairs


def pixel_auroc(masks: np.ndarray | Sequence[np.ndarray], maps: np.ndarray | Sequence[np.ndarray]) -> float:
    """AUROC over all pixels of all maps, defect pixels being those where ``masks`` > 0."""
    pairs = _pixel_pairs(masks, maps)
    y = _binary_labels(np.concatenate([m.ravel() for m, _ in pairs]), "pixel AUROC")
    a = np.concatenate([p.ravel() for _, p in pairs])
    return _auroc(y, a)


@dataclass(frozen=True)
class _Regions:
    """Every ground-truth region of a set of masks and the scores AUPRO needs, gathered once.

    ``normal`` holds the sorted scores of every pixel outside all regions (the false-positive population);
    ``scores`` the scores of the defect pixels, ``region`` each defect pixel's region index and ``area`` each
    region's size in pixels.
    """

    normal: np.ndarray
    scores: np.ndarray
    region: np.ndarray
    area: np.ndarray


def _regions(masks: np.ndarray | Sequence[np.ndarray], maps: np.ndarray | Sequence[np.ndarray]) -> _Regions:
    normal, scores, region, area = [], [], [], []
    n_regions = 0
    for mask, amap in _pixel_pairs(masks, maps):
        normal.append(amap[~mask])
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if count < 2:
            continue
        scores.append(amap[mask])
        region.append(labels[mask] - 1 + n_regions)
        area.append(stats[1:, cv2.CC_STAT_AREA])
        n_regions += count - 1
    if not area:
        raise EdgeadError("AUPRO needs at least one defect region in the masks, found all masks empty")
    normal_scores = np.sort(np.concatenate(normal))
    if normal_scores.size == 0:
        raise EdgeadError("AUPRO needs normal pixels to measure false positives, found every pixel in a mask")
    return _Regions(normal_scores, np.concatenate(scores), np.concatenate(region),
                    np.concatenate(area).astype(np.int64))


def _pro_curve(r: _Regions, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) over the regions where ``keep`` is True (all by default); FPR always over ``r.normal``.

    Points where only normal pixels cross the threshold lie on horizontal runs and are left out (they do not
    change the area), so the curve needs only the distinct values of the defect pixels: for each, one point
    just above it (normals strictly greater) and one at it (normals greater or equal).
    """
    keep = np.ones(r.area.size, bool) if keep is None else keep
    n_kept = int(keep.sum())
    pixel_kept = keep[r.region]
    scores, region = r.scores[pixel_kept], r.region[pixel_kept]
    weights = 1.0 / (r.area[region].astype(np.float64) * n_kept)
    n_normal = r.normal.size
    order = np.argsort(-scores, kind="stable")
    region_scores = scores[order]
    last_of_tie = np.r_[region_scores[1:] != region_scores[:-1], True]
    t = region_scores[last_of_tie]
    pro_at = np.cumsum(weights[order])[last_of_tie]
    pro_before = np.r_[0.0, pro_at[:-1]]
    fpr_gt = (n_normal - np.searchsorted(r.normal, t, side="right")) / n_normal
    fpr_ge = (n_normal - np.searchsorted(r.normal, t, side="left")) / n_normal
    fpr = np.r_[0.0, np.column_stack([fpr_gt, fpr_ge]).ravel(), 1.0]
    pro = np.r_[0.0, np.column_stack([pro_before, pro_at]).ravel(), pro_at[-1]]
    fresh = np.r_[True, (np.diff(fpr) != 0) | (np.diff(pro) != 0)]
    return np.clip(fpr[fresh], 0.0, 1.0), np.clip(pro[fresh], 0.0, 1.0)


def pro_curve(masks: np.ndarray | Sequence[np.ndarray],
              maps: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at the distinct map values, from (0, 0) to (1, ~1), FPR non-decreasing."""
    return _pro_curve(_regions(masks, maps))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_max], interpolating y at exactly ``x_max``."""
    keep = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:keep], y[:keep]
    if keep < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[keep - 1], x[keep], y[keep - 1], y[keep]
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


Images = np.ndarray | Sequence[np.ndarray]

#: FPR limits of the defect-size AUPROs, as the FBFT benchmark reports them (AUPRO@30% and AUPRO@5%).
SIZE_LIMITS = (0.3, 0.05)


def _check_limit(max_fpr: float) -> None:
    if not 0.0 < max_fpr <= 1.0:
        raise EdgeadError(f"AUPRO's FPR limit must be in (0, 1], found {max_fpr}")


def aupro(masks: Images, maps: Images, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (1.0 is perfect)."""
    _check_limit(max_fpr)
    fpr, pro = pro_curve(masks, maps)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def defect_areas(masks: Images) -> np.ndarray:
    """Pixel area of every connected defect region (8-connectivity) of ``masks``, image after image."""
    areas = []
    for mask in _as_images(masks):
        _, _, stats, _ = cv2.connectedComponentsWithStats((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
        areas.append(stats[1:, cv2.CC_STAT_AREA])
    return np.concatenate(areas).astype(np.int64) if areas else np.zeros(0, np.int64)


def robustness(by_quartile: Sequence[float]) -> float:
    """Defect-size robustness: mean AUPRO over Q1..Q4 times min(Q1, Q4) / max(Q1, Q4); 0 when both are 0.

    High only when localisation is good on average *and* as good on the smallest defects (Q1) as on all (Q4).
    """
    q1, q4 = float(by_quartile[0]), float(by_quartile[-1])
    top = max(q1, q4)
    return 0.0 if top <= 0.0 else float(np.mean(by_quartile)) * min(q1, q4) / top


@dataclass(frozen=True)
class AuproBySize:
    """AUPRO per cumulative quartile of defect area, and the robustness built from them (docs/metrics.md).

    ``area_edges`` are the 25th, 50th and 75th percentiles of the regions' pixel areas; Q1 holds the regions
    with area <= the first edge, Q2 <= the second, Q3 <= the third, Q4 every region. ``aupro[i][q]`` is the
    AUPRO of quartile ``q + 1`` up to ``max_fprs[i]``; ``robustness[i]`` is built from ``aupro[i]``.
    """

    area_edges: tuple[float, float, float]
    regions: tuple[int, int, int, int]
    max_fprs: tuple[float, ...]
    aupro: tuple[tuple[float, float, float, float], ...]
    robustness: tuple[float, ...]

    def _limit(self, max_fpr: float) -> int:
        for i, limit in enumerate(self.max_fprs):
            if abs(limit - max_fpr) < 1e-12:
                return i
        raise EdgeadError(f"AUPRO by size was measured up to FPR {list(self.max_fprs)}, found a request for "
                          f"{max_fpr}")

    def at(self, quartile: int, max_fpr: float = 0.3) -> float:
        """AUPRO of quartile 1..4 (1: the smallest defects, 4: all of them) up to ``max_fpr``."""
        if quartile not in (1, 2, 3, 4):
            raise EdgeadError(f"expected a defect-size quartile 1, 2, 3 or 4, found {quartile}")
        return self.aupro[self._limit(max_fpr)][quartile - 1]

    def robustness_at(self, max_fpr: float = 0.3) -> float:
        return self.robustness[self._limit(max_fpr)]

    @property
    def q1(self) -> float:
        """Small-defect AUPRO: quartile 1 up to the first limit (30% FPR by default)."""
        return self.aupro[0][0]

    def to_dict(self) -> dict:
        """Plain numbers for JSON: ``aupro_30`` = [Q1, Q2, Q3, Q4], ``robustness_30``, ... per limit."""
        d: dict = {"area_edges": list(self.area_edges), "regions": list(self.regions)}
        for limit, values, rho in zip(self.max_fprs, self.aupro, self.robustness, strict=True):
            tag = f"{limit * 100:g}"
            d[f"aupro_{tag}"] = list(values)
            d[f"robustness_{tag}"] = rho
        return d


def aupro_by_size(masks: Images, maps: Images, max_fprs: Sequence[float] = SIZE_LIMITS) -> AuproBySize:
    """AUPRO per cumulative quartile of defect area (Q1 smallest ... Q4 all) and the robustness score.

    Regions are the 8-connected components of all masks, their areas in pixels of the masks as given (pass
    masks at their own resolution, with maps brought to it). The quartile edges are ``np.quantile`` (linear
    interpolation) of all regions' areas; a quartile's curve averages the overlap over its own regions only,
    while the false positive rate is always measured on every pixel outside all regions, so the FPR axis is the
    same for the four quartiles. Both follow the FBFT authors' public evaluation code (docs/metrics.md).
    """
    for limit in max_fprs:
        _check_limit(limit)
    return _by_size(_regions(masks, maps), max_fprs)


def pixel_metrics(masks: Images, maps: Images,
                  max_fprs: Sequence[float] = SIZE_LIMITS) -> tuple[float, AuproBySize]:
    """(pixel AUROC, AUPRO by size) from one pass over the pixels: what ``edgead eval`` reports.

    The same numbers as ``pixel_auroc`` and ``aupro_by_size``, with the pixels gathered and the normal ones
    sorted once instead of twice.
    """
    for limit in max_fprs:
        _check_limit(limit)
    r = _regions(masks, maps)
    return _mann_whitney(r.normal, r.scores), _by_size(r, max_fprs)


def _by_size(r: _Regions, max_fprs: Sequence[float]) -> AuproBySize:
    edges = np.quantile(r.area.astype(np.float64), (0.25, 0.5, 0.75))
    keeps = [r.area <= e for e in edges] + [np.ones(r.area.size, bool)]
    curves = [_pro_curve(r, keep) for keep in keeps]
    table = tuple(tuple(_area_up_to(f, p, limit) / limit for f, p in curves) for limit in max_fprs)
    return AuproBySize(
        area_edges=tuple(float(e) for e in edges),  # type: ignore[arg-type]
        regions=tuple(int(k.sum()) for k in keeps),  # type: ignore[arg-type]
        max_fprs=tuple(float(x) for x in max_fprs),
        aupro=table,  # type: ignore[arg-type]
        robustness=tuple(robustness(row) for row in table),
    )


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: Images | None = None,
    maps: Images | None = None,
) -> Metrics:
    """Image metrics from labels and scores; pixel metrics too when both ``masks`` and ``maps`` are given."""
    if (masks is None) != (maps is None):
        raise EdgeadError("pixel metrics need both masks and anomaly maps, found only one of them")
    pix = aur = None
    if masks is not None and maps is not None:
        pix, aur = pixel_auroc(masks, maps), aupro(masks, maps)
    return Metrics(auroc(labels, scores), f1_max(labels, scores), pix, aur)
