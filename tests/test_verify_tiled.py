"""Issue 27: ``edgead verify`` and the compile-time gate judge a tiled artifact on whole frames, tiled and stitched
(``Runner.predict_frames``) on both sides, maps and masks at the frame's size; untiled exports keep their path."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgead.verify
from edgead.fidelity import Budget
from edgead.runtimes.base import Runner
from edgead.verify import verify_artifacts

DEFECT = (255, 255, 40)  # the defect's RGB in ``defect_frame`` (conftest)


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1] if rgb.ndim == 3 else rgb)


def _frames_category(root: Path, defect_frame, size: int = 6) -> Path:
    """An MVTec-layout category of 300x250 frames: 2 good, 1 with a bright ``size`` px square, its mask."""
    frame, (cy, cx) = defect_frame
    rng = np.random.default_rng(11)
    for i in range(2):
        _write(root / "test" / "good" / f"{i:03d}.png", np.clip(rng.normal(120, 4, frame.shape), 0, 255)
               .astype(np.uint8))
    bad = np.clip(rng.normal(120, 4, frame.shape), 0, 255).astype(np.uint8)
    top, left = cy - size // 2, cx - size // 2
    bad[top : top + size, left : left + size] = DEFECT
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[top : top + size, left : left + size] = 255
    _write(root / "test" / "spot" / "000.png", bad)
    _write(root / "ground_truth" / "spot" / "000_mask.png", mask)
    return root


@pytest.fixture()
def tiled(tiled_export, tmp_path):
    """(checkpoint, a copy of the tiled export's own files) so nothing compiled into the shared export by other
    tests (an openvino-fp32/ folder, say) is verified here."""
    ckpt, export = tiled_export
    copy = tmp_path / "export"
    copy.mkdir()
    for f in export.iterdir():
        if f.is_file():
            shutil.copy2(f, copy / f.name)
    return ckpt, copy


class Spy:
    """Records what ``Runner.predict`` and ``Runner.predict_frames`` were called with and returned."""

    def __init__(self, monkeypatch) -> None:
        self.frames: list[tuple[str, tuple, tuple]] = []
        self.predict: list[tuple] = []
        real_frames, real_predict = Runner.predict_frames, Runner.predict

        def predict_frames(runner, frames):
            p = real_frames(runner, frames)
            self.frames.append((runner.engine, np.shape(frames), p.maps.shape))
            return p

        def predict(runner, images):
            self.predict.append(np.shape(images))
            return real_predict(runner, images)

        monkeypatch.setattr(Runner, "predict_frames", predict_frames)
        monkeypatch.setattr(Runner, "predict", predict)


def test_verify_runs_a_tiled_artifact_on_whole_frames(tiled, defect_frame, tmp_path, monkeypatch):
    """Both the PyTorch reference and the ONNX Runtime artifact score every 300x250 frame whole through
    predict_frames (never a 56 px resize), the maps stitched at 300x250 meet the masks there, and the reference's
    pixel metrics are ``edgead eval``'s on the same frames."""
    from edgead.evaluate import evaluate_runner
    from edgead.runtimes import load

    ckpt, export = tiled
    data = _frames_category(tmp_path / "cat", defect_frame)
    spy = Spy(monkeypatch)
    rep = verify_artifacts(export, data, ckpt=ckpt)
    assert spy.predict == []  # no image went through the full-frame path
    assert spy.frames == [("torch", (300, 250, 3), (1, 300, 250))] * 3 + \
        [("onnxruntime", (300, 250, 3), (1, 300, 250))] * 3
    (c,) = rep.checks
    f = c.fidelity
    assert rep.reference == "torch" and rep.images == 3 and c.passed, c.failures
    assert f.images == 3 and f.max_abs_maps <= 1e-4 and f.map_r > 0.99999 and f.flips == 0
    with load(ckpt) as ref:
        ev = evaluate_runner(ref, data)  # eval's tiled path on the same frames and masks
    assert f.reference_metrics["image_auroc"] == ev.metrics.image_auroc == 1.0
    assert f.reference_metrics["pixel_auroc"] == pytest.approx(ev.metrics.pixel_auroc, abs=1e-12)
    assert f.reference_metrics["pixel_auroc"] > 0.99  # the 36 px defect holds the frame's highest values
    assert f.metrics["pixel_auroc"] == pytest.approx(f.reference_metrics["pixel_auroc"], abs=1e-6)
    # without --data: the parity batch is frames of three tiles per axis, tiled too
    spy.frames.clear()
    rep = verify_artifacts(export, ckpt=ckpt, batch=2)
    assert edgead.verify.parity_frame_size(load(export).tiling) == (119, 119)
    assert spy.predict == [] and spy.frames == [("torch", (2, 119, 119, 3), (2, 119, 119)),
                                                ("onnxruntime", (2, 119, 119, 3), (2, 119, 119))]
    assert rep.passed and rep.images == 2 and "tiled" in rep.accuracy


def _blind(runner):
    """Test harness: an engine that loses the tiny defect: pixels of the defect's exact colour are made grey before
    the real engine runs (what a quantiser that flattens small bright details does)."""
    real = runner._infer

    def infer(images):
        images = images.copy()
        images[(images == DEFECT).all(-1)] = 120
        return real(images)

    runner._infer = infer
    return runner


def test_verify_fails_an_engine_blind_to_a_tiny_defect_only_on_the_tiled_path(tiled, defect_frame, tmp_path,
                                                                               monkeypatch):
    """A 4 px defect: the 56 px tiles hold it at its own resolution and the engine that loses it misses its FP32
    targets there; resized from 300x250 to 56 px the defect is under two pixels wide and blended, the broken engine
    never sees it, and the old path would have passed the artifact."""
    from edgead.imageio import load_batch, read_image

    ckpt, export = tiled
    data = _frames_category(tmp_path / "cat", defect_frame, size=4)
    real_load = edgead.verify.load
    monkeypatch.setattr(edgead.verify, "load", lambda *a, **kw: _blind(real_load(*a, **kw)))
    rep = verify_artifacts(export, data, ckpt=ckpt)
    (c,) = rep.checks
    f = c.fidelity
    assert not rep.passed and c.failures[0].startswith("max |diff| of maps")
    # measured: maps differ by 1.5, scores by 1.06, map r 0.80, the defect frame flips to normal, the reference
    # ranks it first (image AUROC 1.0, pixel AUROC 0.999) and the blind engine last (0.0, 0.52)
    assert f.max_abs_maps > 0.5 and f.max_abs_scores > 0.5 and f.map_r < 0.9 and f.flips == 1
    assert f.reference_metrics["image_auroc"] == 1.0 and f.metrics["image_auroc"] == 0.0
    assert f.reference_metrics["pixel_auroc"] > 0.99 and f.metrics["pixel_auroc"] < 0.7
    # the resized path (what verify did before): the broken engine passes
    bad = read_image(data / "test" / "spot" / "000.png")
    spec = real_load(export).spec
    assert (bad == DEFECT).all(-1).sum() == 16 and not (load_batch([data / "test" / "spot" / "000.png"], spec)
                                                         == DEFECT).all(-1).any()
    monkeypatch.setattr(edgead.verify, "export_plan", lambda out, folders: None)
    old = verify_artifacts(export, data, ckpt=ckpt)
    assert old.passed and old.checks[0].fidelity.max_abs_maps <= 1e-4


def _calib_frames(folder: Path, n: int = 6) -> Path:
    for i in range(n):
        rng = np.random.default_rng(200 + i)
        _write(folder / f"{i}.png", np.clip(rng.normal(120, 4, (300, 250, 3)), 0, 255).astype(np.uint8))
    return folder


def test_gate_validates_a_tiled_export_on_whole_frames(tiled, defect_frame, tmp_path):
    """The gate's proxy for a tiled export: the 4 held-out 300x250 frames whole and a copy of each with a defect
    4, 7, 14 and 28 px across (1/16 to 1/2 of the 56 px tile), masks at 300x250; calibration stays on 56 px tiles;
    the reference's maps are stitched at the frame's size; an FP32 artifact is judged equal to it."""
    from edgead.calib.onnx_qdq import _session
    from edgead.export import gate
    from edgead.runtimes import load

    _, export = tiled
    calib_dir = _calib_frames(tmp_path / "calib")
    p = gate.plan(export, calib_dir, None, Budget())
    assert p.calib is not None and p.calib.images.shape[1:] == (56, 56, 3) and p.calib.files  # tiles
    target = p.target
    val = target.val
    assert val.tiled and val.images is None and len(val) == 8 and val.labels.tolist() == [0] * 4 + [1] * 4
    assert [m.shape for m in val.masks] == [(300, 250)] * 8
    assert [int(m.sum()) for m in val.masks[:4]] == [0] * 4 and all(m.sum() > 0 for m in val.masks[4:])
    assert val.source["defect_diameters"] == [4, 7, 14, 28] and val.source["tiling"]["overlap"] == 14
    assert [np.shape(m) for m in target.ref_maps] == [(300, 250)] * 8 and target.ref_scores.shape == (8,)
    frame = val.frames[5]()  # read again when needed: the same painted pixels as the mask says
    assert frame.shape == (300, 250, 3) and np.array_equal(frame, val.frames[5]())
    rec = gate.judge(export, target, accept_drop=False)  # the FP32 export against itself as the reference
    assert rec["passed"] and rec["map_r"] == pytest.approx(1.0, abs=1e-12) and rec["flips"] == 0
    assert rec["validation"]["images"] == 8 and rec["metrics"]["aupro_q1"] is not None
    # the accuracy-aware search's in-memory models go the same way (cut, run, stitched)
    with load(export, "onnxruntime") as runner:
        import onnx

        model = onnx.load(str(runner.folder / runner.manifest.model))
    fid = target.measure_infer(_session(model), "in-memory fp32", "int8")
    assert fid.max_abs_maps <= 1e-5 and fid.map_r > 0.999999
    # a labelled --val folder of frames: masks and maps at the frame's size too
    data = _frames_category(tmp_path / "cat", defect_frame)
    labelled = gate.plan(export, None, data, Budget()).target
    assert labelled.val.tiled and [m.shape for m in labelled.val.masks] == [(300, 250)] * 3
    assert [np.shape(m) for m in labelled.ref_maps] == [(300, 250)] * 3
    assert labelled.measure_runner(load(export, "onnxruntime")).metrics["image_auroc"] == 1.0


def test_precision_graph_judges_a_tiled_export_on_whole_frames(tiled, defect_frame, tmp_path, monkeypatch):
    """The FP16 precision graph's CPU check (before any TensorRT build) runs the export's plan like verify: the
    reference and the FP16 graph score each 300x250 frame whole through predict_frames, 300x250 maps met with the
    masks there; without data, two of verify's 119x119 parity frames; the calibration folder's frames whole too."""
    pytest.importorskip("onnxconverter_common")
    import edgead.export.precision as precision
    from edgead.runtimes.manifest import read_manifest

    _, export = tiled
    data = _frames_category(tmp_path / "cat", defect_frame)
    spy = Spy(monkeypatch)
    folder, f = precision.precision_graph(export, "fp16", data=data)
    assert folder == export / "onnx-fp16" and spy.predict == []  # nothing resized to one tile
    # the reference: the FP32 export in ONNX Runtime (the fixture's export names no checkpoint)
    assert spy.frames == [("onnxruntime", (300, 250, 3), (1, 300, 250))] * 3 + \
        [("onnx-reference-fp16", (300, 250, 3), (1, 300, 250))] * 3
    assert f.images == 3 and f.map_r >= 0.999 and 1e-6 < f.max_abs_maps < 1e-2 and f.flips == 0
    assert f.reference_metrics["image_auroc"] == f.metrics["image_auroc"] == 1.0
    assert f.reference_metrics["pixel_auroc"] > 0.99 and f.metrics["aupro_q1"] is not None
    assert "whole frames tiled and stitched" in f.candidate
    spy.frames.clear()
    f = precision.check_graph(export, folder)  # the synthetic batch: verify's parity frames, tiled
    assert spy.predict == [] and spy.frames == [("onnxruntime", (2, 119, 119, 3), (2, 119, 119)),
                                                ("onnx-reference-fp16", (2, 119, 119, 3), (2, 119, 119))]
    assert f.images == 2 and f.map_r >= 0.999
    # the calibration folder: its frames whole, as many as make about ``limit`` tiles (42 tiles a frame here)
    calib = _calib_frames(tmp_path / "calib")
    spec = read_manifest(export).spec
    assert [it.path.name for it in precision._calibration_frames(calib, spec, 60)] == ["0.png", "5.png"]
    spy.frames.clear()
    f = precision.check_graph(export, folder, calib=calib, limit=30)
    assert spy.predict == [] and spy.frames == [("onnxruntime", (300, 250, 3), (1, 300, 250)),
                                                ("onnx-reference-fp16", (300, 250, 3), (1, 300, 250))]
    assert f.images == 1 and f.map_r >= 0.999


def test_precision_graph_broken_on_one_tile_is_refused(tiled, defect_frame, tmp_path, monkeypatch):
    """An FP16 graph blind to a 4 px defect that lies in one tile only (rows and columns 68-71: tile (42, 42) alone,
    its neighbours start at 84 and end at 55): the tiled check refuses it; resized to 56 px the defect is blended
    away, the broken graph never sees it and the resized check would have written it."""
    pytest.importorskip("onnxconverter_common")
    import edgead.export.fp16_reference as fp16_reference
    import edgead.export.precision as precision
    from edgead.errors import ArtifactError
    from edgead.runtimes.tiling import tile_grid

    _, export = tiled
    frame, _ = defect_frame
    data = _frames_category(tmp_path / "cat", (frame, (70, 70)), size=4)
    grid = tile_grid((300, 250), _plan(export))
    covering = [(y, x) for y, x in grid.origins() if y <= 68 and y + 56 > 71 and x <= 68 and x + 56 > 71]
    assert covering == [(42, 42)]
    real = fp16_reference.Fp16ReferenceRunner
    altered: list[int] = []  # tiles the broken graph changed, call by call

    def broken(folder, m):
        runner = _blind(real(folder, m))
        blind = runner._infer

        def infer(images):
            altered.append(int((images == DEFECT).all(-1).any((1, 2)).sum()))
            return blind(images)

        runner._infer = infer
        return runner

    monkeypatch.setattr(fp16_reference, "Fp16ReferenceRunner", broken)
    # measured: map r 0.69, the defect frame ranked last (image AUROC drop 100 points), Q1 AUPRO drop 99.8 points
    with pytest.raises(ArtifactError, match=r"fp16 graph .*/onnx-fp16 misses its target .*: map r 0\.\d+ < 0\.999; "
                                            r"image_auroc drop \d+\.\d+ points .*small-defect AUPRO \(Q1\) drop"):
        precision.precision_graph(export, "fp16", data=data)
    assert not (export / "onnx-fp16").exists() and sum(altered) == 1 and len(altered) == 3 * 6  # 3 frames, 42 tiles
    altered.clear()
    # the resized path (what the precision graphs did before): the same broken graph passes
    monkeypatch.setattr(precision, "read_manifest", _untiled(precision.read_manifest))
    folder, f = precision.precision_graph(export, "fp16", data=data)
    assert f.map_r >= 0.999 and f.max_abs_maps < 1e-2 and sum(altered) == 0


def _plan(export: Path):
    from edgead.runtimes.manifest import read_manifest

    return read_manifest(export).spec.tiling


def _untiled(read):
    """Test harness: ``read_manifest`` with the tiling plan dropped, the resized path of an untiled export."""
    from dataclasses import replace

    def untiled(folder):
        m = read(folder)
        return replace(m, spec=replace(m.spec, tiling=None))

    return untiled
