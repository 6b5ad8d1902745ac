"""edgead.fidelity: figures over every image, label flips, and the verdict of each precision's budget."""

import numpy as np
import pytest

from edgead.errors import InputError
from edgead.fidelity import Budget, measure


def _outputs(n=50, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, 8, 8)).astype(np.float32)
    scores = maps.reshape(n, -1).max(1)
    return scores, maps


def test_differences_cover_every_image_not_only_the_first_batch():
    s, m = _outputs()
    s2, m2 = s.copy(), m.copy()
    m2[49, 3, 3] += 0.5  # the last image only
    s2[49] += 0.25
    f = measure(s, m, s2, m2, reference="ref", candidate="c", precision="fp32", threshold=0.9)
    assert f.images == 50
    assert f.max_abs_maps == pytest.approx(0.5, abs=1e-6) and f.max_abs_scores == pytest.approx(0.25, abs=1e-6)
    assert f.score_error_rel == pytest.approx(0.25 / 0.9, rel=1e-6)
    assert Budget().failures(f) == ["max |diff| of maps 5.00e-01 > 1e-04", "max |diff| of scores 2.50e-01 > 1e-04"]
    same = measure(s, m, s, m, reference="ref", candidate="c", precision="fp32", threshold=0.9)
    assert Budget().failures(same) == [] and same.flips == 0 and same.map_r == pytest.approx(1.0)


def test_label_flips_against_the_threshold():
    s = np.array([0.1, 0.2, 0.3, 0.4])
    m = np.zeros((4, 2, 2)) + s[:, None, None]
    f = measure(s, m, s + np.array([0.0, 0.15, 0.0, -0.15]), m, reference="r", candidate="c", precision="int8",
                threshold=0.3)
    # 0.2 -> 0.35 crosses up; 0.4 -> 0.25 crosses down; 0.3 stays at the threshold (not > it): normal
    assert (f.flips_to_anomalous, f.flips_to_normal, f.flips) == (1, 1, 2)
    assert Budget().failures(f) == []  # flips are reported, not judged by default
    assert Budget(max_flips=1).failures(f) == ["2 label flips > 1"]
    assert measure(s, m, s, m, reference="r", candidate="c", precision="int8").flips is None  # no threshold


def test_reduced_precision_budget_map_r_and_auroc_drop():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 10)
    s = np.concatenate([rng.uniform(0, 1, 10), rng.uniform(2, 3, 10)])  # separable: AUROC 1.0
    m = rng.random((20, 6, 6)) + s[:, None, None]
    noisy = m + rng.normal(0, 0.3, m.shape)
    s_bad = s.copy()
    s_bad[0] = 5.0  # one good image above every defect: AUROC 0.90
    f = measure(s, m, s_bad, noisy, reference="r", candidate="c", precision="int8", labels=labels)
    assert f.reference_metrics["image_auroc"] == 1.0 and f.metrics["image_auroc"] == pytest.approx(0.90)
    assert f.drop("auroc") == pytest.approx(0.10) and f.map_r < 0.99
    assert Budget().failures(f) == [f"map r {f.map_r:.4f} < 0.99", "image_auroc drop 10.00 points > 0.50"]
    assert Budget(min_map_r=0.5, max_drop=0.10).failures(f) == []
    assert Budget(metric="map_r", max_drop=0.001, min_map_r=0).failures(f) == [
        f"map_r drop {100 * (1 - f.map_r):.2f} points > 0.10"]
    assert f.to_dict()["delta_vs_reference"]["image_auroc"] == pytest.approx(-0.10)
    # an FP32 artifact is judged on its differences, not on r/AUROC
    assert Budget(atol=10).failures(measure(s, m, s, m, reference="r", candidate="c", precision="fp32",
                                            labels=labels)) == []


def test_budget_rejects_bad_values():
    with pytest.raises(InputError, match="expected a metric in auroc"):
        Budget(metric="f1")
    with pytest.raises(InputError, match="expected max_drop >= 0, found -0.1"):
        Budget(max_drop=-0.1)
    with pytest.raises(InputError, match="expected outputs of the same images"):
        measure(np.zeros(3), np.zeros((3, 2, 2)), np.zeros(2), np.zeros((2, 2, 2)), reference="r",
                candidate="c", precision="int8")


def test_fp32_rule_is_absolute_up_to_one_and_relative_above():
    # a density head's NLL far from its training data: float32 keeps ~7 digits of 9e7, so two correct
    # kernels differ by ~100 there; the same rule still holds unit-scale maps to 1e-4 absolute
    ref_m = np.array([[[9.17e7, 0.5]]])
    ref_s = np.array([5.9e7])
    big = measure(ref_s, ref_m, ref_s + 40.0, ref_m + np.array([[[108.0, 0.0]]]), reference="r", candidate="c",
                  precision="fp32")
    assert big.max_abs_maps == pytest.approx(108.0) and big.max_scaled_maps == pytest.approx(108 / 9.17e7)
    assert Budget().failures(big) == []
    small = measure(ref_s, ref_m, ref_s, ref_m + np.array([[[0.0, 2e-4]]]), reference="r", candidate="c",
                    precision="fp32")
    assert small.max_scaled_maps == pytest.approx(2e-4) and Budget().failures(small) == [
        "max |diff| of maps 2.00e-04 > 1e-04"]
    # 1e-3 of a large value is a real miss, reported with its relative size
    off = measure(ref_s, ref_m, ref_s, ref_m * np.array([[[1.001, 1.0]]]), reference="r", candidate="c",
                  precision="fp32")
    assert Budget().failures(off) == ["max |diff| of maps 9.17e+04 (1.00e-03 relative) > 1e-04"]
    nan = measure(ref_s, ref_m, ref_s, ref_m * np.nan, reference="r", candidate="c", precision="fp32")
    assert len(Budget().failures(nan)) == 1
