"""INT8: calibration selection, the compile-time fidelity gate, accuracy-aware Q/DQ, OpenVINO NNCF vs FP32."""

import re

import numpy as np
import onnx
import pytest

import edgead.runtimes as rt
from edgead.calib import CalibrationSet
from edgead.calib.dataset import split_calibration, stratified_indices
from edgead.errors import FidelityError, InputError
from edgead.evaluate import evaluate_runner
from edgead.fidelity import Budget
from edgead.runtimes.compare import pearson
from edgead.spec import DetectorSpec


def _spec():
    return DetectorSpec(family="fbft", backbone="vit_tiny_test_patch14", norm="layernorm", layers=(7, 11),
                        input_size=56)


@pytest.fixture(scope="module")
def shallow_export(tiny_synthetic, tmp_path_factory):
    """``fitted_export``'s detector (FBFT, 5 epochs on ``tiny_synthetic``) tapped at blocks 1 and 3 instead of 7 and
    11: the backbone is truncated after its last tap, so 4 ViT blocks instead of 12 and 26 candidates for the INT8
    searches instead of 66 (OpenVINO compiles the whole model once per candidate, and a smaller model faster). The
    test backbone is random with LayerScale 1e-5, so its blocks are close to the identity and the shallow detector
    gives the same figures as the deep one to 3 significant digits: plain OpenVINO INT8 map r drop 4.912e-4 on
    the labelled set (deep: 4.913e-4), the same student layer kept in float; on the proxy the same failing steps
    up to all candidates but one in float, which passes (deep: 65 of 66, shallow: 25 of 26)."""
    from edgead.export import export_onnx
    from edgead.fit import fit
    from edgead.models.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("shallow")
    r = fit(tiny_synthetic, root / "ckpt", "fbft", "vit_tiny_test_patch14", "layernorm", 56, epochs=5, layers=(1, 3))
    export_onnx(load_checkpoint(r.checkpoint), root / "export", source=r.checkpoint)
    return root / "export"


def test_calibration_set_reads_mvtec_train_good(tiny_synthetic):
    cs = CalibrationSet(tiny_synthetic, _spec(), batch_size=5)
    assert len(cs) == 12 and cs.images.dtype == np.uint8 and cs.images.shape == (12, 56, 56, 3)
    assert [len(b) for b in cs.batches()] == [5, 5, 2]
    assert [len(b) for b in cs.full_batches()] == [5, 5, 5]
    assert cs.describe()["selection"] == "stratified over the sorted folder listing"


def test_a_tiled_spec_calibrates_on_the_plans_tiles(tmp_path):
    """Calibration reads tiles through the runtimes' cutter: 2 frames of 300x250 (42 tiles of 56 px each), limit 10
    -> 5 evenly spread tiles per frame, each exactly a tile of its frame."""
    from dataclasses import replace

    from edgead.imageio import write_image
    from edgead.runtimes.tiling import tile_grid
    from edgead.spec import TilePlan

    frames = [np.random.default_rng(i).integers(0, 256, (300, 250, 3), dtype=np.uint8) for i in range(2)]
    for i, f in enumerate(frames):
        write_image(tmp_path / f"{i}.png", f)
    spec = replace(_spec(), tiling=TilePlan(56, 14))
    cs = CalibrationSet(tmp_path, spec, limit=10)
    assert cs.images.shape == (10, 56, 56, 3) and cs.describe()["frames"] == 2
    origins = tile_grid((300, 250), spec.tiling).origins()
    picked = np.round(np.linspace(0, 41, 5)).astype(int)
    for k, t in enumerate(picked):
        y, x = origins[t]
        np.testing.assert_array_equal(cs.images[k], frames[0][y : y + 56, x : x + 56])
    y, x = origins[41]
    np.testing.assert_array_equal(cs.images[9], frames[1][y : y + 56, x : x + 56])


