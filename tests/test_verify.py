"""``edgead verify``: a verdict per artifact over every image of --data, and exit code 1 on a miss."""

import json
import shutil

import pytest

from edgead.fidelity import Budget
from edgead.verify import verify_artifacts
from tests.test_cli import run


def _fp32_only(export, tmp_path):
    """A copy of the export folder without the INT8 artifacts other tests compiled into it."""
    return shutil.copytree(export, tmp_path / "fp32", ignore=shutil.ignore_patterns("*-*"))


def test_verify_covers_every_test_image_against_pytorch(fitted_export, tiny_synthetic, tmp_path):
    fitted_export = _fp32_only(fitted_export, tmp_path)
    rep = verify_artifacts(fitted_export, tiny_synthetic, batch=5)
    assert rep.reference == "torch" and rep.reference_label == "PyTorch checkpoint"
    assert rep.images == 12 and rep.passed  # 4 good + 4 defect types x 2: all of them, batch 5 or not
    (c,) = rep.checks
    f = c.fidelity
    assert c.precision == "fp32" and f.images == 12 and f.max_abs_maps <= 1e-4 and f.flips == 0
    assert f.metrics["image_auroc"] == pytest.approx(f.reference_metrics["image_auroc"], abs=1e-9)
    assert verify_artifacts(fitted_export, tiny_synthetic, budget=Budget(atol=1e-12)).checks[0].failures[0] \
        .startswith("max |diff| of maps")


@pytest.fixture()
def broken_export(fitted_export, tiny_export, tmp_path):
    """The fitted export plus, inside it, a well-formed FP32 artifact of another (untrained) detector."""
    out = _fp32_only(fitted_export, tmp_path)
    shutil.copytree(tiny_export("fbft", "layernorm") / "export", out / "other")
    return out


def test_verify_cli_exits_1_on_a_broken_artifact(broken_export, tiny_synthetic):
    res = run("verify", broken_export, "--data", tiny_synthetic, "--json")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("error: 1 of 2 artifacts miss their targets against the PyTorch checkpoint: "
                               "onnxruntime fp32: max |diff| of maps")
    rep = json.loads(res.stdout)  # the report still comes out for scripts
    assert rep["passed"] is False and rep["reference_is"] == "PyTorch checkpoint" and rep["images"] == 12
    verdicts = {a["folder"].endswith("other"): a["passed"] for a in rep["artifacts"]}
    assert verdicts == {True: False, False: True}


class Broken:
    """Test harness: a runner whose outputs are replaced (constant maps or NaN), posing as ``precision``."""

    def __init__(self, runner, how, precision):
        import dataclasses

        self._runner, self._how = runner, how
        self.manifest = dataclasses.replace(runner.manifest, precision=precision)

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def predict(self, images):
        import dataclasses

        import numpy as np

        p = self._runner.predict(images)
        if self._how == "flat":  # every map one value; the scores untouched, so AUROC is unchanged
            return dataclasses.replace(p, maps=np.full_like(p.maps, 0.25))
        return dataclasses.replace(p, scores=p.scores * np.nan, maps=p.maps * np.nan)


FLAT = ["candidate maps flat (one value) in {n} of {n} images",
        "map r undefined (a side's maps have no variance or hold NaN/Inf)"]
NAN = ["candidate scores not finite (NaN/Inf) in {n} of {n} images",
       "candidate maps not finite (NaN/Inf) in {n} of {n} images",
       "map r undefined (a side's maps have no variance or hold NaN/Inf)"]


@pytest.mark.parametrize("how", ["flat", "nan"])
@pytest.mark.parametrize("data", ["labelled", "normals", "none"])
def test_verify_fails_a_runner_with_flat_or_nan_outputs(fitted_export, tiny_synthetic, tmp_path, monkeypatch, how,
                                                         data):
    """A flat map once had map r 1.0: an INT8 artifact returning one value per map passed verify, labels or not."""
    import edgead.verify as verify

    out = _fp32_only(fitted_export, tmp_path)
    real_load = verify.load
    monkeypatch.setattr(verify, "load", lambda folder, engine=None, **kw: real_load(folder, engine, **kw)
                        if engine == "torch" else Broken(real_load(folder, engine, **kw), how, "int8"))
    folder = {"labelled": tiny_synthetic, "normals": tiny_synthetic / "train" / "good", "none": None}[data]
    rep = verify_artifacts(out, folder, batch=5)
    n = {"labelled": 12, "normals": 12, "none": 5}[data]
    (c,) = rep.checks
    assert c.failures == [f.format(n=n) for f in (FLAT if how == "flat" else NAN)] and not rep.passed
    assert c.fidelity.flips_to_anomalous == 0 and (c.fidelity.flips == 0 or how == "nan")  # NaN is never > threshold


