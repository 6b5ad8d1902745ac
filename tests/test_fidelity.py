"""edgead.fidelity: figures over every image, label flips, and the verdict of each precision's budget."""

import numpy as np
import pytest

from edgead.errors import InputError
from edgead.fidelity import Budget, Problem, measure, pearson


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
    m = np.array([[0.0, 0.01], [0.02, 0.03]]) + s[:, None, None]  # maps that vary over the image (flat ones fail)
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
    # one normal of ten above every defect: 10 points, but 20 images cannot tell it from 0.5 (35 % of draws miss it)
    assert Budget().failures(f) == [
        f"map r {f.map_r:.4f} < 0.99", "image_auroc drop 10.00 points (95% CI 0.00 to 30.00) cannot be told from the "
        "0.50-point budget on 20 labelled images (10 with defects): about 23 labelled images (11 with defects) would "
        "be needed to tell"]
    assert Budget(min_map_r=0.5, max_drop=0.30).failures(f) == []
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


def test_flat_or_nan_outputs_fail_every_budget_with_their_own_reason():
    """A flat map once had map r 1.0 and a NaN one passed too (``den > 0`` is False for NaN): both met 0.99."""
    rng = np.random.default_rng(4)
    labels = np.array([0] * 6 + [1] * 6)
    s = np.concatenate([rng.uniform(0, 1, 6), rng.uniform(2, 3, 6)])
    m = 0.05 * rng.random((12, 8, 8)) + s[:, None, None]
    flat = np.zeros_like(m) + s[:, None, None]  # each map one value (its score): r over the set is high
    assert pearson(m, flat) > 0.99 and pearson(m, np.zeros_like(m)) != pearson(m, np.zeros_like(m))  # NaN
    for lab in (labels, None):
        f = measure(s, m, s, flat, reference="r", candidate="c", precision="int8", labels=lab, threshold=1.5)
        assert Budget().failures(f) == ["candidate maps flat (one value) in 12 of 12 images"]
        const = measure(s, m, s, np.full_like(m, 0.7), reference="r", candidate="c", precision="int8",
                        labels=lab)
        assert np.isnan(const.map_r) and Budget().failures(const) == [
            "candidate maps flat (one value) in 12 of 12 images",
            "map r undefined (a side's maps have no variance or hold NaN/Inf)"]
        nan_maps = m.copy()
        nan_maps[3, 2, 2] = np.nan
        f = measure(s, m, s, nan_maps, reference="r", candidate="c", precision="int8", labels=lab)
        assert Budget().failures(f) == ["candidate maps not finite (NaN/Inf) in 1 of 12 images",
                                        "map r undefined (a side's maps have no variance or hold NaN/Inf)"]
        assert f.metrics == {}  # no metric of NaN outputs; the problem itself is the verdict
        f = measure(s, m, np.where(labels == 1, np.inf, s), m, reference="r", candidate="c", precision="fp32",
                    labels=lab)
        assert Budget().failures(f) == ["candidate scores not finite (NaN/Inf) in 6 of 12 images"]
    # the reference's own problems are named too; an FP32 copy of a flat reference is no pass
    f = measure(s, flat, s, flat, reference="r", candidate="c", precision="fp32")
    assert Budget().failures(f) == ["reference maps flat (one value) in 12 of 12 images",
                                    "candidate maps flat (one value) in 12 of 12 images"]


def _parity(ref_scores, ref_maps, scores, maps):
    return measure(ref_scores, ref_maps, scores, maps, reference="torch", candidate="onnx", precision="fp32")


def test_export_parity_is_a_fidelity_and_fails_on_nan_and_flat_maps():
    """Export parity (``Fidelity.within``) and every other check read the same structured problems."""
    rng = np.random.default_rng(5)
    maps = rng.random((2, 8, 8)).astype(np.float32)
    scores = maps.max((1, 2))
    assert _parity(scores, maps, scores.copy(), maps.copy()).within(1e-4)
    assert not _parity(scores, maps, scores, maps + 2e-4).within(1e-4)
    d = _parity(scores, np.zeros_like(maps), scores.copy(), np.zeros_like(maps))
    assert d.max_abs_maps == 0.0 and not d.within(1e-4)  # equal, and still not a working detector
    assert d.problems == (Problem("reference", "maps", "flat", 2, 2), Problem("candidate", "maps", "flat", 2, 2))
    assert [str(p) for p in d.problems] == ["reference maps flat (one value) in 2 of 2 images",
                                            "candidate maps flat (one value) in 2 of 2 images"]
    assert d.describe().startswith("reference maps flat (one value) in 2 of 2 images; candidate maps flat")
    assert d.to_dict()["problems"] == [str(p) for p in d.problems] and d.finite
    nan = _parity(scores, maps, np.array([np.nan, 0.5], np.float32), maps)
    assert not nan.within(1.0) and not nan.finite
    assert nan.problems == (Problem("candidate", "scores", "nonfinite", 1, 2),)