def test_calibration_subset_is_stratified_not_the_first_files():
    idx = stratified_indices(1000, 10, seed=3)
    assert len(idx) == 10 and len(set(idx)) == 10
    assert [i // 100 for i in idx] == list(range(10))  # one draw from each tenth of the folder
    assert stratified_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    files = [f"{i:04d}.png" for i in range(100)]
    calib, held = split_calibration(files, 20, 5)
    assert len(calib) == 20 and len(held) == 5 and not set(calib) & set(held)
    assert max(int(f[:4]) for f in calib) >= 90 and max(int(f[:4]) for f in held) >= 80  # spread, not a prefix
    with pytest.raises(InputError, match="expected more than 5 calibration images to hold 5 out"):
        split_calibration(files[:5], 20, 5)


def test_calibration_folder_without_usable_image(tmp_path):
    (tmp_path / "a.png").write_bytes(b"broken")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"has no usable image \(2 files, none readable\)"):
        CalibrationSet(tmp_path, _spec())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="calibration folder has no usable image"):
        CalibrationSet(tmp_path / "empty", _spec())


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_int8_close_to_fp32(fitted_export, tiny_synthetic, engine):
    from edgead.export.compile import compile_artifact

    folder = compile_artifact(fitted_export, engine, "int8", tiny_synthetic, calib_method="minmax",
                              accept_drop=True)
    m = rt.load(folder).manifest
    calib, fid = m.extra["calibration"], m.extra["fidelity"]
    # 12 training images: 4 held out for the gate (proxy: 4 normals + 4 painted defects), 8 calibrate
    assert m.precision == "int8" and calib["images"] == 8 and calib["available"] == 12
    assert calib["method"] == "minmax"
    assert fid["measured"] and fid["validation"]["images"] == 8 and fid["validation"]["normals"] == 4
    executed = rt.load(folder).executed_precision()  # OpenVINO counts its int8 products: "int8" or "int8 n/m"
    assert executed.split()[0] == "int8", executed
    fp32 = evaluate_runner(rt.load(fitted_export), tiny_synthetic)
    int8 = evaluate_runner(rt.load(folder), tiny_synthetic)
    # The 32-wide test backbone quantises worse than a real ViT; the >= 0.99 acceptance figure is measured on
    # ViT-S/14 (see docs/int8.md).
    assert pearson(fp32.maps, int8.maps) >= 0.97
    assert abs(int8.metrics.image_auroc - fp32.metrics.image_auroc) <= 0.05
    q = m.extra["quantization"]
    assert q["float_layers"] == [] and q["accuracy_control"] is False
    assert q["quantized_layers"] >= 50  # OpenVINO 55 compute layers, Q/DQ 78 MatMuls on the tiny test model