def test_verify_a_plain_folder_of_normal_images_says_no_accuracy_was_measured(fitted_export, tiny_synthetic,
                                                                              tmp_path):
    out = _fp32_only(fitted_export, tmp_path)
    normals = tiny_synthetic / "train" / "good"
    rep = verify_artifacts(out, normals, batch=5)
    assert rep.passed and rep.images == 12 and rep.data == str(normals)
    assert rep.accuracy == (f"not measured: {normals} holds normal images only (no labels); the verdict rests on "
                            f"map r, score shift, label flips and the NaN/flat checks")
    (c,) = rep.checks
    f = c.fidelity
    assert f.metrics == {} and f.auroc_interval is None and f.flips == 0 and f.max_abs_maps <= 1e-4
    assert f.score_error_rel is not None and f.score_error_rel <= 1e-4  # score shift, as a fraction of the threshold
    labelled = verify_artifacts(out, tiny_synthetic, batch=5)
    assert labelled.accuracy == "measured on 12 labelled images (8 with defects)"
    assert verify_artifacts(out, batch=5).accuracy == "not measured: a synthetic parity batch (pass --data)"


def test_verify_checks_every_artifact_itself_never_the_tuned_redirect(fitted_export, tmp_path):
    """Once ``tune`` chose an artifact, ``load(OUT)`` runs that one; verify still checks OUT's own FP32 export."""
    from edgead.bench.machine import machine_info
    from edgead.export.openvino import compile_openvino
    from edgead.tune import record

    out = _fp32_only(fitted_export, tmp_path)
    compile_openvino(out, "fp32")
    m = machine_info()
    record(out, {"chosen": {"engine": "openvino", "precision": "fp32", "mode": "throughput",
                            "folder": "openvino-fp32", "static_batch": 2, "ms_per_image": 1.0},
                 "machine": {"cpu_model": m["cpu_model"], "cores": m["cores"], "flags": m["flags"]},
                 "candidates": []})
    rep = verify_artifacts(out, batch=3)
    # the export root is checked as the ONNX Runtime FP32 export it is (it used to be the tuned OpenVINO one)
    assert [(c.folder.name, c.engine) for c in rep.checks][:2] == [("fp32", "onnxruntime"),
                                                                   ("openvino-fp32", "openvino")]
    assert [(c.folder.name, c.engine, c.name) for c in rep.checks] == [
        ("fp32", "onnxruntime", "onnxruntime fp32"), ("openvino-fp32", "openvino", "openvino fp32"),
        ("openvino-fp32", "openvino", "openvino fp32 (tuned: mode throughput, static_batch 2)")]
    assert rep.passed and all(c.fidelity.max_scaled_maps <= 1e-4 for c in rep.checks)


