"""Tests for edgead.metrics against hand-computed values and brute-force reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from edgead.errors import EdgeadError
from edgead.metrics import (
    Metrics,
    aupro,
    aupro_by_size,
    auroc,
    best_f1,
    defect_areas,
    evaluate,
    f1_max,
    pixel_auroc,
    pixel_metrics,
    pro_curve,
    robustness,
)


def _pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def _threshold_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Reference: one threshold per distinct value, regions listed by flood fill (8-connectivity)."""
    regions = []
    for i, mask in enumerate(masks):
        seen = np.zeros_like(mask, dtype=bool)
        for y, x in zip(*np.nonzero(mask), strict=True):
            if seen[y, x]:
                continue
            stack, pixels = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                pixels.append((i, cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                        if inside and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            regions.append(tuple(np.array(pixels).T))
    normal = maps[masks == 0]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(float((normal >= t).mean()))
        pro.append(float(np.mean([(maps[r] >= t).mean() for r in regions])))
    x, y = np.array(fpr), np.array(pro)
    y_end = np.interp(max_fpr, x, y)  # x has no vertical steps at max_fpr in the random cases used
    keep = x < max_fpr
    xs, ys = np.r_[x[keep], max_fpr], np.r_[y[keep], y_end]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / max_fpr)


def test_auroc_hand_values() -> None:
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # ties: (0.5 vs 0.5) counts one half -> (0.5 + 1 + 1 + 1) / 4
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert auroc([0, 1, 0, 1], [3.0, 3.0, 3.0, 3.0]) == pytest.approx(0.5)
    assert auroc([1, 1, 0], [0.0, 0.1, 0.9]) == pytest.approx(0.0)
    assert auroc([0, 1], [-5.0, 7.0]) == pytest.approx(1.0)


def test_auroc_matches_pairwise_count_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 300)
        scores = rng.integers(0, 12, 300).astype(float)
        assert auroc(labels, scores) == pytest.approx(_pairwise_auroc(labels, scores), abs=1e-12)


def test_f1_max_hand_values() -> None:
    # thresholds 0.8, 0.4, 0.35, 0.1 give F1 2/3, 1/2, 4/5, 2/3
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)
    assert best_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == (pytest.approx(0.8), 0.35)
    # a tie at 0.9 between a defect and a good image is one threshold: F1 1/2 there, 4/5 at 0.2
    assert best_f1([1, 0, 1, 0], [0.9, 0.9, 0.2, 0.1]) == (pytest.approx(0.8), 0.2)
    assert f1_max([0, 1, 1], [0.0, 1.0, 1.0]) == pytest.approx(1.0)


def test_degenerate_and_bad_inputs() -> None:
    with pytest.raises(EdgeadError, match="AUROC needs both good and defect samples, found only good ones"):
        auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(EdgeadError, match="F1 needs both good and defect samples, found only defect ones"):
        f1_max([1, 1], [0.1, 0.2])
    with pytest.raises(EdgeadError, match=r"labels must be 0 \(good\) or 1 \(defect\)"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(EdgeadError, match="one score per label, found 3 scores for 2 labels"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(EdgeadError, match="finite scores"):
        auroc([0, 1], [0.1, np.nan])


def test_pixel_auroc_is_auroc_over_all_pixels() -> None:
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 8, 8)) > 0.8).astype(np.uint8) * 255
    maps = rng.random((3, 8, 8)) + 0.3 * (masks > 0)
    expected = _pairwise_auroc((masks > 0).ravel().astype(int), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(EdgeadError, match="pixel AUROC needs both good and defect samples"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(EdgeadError, match=r"same shape \(N, H, W\), found \(2, 4, 4\) and \(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_aupro_perfect_and_constant_maps() -> None:
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, 2:5, 2:5] = 1
    masks[1, 7:9, 1:9] = 1
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # one threshold: the curve is the diagonal PRO = FPR, whose area up to 0.3 is 0.045, i.e. 0.15 normalised
    assert aupro(masks, np.full(masks.shape, 0.5)) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 0.5), max_fpr=1.0) == pytest.approx(0.5)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    """Region A: 2 px at 0.9; region B: 4 px, two at 0.6, two at 0.5; 34 normal px: 17 at 0.5, 17 at 0.2."""
    mask = np.zeros((4, 10), np.uint8)
    amap = np.full((4, 10), 0.2)
    mask[0, 0:2] = 1
    amap[0, 0:2] = 0.9
    mask[3, 6:10] = 1
    amap[3, 6:8] = 0.6
    amap[3, 8:10] = 0.5
    normal = np.flatnonzero(mask.ravel() == 0)
    amap.ravel()[normal[:17]] = 0.5
    return mask[None], amap[None]


def test_aupro_two_regions_of_different_size_by_hand() -> None:
    masks, maps = _two_regions()
    fpr, pro = pro_curve(masks, maps)
    # thresholds 0.9, 0.6, 0.5, 0.2: PRO is the mean of the two regions' overlaps, not a pixel count
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 0.75, 1.0, 1.0])
    # from (0, 0.75) to (0.5, 1.0): area up to 0.3 = 0.75 * 0.3 + 0.5 * 0.3**2 / 2 = 0.2475
    assert aupro(masks, maps) == pytest.approx(0.2475 / 0.3)
    assert aupro(masks, maps, max_fpr=0.5) == pytest.approx((0.375 + 0.0625) / 0.5)