def test_openvino_all_float_probe_is_the_fp32_model(fitted_export, tiny_synthetic):
    """The OpenVINO search puts a layer back in float by skipping the FakeQuantize nodes in front of it and giving
    it back its float bias: with every candidate back (the 54 matrix products and convolutions and the 12 fused
    attentions, whose query and key NNCF quantises), nothing stays quantised and the probe is the FP32 model within
    the FP32 parity target. Before, the attentions were no candidates and NNCF's bias correction stayed: scores
    4.2e-4 and maps 1.2e-3 from FP32 (relative), map r 0.9999972."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    from edgead.calib.dataset import CalibrationSet
    from edgead.calib.openvino_int8 import (
        _bypass,
        _fq_inputs,
        _measure_fn,
        _quantized_ops,
        float_biases,
        image_layer,
        still_quantised,
    )
    from edgead.calib.search import parity_failures
    from edgead.calib.validation import AccuracyTarget, labelled_validation

    ref = rt.load(fitted_export)
    model = ov.convert_model(str(fitted_export / "model.onnx"))  # as compile_openvino reads it: fused attention
    q = nncf.quantize(model.clone(), nncf.Dataset(list(CalibrationSet(tiny_synthetic, ref.spec,
                                                                      batch_size=1).batches(1))),
                      model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                      ignored_scope=nncf.IgnoredScope(names=[image_layer(model)], patterns=[r".*/post/.*"]),
                      advanced_parameters=AdvancedQuantizationParameters(backend_params={"compress_weights": False}))
    layers = _quantized_ops(q, (r".*/post/.*",), image_layer(q))
    types = {op.get_friendly_name(): op.get_type_name() for op in q.get_ordered_ops()}
    assert [types[n] for n in layers].count("ScaledDotProductAttention") == 12 and len(layers) == 66
    assert not _fq_inputs(q)[image_layer(q)]
    assert still_quantised(_bypass(q, set(layers))) == []
    biases = float_biases(model)
    assert len(biases) == 7  # the patch embedding and the students (the ViT blocks bias their products otherwise)
    target = AccuracyTarget.from_runner(ref, labelled_validation(tiny_synthetic, ref.spec), Budget(metric="map_r"))
    measure = _measure_fn(q, target, biases)
    full, one, every = measure([], False), measure(layers[-2:], False), measure(layers, False)
    assert parity_failures(every, Budget()) == [], every
    assert every.max_scaled_scores <= 1e-5 and every.max_scaled_maps <= 1e-5 and every.map_r >= 1 - 1e-9
    assert full.map_r < every.map_r and one.map_r != full.map_r
    without = _measure_fn(q, target)(layers, False)  # the corrected biases kept: not the FP32 model
    assert without.max_scaled_maps > 1e-4 and parity_failures(without, Budget())


def test_gate_refuses_an_artifact_that_misses_the_budget(fitted_export, tiny_synthetic, tmp_path):
    import shutil

    from edgead.export.compile import compile_artifact

    fitted_export = shutil.copytree(fitted_export, tmp_path / "export", ignore=shutil.ignore_patterns("*-*"))
    strict = Budget(min_map_r=0.999999)
    with pytest.raises(FidelityError, match=r"refused onnxruntime int8: map r 0\.99\d+ < 0\.999999 against the "
                       r"PyTorch checkpoint on 12 validation images \(labelled\); nothing written"):
        compile_artifact(fitted_export, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic, budget=strict)
    assert not (fitted_export / "onnx-int8").exists()
    assert not [p for p in fitted_export.iterdir() if p.name.startswith(".")]  # no staging left behind
    folder = compile_artifact(fitted_export, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic,
                              budget=strict, accept_drop=True)
    fid = rt.load(folder).manifest.extra["fidelity"]
    assert fid["accepted"] is True and fid["passed"] is False and fid["failures"][0].startswith("map r 0.99")
    assert fid["validation"] == {"kind": "labelled", "folder": str(tiny_synthetic), "images": 12, "defects": 8}


def test_qdq_tight_budget_keeps_the_most_sensitive_layers_in_float(fitted_export, tiny_synthetic, tmp_path):
    from edgead.export.compile import compile_artifact
    from edgead.verify import verify_artifacts

    budget = Budget(metric="map_r", max_drop=1e-6)  # full INT8 misses it (map error ~6e-5), all-float meets it
    folder = compile_artifact(fitted_export, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic,
                              budget=budget, accuracy_aware=True)
    q = rt.load(folder).manifest.extra["quantization"]
    kept = q["float_layers"]
    n_all = q["quantized_layers"] + len(kept)
    assert 1 <= len(kept) < n_all // 2 and n_all >= 70
    assert q["accuracy_control"] and q["budget"]["metric"] == "map_r"
    drops = [s["drop"] for s in q["search"]]
    assert drops[0] > budget.max_drop and q["search"][0]["passed"] is False and q["search"][0]["float_layers"] == 0
    final = rt.load(folder).manifest.extra["fidelity"]
    assert final["passed"] and final["drop"] <= budget.max_drop < drops[0]  # the drop shrank into the budget
    # the kept layers really read float inputs: no DequantizeLinear feeds them
    g = onnx.load(str(folder / "model.onnx")).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    for node in (n for n in g.node if n.name in kept):
        assert all(producer.get(i) != "DequantizeLinear" for i in node.input), node.name
    rep = verify_artifacts(fitted_export, tiny_synthetic)
    by = {c.folder.name: c for c in rep.checks}
    assert by["onnx-int8"].quantization["float_layers"] == kept


def test_impossible_budget_names_the_best_drop_reached(fitted_export, tiny_synthetic):
    from edgead.export.compile import compile_artifact

    # the all-float graph equals FP32, so a budget is out of reach only with a cap on the layers kept in float
    impossible = Budget(metric="map_r", max_drop=1e-9)
    with pytest.raises(FidelityError, match=r"cannot meet the budget \(map_r drop <= 1e-09, map r >= 0.99\) with "
                       r"at most 0 of \d+ layers in float; best reached: map_r drop \d\.\d{6}, map r "
                       r"\d\.\d{6} \(map_r drop 0\.0\d points > 0\.00\); nothing written"):
        compile_artifact(fitted_export, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic,
                         budget=impossible, accuracy_aware=True, max_float_layers=0)


def test_a_budget_only_all_float_meets_is_refused_not_written_as_int8(fitted_export, tiny_synthetic, tmp_path):
    """Keeping every layer in float would be the FP32 model under an INT8 name: the search stops one short."""
    import shutil

    from edgead.export.compile import compile_artifact

    export = shutil.copytree(fitted_export, tmp_path / "export", ignore=shutil.ignore_patterns("*-*"))
    class ExactCopy(Budget):  # test harness: a budget only an exact copy of the FP32 maps meets
        def failures(self, f):
            return [] if f.map_r == 1.0 else [f"map r {f.map_r!r} is not exactly 1"]

    impossible = ExactCopy(metric="map_r", max_drop=0.0)
    with pytest.raises(FidelityError, match=r"with at most (\d+) of \d+ layers in float \(all of them would be the "
                       r"FP32 model, not INT8\); best reached: map_r drop \d\.\d{6}"):
        compile_artifact(export, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic, budget=impossible,
                         accuracy_aware=True)
    assert not (export / "onnx-int8").exists()


def test_openvino_accuracy_control_reverts_layers_without_breaking_them(shallow_export, tiny_synthetic, tmp_path):
    """The search puts the most sensitive layers back in float until a budget of half the plain INT8 map error
    holds (NNCF's own accuracy control, with SmoothQuant on, restored the original weights behind a scaled input
    and missed by far). On the 4-block ``shallow_export``: 26 candidates, 30 probe compiles instead of 70."""
    import shutil

    from edgead.export.compile import compile_artifact

    export = shutil.copytree(shallow_export, tmp_path / "export", ignore=shutil.ignore_patterns("*-*"))
    plain = compile_artifact(export, "openvino", "int8", tiny_synthetic, val=tiny_synthetic, accept_drop=True,
                             budget=Budget(metric="map_r"))
    drop = rt.load(plain).manifest.extra["fidelity"]["drop"]
    shutil.rmtree(plain)
    budget = Budget(metric="map_r", max_drop=drop / 2)
    folder = compile_artifact(export, "openvino", "int8", tiny_synthetic, val=tiny_synthetic, budget=budget,
                              accuracy_aware=True)
    extra = rt.load(folder).manifest.extra
    q, fid = extra["quantization"], extra["fidelity"]
    assert q["accuracy_control"] and len(q["float_layers"]) >= 1 and q["search"][0]["passed"] is False
    assert fid["passed"] and fid["drop"] <= drop / 2, (drop, fid)


@pytest.mark.parametrize("how", ["flat", "nan"])
@pytest.mark.parametrize("val", ["labelled", "proxy"])
def test_gate_refuses_a_runner_with_flat_or_nan_outputs(fitted_export, tiny_synthetic, monkeypatch, how, val):
    """A flat map once had map r 1.0: an INT8 artifact with one value per map passed the gate (scores untouched,
    so the AUROC did not move either); a NaN one crashed it on labelled data."""
    from edgead.export import gate
    from tests.test_verify import FLAT, NAN, Broken

    target = gate.plan(fitted_export, tiny_synthetic, tiny_synthetic if val == "labelled" else None, Budget()).target
    real = gate.load
    monkeypatch.setattr(gate, "load", lambda folder, engine=None, **kw: Broken(real(folder, engine, **kw), how,
                                                                                "int8"))
    n = 12 if val == "labelled" else 8  # the proxy: 4 held-out normals and a painted copy of each
    reasons = "; ".join(f.format(n=n) for f in (FLAT if how == "flat" else NAN))
    kind = "labelled" if val == "labelled" else "proxy: held-out normals + synthetic defects painted on them"
    with pytest.raises(FidelityError) as err:
        gate.judge(fitted_export, target, accept_drop=False)
    assert str(err.value) == (f"refused onnxruntime int8: {reasons} against the PyTorch checkpoint on {n} "
                              f"validation "
                              f"images ({kind}); nothing written. Its outputs cannot be right, whatever stays in "
                              f"float: check the engine and the build")
    rec = gate.judge(fitted_export, target, accept_drop=True)
    assert rec["passed"] is False and rec["accepted"] is True and rec["failures"] == reasons.split("; ")
    assert rec["problems"] == [p for p in rec["failures"] if not p.startswith("map r")]


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_tiny_detector_max_drop_half_a_point_compiles_on_its_proxy(shallow_export, tiny_synthetic, tmp_path,
                                                                   engine):
    """Issue 26: on a proxy of 4 normals and 4 painted copies (16 pairs, one pair = 6.25 points) the 0.5-point
    budget is judged with its interval: it compiles (or would be refused naming the images it needs, never a drop
    a tie made). Plain INT8 misses it here (OpenVINO: small-defect AUPRO drop 4.4 points; Q/DQ: a drop whose
    interval, -25 to 25 points, cannot be told from it), so the search runs: on the 4-block ``shallow_export``
    (OpenVINO: 26 candidates instead of 66)."""
    import shutil

    from edgead.export.compile import compile_artifact

    export = shutil.copytree(shallow_export, tmp_path / "export", ignore=shutil.ignore_patterns("*-*"))
    folder = compile_artifact(export, engine, "int8", tiny_synthetic, max_drop=0.005)
    fid = rt.load(folder).manifest.extra["fidelity"]
    iv = fid["auroc_interval"]
    assert fid["passed"] and fid["problems"] == [] and fid["map_r"] >= 0.999 and fid["noise"] == pytest.approx(1e-6)
    assert (iv["normals"], iv["defects"], iv["resamples"], iv["seed"]) == (4, 4, 2000, 0)
    assert iv["high"] <= 0.005 and fid["drop"] == iv["drop"] <= 0.005
    assert fid["flips"] is not None and fid["score_error_rel"] < 0.05  # flips and score shift always recorded
    thr = fid["threshold"]  # the artifact's own threshold from the 4 held-out normals, beside the PyTorch one
    assert thr["reference"] == rt.load(export, "onnxruntime").spec.threshold
    assert abs(thr["recomputed"] - thr["reference"]) < 0.05 * thr["reference"] and thr["flips_with_recomputed"] <= 2
    steps = rt.load(folder).manifest.extra["quantization"]["search"]  # the search ran: plain INT8 missed first
    assert steps and steps[0]["float_layers"] == 0 and steps[0]["passed"] is False and any(s["passed"] for s in steps[1:])


def test_search_names_why_the_best_int8_artifact_missed():
    """On 40 labelled images one swapped pair (0.25 points) cannot be told from a 0.5-point budget; when only the
    all-float model meets it, the refusal says so of the best INT8 artifact (not of the all-float one, which
    passes and cannot be written)."""
    from edgead.calib.search import fewest_float_layers
    from edgead.fidelity import measure

    rng = np.random.default_rng(9)
    labels = np.array([0] * 20 + [1] * 20)
    ref = np.concatenate([rng.uniform(0, 1, 20), rng.uniform(1.05, 2, 20)])
    maps = rng.random((40, 6, 6)) + ref[:, None, None]
    top_normal, low_defect = int(np.argmax(ref[:20])), 20 + int(np.argmin(ref[20:]))

    def measured(chosen, quick):  # test harness: any INT8 layer lifts the top normal just above the lowest defect
        s = ref.copy()
        if len(chosen) < 3:
            s[top_normal] = ref[low_defect] + 0.01
        return measure(ref, maps, s, maps + 1e-3 * len(chosen), reference="r", candidate="c", precision="int8",
                       labels=labels)

    with pytest.raises(FidelityError) as err:
        fewest_float_layers(["a", "b", "c"], measured, Budget(), "INT8")
    assert str(err.value) == (
        "INT8 cannot meet the budget (image_auroc drop <= 0.005, map r >= 0.99) with at most 2 of 3 layers in float "
        "(all of them would be the FP32 model, not INT8); best reached: image_auroc drop 0.002500, map r 1.000000 "
        "(image_auroc drop 0.25 points (95% CI 0.00 to 1.50) cannot be told from the 0.50-point budget on 40 "
        "labelled images (20 with defects): about 1000 labelled images (500 with defects) would be needed to tell); "
        "nothing written")


def test_gate_runs_1036_px_validation_images_one_per_call():
    """The gate's reference and candidate runs (``predict_all``) give an engine one 1036 px image per call (at
    1036 px a ViT-S/14's attention alone is 720 MB per layer per image) and every output back in order."""
    from edgead.calib.validation import predict_all
    from edgead.runtimes.base import Predictions

    class Spy:
        calls: list = []

        def predict(self, images):
            self.calls.append(images.shape[0])
            s = images[:, 0, 0, 0].astype(np.float32)
            return Predictions(s, np.zeros((len(s), 2, 2), np.float32) + s[:, None, None], None)

    images = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1036, 1036, 3), np.uint8)
    spy = Spy()
    scores, maps = predict_all(spy, images)
    assert spy.calls == [1] * 8
    np.testing.assert_array_equal(scores, np.arange(8))
    assert maps.shape == (8, 2, 2) and maps[5, 1, 1] == 5
    small = np.zeros((8, 224, 224, 3), np.uint8)
    spy.calls.clear()
    predict_all(spy, small)
    assert spy.calls == [8]  # low resolution keeps its batch of 8