def test_verify_scores_pixels_against_each_mask_at_its_own_resolution(fitted_export, tmp_path, monkeypatch):
    """Frames of 90x75 for a 56 px model: every mask reaches the pixel metrics at 90x75 (the maps are brought onto
    it), never shrunk to the model input, and the figures are ``edgead eval``'s own."""
    import numpy as np

    import edgead.metrics
    from edgead import runtimes
    from edgead.data import read_mask, test_items
    from edgead.evaluate import evaluate_runner
    from edgead.synth import make_synthetic

    make_synthetic(tmp_path / "hr", categories=("texture",), frame=(90, 75), n_train=2, n_test_good=2,
                   n_test_defect=1, seed=4)
    data = tmp_path / "hr" / "texture"
    seen, real = [], edgead.metrics.pixel_metrics

    def spy(masks, maps, *a, **kw):
        seen.append(([m.shape for m in masks], [m.shape for m in maps], [int(np.sum(m)) for m in masks]))
        return real(masks, maps, *a, **kw)

    monkeypatch.setattr(edgead.metrics, "pixel_metrics", spy)
    out = _fp32_only(fitted_export, tmp_path)
    rep = verify_artifacts(out, data, batch=4)
    items = test_items(data)
    on_disk = [0 if it.mask is None else int(read_mask(it.mask).sum()) for it in items]
    assert len(seen) == 2 and all(m == [(90, 75)] * len(items) == p and s == on_disk for m, p, s in seen), seen
    assert sum(on_disk) > 0
    f = rep.checks[0].fidelity
    with runtimes.load(fitted_export.parent / "ckpt") as torch_runner:
        ev = evaluate_runner(torch_runner, data)
    assert f.reference_metrics["aupro"] == pytest.approx(ev.metrics.aupro, abs=1e-9)
    assert f.reference_metrics["aupro_q1"] == pytest.approx(ev.by_size.q1, abs=1e-9)
    assert f.reference_metrics["pixel_auroc"] == pytest.approx(ev.metrics.pixel_auroc, abs=1e-9)
    assert abs(f.drop("aupro_q1")) <= 1e-4 and rep.passed  # an FP32 export keeps the small-defect AUPRO


def test_compile_gate_writes_the_artifacts_own_threshold_and_verify_judges_it(fitted_export, tiny_synthetic,
                                                                            tmp_path):
    """Issue 26 item 5: the line's verdict is the artifact's score against the threshold its runner applies, so the
    gate writes the threshold recomputed from the artifact's own held-out scores into its spec (the PyTorch one
    kept as ``reference_threshold``)."""
    import numpy as np

    from edgead import runtimes
    from edgead.export.compile import compile_artifact

    out = _fp32_only(fitted_export, tmp_path)
    folder = compile_artifact(out, "onnxruntime", "int8", tiny_synthetic, val=tiny_synthetic, accept_drop=True)
    with runtimes.load(out, "onnxruntime") as fp32, runtimes.load(folder) as int8:
        ref_thr = fp32.spec.threshold
        fid = int8.manifest.extra["fidelity"]
        own = fid["threshold"]["recomputed"]
        assert int8.manifest.extra["reference_threshold"] == ref_thr == fid["threshold"]["reference"]
        assert int8.spec.threshold == own and own != ref_thr and fid["threshold"]["applied"] is True
        assert abs(own - ref_thr) < 0.05 * ref_thr  # the same rule on nearly the same scores
        p = int8.predict(np.stack([np.full((56, 56, 3), v, np.uint8) for v in (0, 128, 255)]))
        assert (p.labels == (p.scores > own)).all()
    rep = verify_artifacts(out, tiny_synthetic, batch=6)
    c = next(c for c in rep.checks if c.precision == "int8")
    assert c.fidelity.threshold == ref_thr and c.fidelity.candidate_threshold == own
    assert c.fidelity.flips == fid["threshold"]["flips_with_recomputed"]  # the same images, the same threshold


class Noisy(Broken):
    """Test harness: maps with Gaussian noise of 8 % of their spread added (map r about 0.997), posing as
    ``precision``."""

    def predict(self, images):
        import dataclasses

        import numpy as np

        p = self._runner.predict(images)
        noise = np.random.default_rng(0).normal(0, 0.08 * p.maps.std(), p.maps.shape).astype(np.float32)
        return dataclasses.replace(p, maps=p.maps + noise)


@pytest.mark.parametrize("precision, target", [("fp16", 0.999), ("int8", 0.99)])
def test_verify_holds_each_artifact_to_its_own_precisions_map_r(fitted_export, tmp_path, monkeypatch, precision,
                                                                target):
    """One map r (0.997) passes as INT8 (0.99) and misses as FP16 (0.999): without a budget, each artifact is
    judged by ``Budget.for_precision`` (it was 0.99 for every precision)."""
    import edgead.verify as verify

    out = _fp32_only(fitted_export, tmp_path)
    real_load = verify.load
    monkeypatch.setattr(verify, "load", lambda folder, engine=None, **kw: Noisy(real_load(folder, engine, **kw),
                                                                                "noise", precision))
    (c,) = verify_artifacts(out, batch=5).checks
    r = c.fidelity.map_r
    assert 0.99 < r < 0.999 and c.budget.min_map_r == target
    assert c.failures == ([f"map r {r:.4f} < 0.999"] if precision == "fp16" else [])
    assert verify_artifacts(out, batch=5, budget=Budget(min_map_r=0.9)).checks[0].failures == []  # caller's budget