def test_aupro_regions_use_8_connectivity() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours: one region of two pixels
    mask[5, 5] = 1
    amap = np.full((8, 8), 0.1)
    amap[0, 0] = amap[5, 5] = 0.9
    # PRO at 0.9 is (1/2 + 1) / 2 = 0.75 (it would be 2/3 with 4-connectivity); then straight to (1, 1)
    assert aupro(mask[None], amap[None]) == pytest.approx((0.75 * 0.3 + 0.25 * 0.3**2 / 2) / 0.3)


def test_aupro_matches_threshold_reference() -> None:
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[0, 10:12, 10:15] = 1
    masks[1, 0:3, 0:3] = 1
    maps = np.round(rng.random(masks.shape) * 40) / 40 + 0.4 * masks  # many ties
    for max_fpr in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, max_fpr) == pytest.approx(_threshold_aupro(masks, maps, max_fpr), abs=1e-9)


def test_aupro_errors() -> None:
    with pytest.raises(EdgeadError, match="at least one defect region"):
        aupro(np.zeros((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(EdgeadError, match="needs normal pixels"):
        aupro(np.ones((1, 4, 4)), np.ones((1, 4, 4)))
    with pytest.raises(EdgeadError, match=r"FPR limit must be in \(0, 1\]"):
        aupro(np.ones((1, 4, 4)), np.ones((1, 4, 4)), max_fpr=0.0)


def test_evaluate() -> None:
    masks, maps = _two_regions()
    masks = np.concatenate([masks, np.zeros_like(masks)])
    maps = np.concatenate([maps, np.full_like(maps, 0.1)])
    m = evaluate(np.array([1, 0]), np.array([0.9, 0.1]), masks, maps)
    assert isinstance(m, Metrics)
    assert m.image_auroc == 1.0 and m.image_f1_max == 1.0
    assert m.pixel_auroc == pytest.approx(pixel_auroc(masks, maps))
    assert m.aupro == pytest.approx(aupro(masks, maps))
    only_image = evaluate([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert only_image == Metrics(pytest.approx(0.75), pytest.approx(0.8), None, None)
    with pytest.raises(EdgeadError, match="both masks and anomaly maps, found only one"):
        evaluate([0, 1], [0.1, 0.2], masks=masks)


# -- AUPRO by defect size (docs/metrics.md) ------------------------------------------------------------------


def _four_sizes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Regions of 1, 2, 4 and 8 px in three images of different sizes; 105 normal px, 21 of them at 0.5.

    A (1 px) scores 0.9 and B (2 px) 0.6, both above every normal pixel; C (4 px) scores 0.3, found once the 21
    normals at 0.5 (FPR 0.2) are; D (8 px) scores 0.0 like the other 84 normals, found only at FPR 1.
    """
    masks = [np.zeros((4, 10), np.uint8), np.zeros((5, 8), np.uint8), np.zeros((4, 10), np.uint8)]
    maps = [np.zeros(m.shape) for m in masks]
    masks[0][0, 0] = 1
    maps[0][0, 0] = 0.9  # A
    masks[0][2, 5:7] = 1
    maps[0][2, 5:7] = 0.6  # B
    masks[1][0:2, 0:2] = 1
    maps[1][0:2, 0:2] = 0.3  # C
    masks[2][0:2, 0:4] = 1  # D, scores 0.0
    normal_left = 21
    for mask, amap in zip(masks, maps, strict=True):
        for y, x in zip(*np.nonzero(mask == 0), strict=True):
            if normal_left:
                amap[y, x], normal_left = 0.5, normal_left - 1
    return masks, maps


def test_aupro_by_size_by_hand() -> None:
    masks, maps = _four_sizes()
    assert sum(int((m == 0).sum()) for m in masks) == 105
    r = aupro_by_size(masks, maps)
    # np.quantile of [1, 2, 4, 8]: 1.75, 3, 5 -> Q1 = {A}, Q2 = {A, B}, Q3 = {A, B, C}, Q4 = all
    assert r.area_edges == (1.75, 3.0, 5.0) and r.regions == (1, 2, 3, 4)
    np.testing.assert_array_equal(np.sort(defect_areas(masks)), [1, 2, 4, 8])
    # Q1, Q2: every region found before the first false positive.
    # Q3: PRO 2/3 from FPR 0 to 0.2, then 1: (2/3 * 0.2 + 1 * 0.1) / 0.3; at 5 %: 2/3.
    # Q4: PRO 2/4 up to FPR 0.2, 3/4 at 0.2, then a straight line to (1, 1): 0.78125 at 0.3.
    q4_30 = (0.5 * 0.2 + 0.1 * (0.75 + 0.78125) / 2) / 0.3
    expected_30 = (1.0, 1.0, (2 / 3 * 0.2 + 0.1) / 0.3, q4_30)
    expected_5 = (1.0, 1.0, 2 / 3, 0.5)
    np.testing.assert_allclose(r.aupro, [expected_30, expected_5], rtol=0, atol=1e-12)
    assert r.at(1) == r.q1 == 1.0 and r.at(4, 0.05) == pytest.approx(0.5)
    assert r.at(4) == pytest.approx(aupro(masks, maps))  # Q4 is the plain AUPRO
    # robustness: mean over Q1..Q4 times min(Q1, Q4) / max(Q1, Q4)
    rho_30 = np.mean(expected_30) * q4_30 / 1.0
    assert r.robustness_at(0.3) == pytest.approx(rho_30) and r.robustness_at(0.3) == pytest.approx(0.49530, abs=1e-5)
    assert r.robustness_at(0.05) == pytest.approx(np.mean(expected_5) * 0.5)
    d = r.to_dict()
    assert d["regions"] == [1, 2, 3, 4] and d["aupro_30"][2] == pytest.approx(expected_30[2])
    assert d["robustness_5"] == pytest.approx(r.robustness[1])
    with pytest.raises(EdgeadError, match=r"measured up to FPR \[0.3, 0.05\], found a request for 0.1"):
        r.at(1, 0.1)


def test_robustness_formula() -> None:
    assert robustness([0.9, 0.9, 0.9, 0.9]) == pytest.approx(0.9)
    assert robustness([0.4, 0.6, 0.7, 0.8]) == pytest.approx(0.625 * 0.5)
    assert robustness([0.8, 0.6, 0.5, 0.4]) == pytest.approx(0.575 * 0.5)  # symmetric in Q1 and Q4
    assert robustness([0.0, 0.0, 0.0, 0.0]) == 0.0


def _reference_aupro_by_size(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float) -> list[float]:
    """Outside reference: regions and areas from scikit-image (label + regionprops), the curve by brute force
    over every distinct threshold, the area by scikit-learn's trapezoid ``auc`` on the curve cut at ``max_fpr``."""
    from skimage.measure import label, regionprops
    from sklearn.metrics import auc

    regions = []  # (image index, pixel coordinates, area)
    for i, mask in enumerate(masks):
        for prop in regionprops(label(mask > 0, connectivity=2)):
            regions.append((i, tuple(prop.coords.T), prop.area))
    areas = np.array([a for _, _, a in regions], dtype=float)
    normal = np.concatenate([amap[mask == 0] for mask, amap in zip(masks, maps, strict=True)])
    thresholds = np.unique(np.concatenate([amap.ravel() for amap in maps]))[::-1]
    out = []
    for edge in [*np.quantile(areas, (0.25, 0.5, 0.75)), np.inf]:
        chosen = [(i, c) for i, c, a in regions if a <= edge]
        fpr, pro = [0.0], [0.0]
        for t in thresholds:
            fpr.append(float((normal >= t).mean()))
            pro.append(float(np.mean([(maps[i][c] >= t).mean() for i, c in chosen])))
        x, y = np.array(fpr), np.array(pro)
        y_end = np.interp(max_fpr, x, y)
        keep = x < max_fpr
        out.append(auc(np.r_[x[keep], max_fpr], np.r_[y[keep], y_end]) / max_fpr)
    return out


def test_aupro_by_size_matches_outside_reference() -> None:
    rng = np.random.default_rng(7)
    masks, maps = [], []
    for h, w in ((20, 30), (24, 18), (16, 16), (30, 22)):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(3):
            side = int(rng.integers(1, 7))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            mask[y : y + side, x : x + int(rng.integers(1, 7))] = 1
        masks.append(mask)
        maps.append(np.round(rng.random((h, w)) * 50) / 50 + 0.3 * mask)  # many ties
    for max_fpr in (0.3, 0.05):
        got = aupro_by_size(masks, maps, (max_fpr,)).aupro[0]
        np.testing.assert_allclose(got, _reference_aupro_by_size(masks, maps, max_fpr), rtol=0, atol=1e-9)


def test_pixel_metrics_take_masks_of_different_sizes() -> None:
    masks, maps = _four_sizes()
    expected = _pairwise_auroc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(EdgeadError, match=r"mask 1 and map 1 of the same \(H, W\), found \(5, 8\) and \(4, 10\)"):
        pixel_auroc(masks, [maps[0], maps[0], maps[2]])
    with pytest.raises(EdgeadError, match="one anomaly map per mask, found 2 maps for 3 masks"):
        aupro(masks, maps[:2])


def test_pixel_metrics_in_one_pass_equal_the_separate_ones() -> None:
    rng = np.random.default_rng(3)
    masks = [(rng.random((12, 20)) > 0.9).astype(np.uint8), np.zeros((9, 9), np.uint8), (rng.random((15, 7)) > 0.8)]
    maps = [np.round(rng.random(m.shape) * 20) / 20 + 0.2 * m for m in masks]
    pixel, by_size = pixel_metrics(masks, maps)
    assert pixel == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert by_size == aupro_by_size(masks, maps)