def _flip_harness():
    """Test harness: 10 images, threshold 1.0 with one normal's reference score 5e-8 under it. ``measured(chosen)``:
    with fewer than 2 of the 3 layers in float a defect drops under the threshold (a real flip, map error 1e-2);
    with 2 the artifact is close (map error 1e-3, no flip); the all-float probe is the FP32 model up to 1e-7, which
    lifts the borderline normal over the threshold: one label flip of pure numerical noise."""
    from edgead.fidelity import measure

    rng = np.random.default_rng(3)
    ref = np.array([0.2, 0.4, 0.6, 0.8, 1.0 - 5e-8, 1.5, 1.6, 1.7, 1.8, 1.9])
    maps = rng.random((10, 6, 6)) + ref[:, None, None]

    def measured(chosen, quick):
        s, m = ref.copy(), maps.copy()
        if len(chosen) == 3:
            s, m = s + 1e-7, m + 1e-7
        elif len(chosen) == 2:
            m = m + 1e-3 * rng.random(m.shape)
        else:
            s[5], m = 0.9, m + 1e-2 * rng.random(m.shape)
        return measure(ref, maps, s, m, reference="r", candidate="c", precision="int8", threshold=1.0)

    return measured


def test_a_budget_the_all_float_model_meets_is_never_refused():
    """Issue 26: the all-float probe is the FP32 model; when it is within the FP32 parity target, the noise it shows
    (here one label flip of a score 5e-8 under the threshold) is no reason to call the budget out of reach."""
    from edgead.calib.search import fewest_float_layers

    found = fewest_float_layers(["a", "b", "c"], _flip_harness(), Budget(max_flips=0), "INT8")
    assert len(found.float_layers) == 2 and found.fidelity.flips == 0
    every = next(s for s in found.steps if s["float_layers"] == 3)
    assert every["passed"] is True and every["fp32_parity"] is True