def test_gate_validation_keeps_masks_at_their_own_resolution(fitted_export, tmp_path):
    """The compile gate's labelled --val set: masks of 90x75 frames stay 90x75 (``load_masks`` shrank them to the
    56 px input), and the gate's reference metrics are ``edgead eval``'s at that resolution."""
    from edgead import runtimes
    from edgead.calib.validation import AccuracyTarget, labelled_validation
    from edgead.evaluate import evaluate_runner
    from edgead.fidelity import Budget, reference_for
    from edgead.synth import make_synthetic

    make_synthetic(tmp_path / "hr", categories=("texture",), frame=(90, 75), n_train=2, n_test_good=2,
                   n_test_defect=1, seed=4)
    data = tmp_path / "hr" / "texture"
    ref = reference_for(fitted_export)
    val = labelled_validation(data, ref.runner.spec)
    assert val.images.shape[1:] == (56, 56, 3) and {m.shape for m in val.masks} == {(90, 75)}
    target = AccuracyTarget.from_reference(ref, val, Budget())
    ref.close()
    f = target.measure(target.ref_scores, target.ref_maps, "itself", "int8")
    with runtimes.load(fitted_export.parent / "ckpt") as torch_runner:
        ev = evaluate_runner(torch_runner, data)
    assert f.reference_metrics["aupro_q1"] == pytest.approx(ev.by_size.q1, abs=1e-9)
    assert f.drop("aupro_q1") == 0.0 and Budget().failures(f) == []


def test_rows_name_the_folder_when_it_is_not_the_engines_own(tmp_path):
    """Two INT8 artifacts of one engine (the default folder and one built with --out) must not read alike; the
    folder goes in round brackets, since the CLI table would take square ones for markup."""
    import numpy as np

    from edgead.fidelity import measure
    from edgead.verify import ArtifactCheck

    f = measure(np.ones(2), np.zeros((2, 4, 4)), np.ones(2), np.zeros((2, 4, 4)), reference="r", candidate="c",
                precision="int8")
    names = [ArtifactCheck(tmp_path / folder, engine, "int8", f).name for folder, engine in (
        ("onnx-int8", "onnxruntime"), ("onnx-int8-plain", "onnxruntime"), ("openvino-int8", "openvino"))]
    assert names == ["onnxruntime int8", "onnxruntime int8 (onnx-int8-plain/)", "openvino int8"]


def test_verify_one_artifact_folder_against_its_exports_reference(fitted_export, tmp_path):
    """``edgead verify out/openvino-fp32`` judges that artifact alone against the export's PyTorch reference (it
    used to fail with "engine 'onnxruntime' cannot run a openvino artifact"); outside an export it is refused."""
    from edgead.export.openvino import compile_openvino

    out = _fp32_only(fitted_export, tmp_path)
    compile_openvino(out, "fp32")
    rep = verify_artifacts(out / "openvino-fp32", batch=3)
    assert rep.reference_label == "PyTorch checkpoint"
    assert [(c.folder.name, c.engine) for c in rep.checks] == [("openvino-fp32", "openvino")]
    assert rep.passed and rep.checks[0].fidelity.max_abs_maps <= 1e-4
    res = run("verify", out / "openvino-fp32", "--json")
    assert res.returncode == 0, res.stderr
    assert [a["engine"] for a in json.loads(res.stdout)["artifacts"]] == ["openvino"]
    lone = shutil.copytree(out / "openvino-fp32", tmp_path / "lone")
    res = run("verify", lone)
    assert res.returncode == 1
    assert "found the openvino fp32 artifact" in res.stderr and "outside an export" in res.stderr
    assert "pass the export folder" in res.stderr and len(res.stderr.strip().splitlines()) == 1
