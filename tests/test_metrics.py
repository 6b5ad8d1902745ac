"""Tests for edgead.metrics against hand-computed values and brute-force reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from edgead.errors import EdgeadError
from edgead.metrics import Metrics, aupro, auroc, best_f1, evaluate, f1_max, pixel_auroc, pro_curve


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