def test_an_all_float_probe_that_is_not_fp32_names_what_stays_quantised():
    """When the engine's all-float probe is not the FP32 model, the refusal says how far it is and which ops the
    engine kept quantised (no longer "even with all N layers in float" as if that were the FP32 model)."""
    from edgead.calib.search import fewest_float_layers
    from edgead.fidelity import measure

    ref = np.linspace(0.1, 2.0, 10)
    maps = np.random.default_rng(4).random((10, 6, 6)) + ref[:, None, None]

    def measured(chosen, quick):  # test harness: something outside the candidates keeps a 3e-3 map error
        return measure(ref, maps, ref, maps + 3e-3 * np.cos(maps * 50), reference="r", candidate="c",
                       precision="int8")

    with pytest.raises(FidelityError) as err:
        fewest_float_layers(["a", "b"], measured, Budget(min_map_r=0.9999999), "OpenVINO INT8",
                            still_quantised=["attn.0", "attn.1"])
    assert re.fullmatch(
        r"OpenVINO INT8 cannot meet the budget \(image_auroc drop <= 0.005, map r >= 0.9999999\) even with all 2 "
        r"candidate layers in float \(that probe is not the FP32 model: max \|diff\| of maps 3.00e-03 .*> 1e-04; "
        r"2 ops stay quantised in it: attn.0, attn.1\); best reached: image_auroc drop n/a, map r 0.999995 "
        r"\(map r 0.999995 < 0.9999999\); nothing written", str(err.value)), str(err.value)