def _proxy_with_a_near_tie():
    """The issue's tiny proxy: 5 normals and 5 painted copies; one normal and one defect one float32 ulp apart."""
    labels = np.array([0] * 5 + [1] * 5)
    s = np.array([0.61, 0.72, 0.83, 0.94, 1.0775469, 1.0775471, 1.21, 1.32, 1.43, 1.54])
    maps = np.random.default_rng(6).random((10, 8, 8)) + s[:, None, None]
    return labels, s, maps


def test_near_ties_are_ties_and_the_float_model_always_passes_its_budget():
    labels, s, maps = _proxy_with_a_near_tie()
    swapped = s.copy()
    swapped[4], swapped[5] = s[5], s[4]  # within float32 noise the pair changes order: 4 "points" of 25 pairs
    f = measure(s, maps, swapped, maps + 1e-7, reference="r", candidate="all-float", precision="int8",
                labels=labels)
    assert f.reference_metrics["image_auroc"] == 1.0 and f.metrics["image_auroc"] == pytest.approx(0.96)
    assert Budget().failures(f) == [] and Budget(max_drop=0.0).failures(f) == []  # was "drop 4.00 points > 0.50"
    iv = f.auroc_interval
    assert (iv.drop, iv.low, iv.high, iv.changed_pairs) == (0.0, 0.0, 0.0, 0) and f.drop("auroc") == 0.0
    # beyond the noise the order is real: the tied pair (one half) now below, 2 points, and 10 images cannot tell
    # that from 0.5 points
    real = s.copy()
    real[4] = 1.09
    f = measure(s, maps, real, maps + 1e-3, reference="r", candidate="int8", precision="int8", labels=labels)
    assert f.auroc_interval.changed_pairs == 1 and f.drop("auroc") == pytest.approx(0.02)
    assert Budget().failures(f) == [
        "image_auroc drop 2.00 points (95% CI 0.00 to 12.00) cannot be told from the 0.50-point budget on 10 "
        "labelled images (5 with defects): about 18 labelled images (9 with defects) would be needed to tell"]
    # a bigger noise (the export's measured parity) makes the same swap a tie again
    assert measure(s, maps, real, maps, reference="r", candidate="int8", precision="int8", labels=labels,
                   noise=0.02).auroc_interval.drop == 0.0


def test_auroc_drop_interval_separates_a_real_drop_from_a_small_set():
    from edgead.fidelity import auroc_drop

    rng = np.random.default_rng(2)
    labels = np.array([0] * 40 + [1] * 40)
    s = np.concatenate([rng.uniform(0, 1, 40), rng.uniform(2, 3, 40)])
    bad = s.copy()
    bad[:6] = 5.0  # six normals above every defect: 15 points, significant on 80 images
    iv = auroc_drop(labels, s, bad)
    assert (iv.drop, iv.low, iv.high, iv.changed_pairs) == (pytest.approx(0.15), pytest.approx(0.05),
                                                            pytest.approx(0.275), 240)
    assert iv.failures(0.005) == ["image_auroc drop 15.00 points (95% CI 5.00 to 27.50) > 0.50"]
    one = s.copy()
    one[0] = 2.5  # one normal in the middle of the defects: 1.06 points
    iv = auroc_drop(labels, s, one)
    assert iv.drop == pytest.approx(17 / 1600) and iv.needed_images(0.005) == 286
    assert iv.failures(0.1) == [] and iv.failures(0.005)[0].endswith(
        "cannot be told from the 0.50-point budget on 80 labelled images (40 with defects): about 286 labelled "
        "images (143 with defects) would be needed to tell")
    assert auroc_drop(labels, s, one) == iv  # fixed seed: the same interval every time
    assert auroc_drop(labels, s, s[::-1].copy() * 0 + s).high == 0.0


