"""INT8: calibration set errors, and OpenVINO NNCF / Q/DQ ONNX accuracy against FP32 on a fitted detector."""

import numpy as np
import pytest

import edgead.runtimes as rt
from edgead.calib import CalibrationSet
from edgead.errors import InputError
from edgead.evaluate import evaluate_runner
from edgead.runtimes.compare import pearson
from edgead.spec import DetectorSpec


def _spec():
    return DetectorSpec(family="fbft", backbone="vit_tiny_test_patch14", norm="layernorm", layers=(7, 11),
                        input_size=56)


def test_calibration_set_reads_mvtec_train_good(tiny_synthetic):
    cs = CalibrationSet(tiny_synthetic, _spec(), batch_size=5)
    assert len(cs) == 12 and cs.images.dtype == np.uint8 and cs.images.shape == (12, 56, 56, 3)
    assert [len(b) for b in cs.batches()] == [5, 5, 2]
    assert [len(b) for b in cs.full_batches()] == [5, 5, 5]


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

    folder = compile_artifact(fitted_export, engine, "int8", tiny_synthetic)
    m = rt.load(folder).manifest
    assert m.precision == "int8" and m.extra["calibration"]["images"] == 12
    executed = rt.load(folder).executed_precision()  # OpenVINO counts its int8 products: "int8" or "int8 n/m"
    assert executed.split()[0] == "int8", executed
    fp32 = evaluate_runner(rt.load(fitted_export), tiny_synthetic)
    int8 = evaluate_runner(rt.load(folder), tiny_synthetic)
    # The 32-wide test backbone quantises worse than a real ViT (measured 0.976-0.988 here); the >= 0.99
    # acceptance figure is measured on ViT-S/14 with `edgead verify --data` (see README).
    assert pearson(fp32.maps, int8.maps) >= 0.97
    assert abs(int8.metrics.image_auroc - fp32.metrics.image_auroc) <= 0.05