def test_qdq_all_float_probe_is_the_fp32_model(fitted_export, tiny_synthetic, tmp_path):
    """Q/DQ's all-float probe (every quantised MatMul reading float tensors and its float weight) leaves no
    dequantised tensor anywhere and matches the FP32 export within the FP32 parity target, like OpenVINO's."""
    from numpy import testing

    from edgead.calib.onnx_qdq import _run, float_island, quantize_qdq, quantized_layers, still_quantised
    from edgead.calib.search import parity_failures
    from edgead.calib.validation import AccuracyTarget, labelled_validation
    from edgead.export.onnx import source_onnx

    folder = quantize_qdq(fitted_export, tiny_synthetic, out=tmp_path / "q", method="minmax")
    qm = onnx.load(str(folder / "model.onnx"))
    layers = quantized_layers(qm)
    fp32 = onnx.load(str(source_onnx(fitted_export)[0]))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer}
    every = float_island(qm, layers, weights)
    assert len(layers) >= 70 and still_quantised(qm) and still_quantised(every) == []
    assert not [n.op_type for n in every.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    ref = rt.load(fitted_export)
    target = AccuracyTarget.from_runner(ref, labelled_validation(tiny_synthetic, ref.spec), Budget())
    f = target.measure(*_run(every, target.val.images), "Q/DQ, all float", "int8")
    assert parity_failures(f, Budget()) == [] and f.max_scaled_maps <= 1e-5 and f.max_scaled_scores <= 1e-5, f
    testing.assert_allclose(_run(every, target.val.images[:2])[0], target.ref_scores[:2], rtol=1e-5)


@pytest.mark.parametrize("method, symmetric, bins", [("percentile", True, 2048), ("percentile", False, 2048),
                                                     ("entropy", True, 128)])
def test_streamed_histograms_are_onnxruntimes_one_collect(method, symmetric, bins):
    """Q/DQ calibration builds ONNX Runtime's histograms one image at a time (two passes: the range, then the
    counts on its bins): bit for bit what one ``collect`` over all images gives, although the images' ranges differ
    by 400x (ORT's own per-part ``collect`` extends the first part's bins and moves the thresholds), and no image's
    outputs are still alive when the image after next is read (memory does not grow with the number of images)."""
    import weakref

    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgead.calib.onnx_qdq import _histograms

    scales = (0.1, 5.0, 1.0, 40.0, 0.3)
    alive: list[list[weakref.ref]] = []

    def image(k):
        r = np.random.default_rng(k)
        return {"act": (r.standard_normal((1, 50, 8)) * scales[k]).astype(np.float32),
                "shifted": (r.standard_normal((1, 7)) * scales[k] + 3).astype(np.float32)}

    def outputs():
        alive.clear()
        for k in range(len(scales)):
            assert not [j for j, refs in enumerate(alive[:-1]) if any(ref() is not None for ref in refs)]
            outs = image(k)
            alive.append([weakref.ref(a) for a in outs.values()])
            yield outs

    one = HistogramCollector(method, symmetric, bins, 128, 99.999, "same")
    one.collect({name: [image(k)[name] for k in range(len(scales))] for name in ("act", "shifted")})
    streamed = HistogramCollector(method, symmetric, bins, 128, 99.999, "same")
    streamed.histogram_dict = _histograms(outputs, streamed)
    for name, ref in one.histogram_dict.items():
        got = streamed.histogram_dict[name]
        assert len(got) == len(ref)
        for r, g in zip(ref, got, strict=True):
            assert np.asarray(g).dtype == np.asarray(r).dtype and np.array_equal(g, r), name
    a, b = one.compute_collection_result(), streamed.compute_collection_result()
    assert {k: (a[k][0], a[k][1]) for k in a} == {k: (b[k][0], b[k][1]) for k in b}


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_qdq_streamed_calibration_writes_the_one_collect_model(tiny_export, tiny_synthetic, tmp_path, monkeypatch,
                                                               method):
    """``quantize_qdq`` calibrates without ORT's ``HistogramCalibrater.collect_data`` (which holds every image's
    intermediate outputs: 18.5 GB on ViT-S/14 with 120 images) and writes the very model ``quantize_static``
    writes when it collects all images at once: every scale, zero point and quantised weight equal."""
    import onnxruntime.quantization as q
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    from edgead.calib.onnx_qdq import quantize_qdq
    from edgead.export.onnx import source_onnx

    export = tiny_export("fbft") / "export"
    calib = CalibrationSet(tiny_synthetic, source_onnx(export)[1].spec, batch_size=1, limit=6)
    with monkeypatch.context() as m:  # ORT without precomputed ranges: quantize_static's own single collect
        m.delattr(q, "save_tensors_data")
        before = onnx.load(str(quantize_qdq(export, calib, out=tmp_path / "one", method=method) / "model.onnx"))

    def refused(self, reader):
        raise AssertionError("every image's outputs held at once")

    monkeypatch.setattr(HistogramCalibrater, "collect_data", refused)
    after = onnx.load(str(quantize_qdq(export, calib, out=tmp_path / "streamed", method=method) / "model.onnx"))
    inits = [{t.name: numpy_helper.to_array(t) for t in g.graph.initializer} for g in (before, after)]
    assert inits[0].keys() == inits[1].keys() and [k for k in inits[0] if k.endswith("_scale")]
    assert [k for k in inits[0] if not np.array_equal(inits[0][k], inits[1][k])] == []
    assert [(n.op_type, list(n.input)) for n in before.graph.node] == [(n.op_type, list(n.input))
                                                                       for n in after.graph.node]