def test_reference_noise_comes_from_the_exports_parity_record():
    from edgead.fidelity import NOISE, score_noise

    assert score_noise({"parity_vs_torch": {"max_scaled_scores": 3.2e-6}}) == 3.2e-6
    assert score_noise({"parity_vs_torch": {"max_scaled_scores": 1e-9}}) == NOISE == 1e-6
    assert score_noise({}) == NOISE and score_noise(None) == NOISE


def test_the_artifacts_own_threshold_is_recomputed_by_the_fit_rule_beside_the_reference_one():
    from edgead.fidelity import recomputed_threshold, threshold_rule

    normals = np.array([0.9, 1.0, 1.1, 1.2, 1.0])
    assert threshold_rule(normals) == pytest.approx(1.04 + 3 * normals.std())
    labels = np.array([0] * 5 + [1] * 5)
    ref = np.concatenate([normals, [1.5, 1.6, 1.7, 1.8, 1.9]])
    maps = np.random.default_rng(8).random((10, 4, 4)) + ref[:, None, None]
    same = measure(ref, maps, ref, maps, reference="r", candidate="c", precision="int8", threshold=1.45,
                   labels=labels)
    assert same.own_threshold == 1.45 and same.own_threshold_flips == 0 == same.flips
    # an artifact that scores every image 0.1 higher: its own threshold moves by the same 0.1
    up = measure(ref, maps, ref + 0.1, maps, reference="r", candidate="c", precision="int8", threshold=1.45,
                 labels=labels)
    assert up.own_threshold == pytest.approx(1.55) and up.own_threshold_flips == 0 and up.flips == 0
    # normals spread wider by INT8 noise: the recomputed threshold rises with their mean + 3 std
    wide = ref.copy()
    wide[:5] = [0.8, 1.0, 1.2, 1.3, 1.0]
    w = measure(ref, maps, wide, maps, reference="r", candidate="c", precision="int8", threshold=1.45,
                labels=labels)
    assert w.own_threshold == pytest.approx(1.45 + threshold_rule(wide[:5]) - threshold_rule(normals))
    assert w.own_threshold == pytest.approx(1.687127) and w.own_threshold_flips == 2  # defects 1.5, 1.6 fall below
    assert recomputed_threshold(1.0, np.array([1.0]), np.array([2.0])) is None  # one normal: no spread to use


def test_small_defect_aupro_q1_drop_is_judged_beside_the_auroc_drop():
    """Two 1 px and two 16 px defects: Q1 (areas <= the 25th percentile, 1 px) holds the two 1 px ones. An artifact
    that scores those two pixels below every normal pixel keeps the image AUROC and loses all of Q1 (100 points),
    while the all-region AUPRO loses half (the two large regions are still found first)."""
    rng = np.random.default_rng(8)
    labels = np.array([0] * 4 + [1] * 4)
    masks = np.zeros((8, 8, 8), np.uint8)
    masks[4, 2, 2] = masks[5, 5, 5] = 1
    masks[6, 1:5, 1:5] = masks[7, 3:7, 3:7] = 1
    maps = rng.uniform(0.0, 0.5, masks.shape)
    ref = np.where(masks > 0, 1.0, maps)
    cand = np.where(masks > 0, 1.0, maps)
    cand[4, 2, 2] = cand[5, 5, 5] = -1.0  # the small defects fall below every normal pixel
    scores = np.array([0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 1.3, 1.4])
    f = measure(scores, ref, scores, cand, reference="r", candidate="c", precision="int8", labels=labels,
                masks=masks)
    assert f.reference_metrics["aupro_q1"] == pytest.approx(1.0) and f.metrics["aupro_q1"] == pytest.approx(0.0)
    assert f.drop("q1") == pytest.approx(1.0) and f.drop("aupro") == pytest.approx(0.5)
    assert f.drop("image_auroc") == 0.0
    assert Budget(min_map_r=0.0).failures(f) == ["small-defect AUPRO (Q1) drop 100.00 points > 1.00"]
    assert Budget(min_map_r=0.0, max_q1_drop=1.0).failures(f) == []
    assert Budget(min_map_r=0.0, metric="q1", max_drop=0.5).failures(f) == ["aupro_q1 drop 100.00 points > 50.00"]
    # FP32 artifacts are judged on their differences, and without masks there is no Q1 to judge
    assert "aupro_q1" not in measure(scores, ref, scores, cand, reference="r", candidate="c", precision="int8",
                                     labels=labels).metrics
