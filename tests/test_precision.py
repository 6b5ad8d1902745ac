"""Precision graphs on the CPU: FP16 conversion with FP32 islands, FP16 arithmetic really executed, and the
verification that refuses a graph before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgead.errors import ArtifactError
from edgead.fidelity import Budget, measure
from edgead.runtimes.compare import check_batch
from edgead.runtimes.manifest import read_manifest

pytest.importorskip("onnxconverter_common")
ort = pytest.importorskip("onnxruntime")
SIZE = 28


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from edgead.export import export_onnx
    from edgead.models import build_detector, detector_spec

    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=SIZE))
    out = tmp_path_factory.mktemp("export") / "out"
    export_onnx(det, out)
    return out


def test_fp16_arithmetic_is_really_executed_by_the_verifier_and_not_by_onnx_runtime() -> None:
    from edgead.export.fp16 import convert_fp16
    from edgead.export.fp16_reference import reference_evaluator

    big = helper.make_tensor("big", TensorProto.FLOAT, [], [2048.0])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "big"], ["s"], name="add"),
         helper.make_node("Sub", ["s", "big"], ["y"], name="sub"),
         helper.make_node("MatMul", ["x2", "w"], ["z"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1])], [big, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    f16, islands = convert_fp16(model)
    assert islands == []
    feed = {"x": np.array([1.0], np.float32), "x2": np.array([[2048.0, 1.0]], np.float32)}
    y, z = reference_evaluator(f16).run(None, feed)
    assert y[0] == 0.0 and z[0, 0] == 2048.0  # 2048 + 1 rounds to 2048 in FP16, after the Add and the MatMul
    y32, z32 = reference_evaluator(model).run(None, feed)
    assert y32[0] == 1.0 and z32[0, 0] == 2049.0
    # ONNX Runtime's CPU provider computes the same FP16 graph in FP32: why the verifier does not use it
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert ort.InferenceSession(f16.SerializeToString(), opts).run(None, feed)[0][0] == 1.0


def test_fp16_graph_keeps_io_and_islands_and_matches_fp32(exported: Path) -> None:
    import edgead.runtimes
    from edgead.export.fp16 import write_fp16
    from edgead.export.islands import fp32_islands

    folder, m = write_fp16(exported, exported / "onnx-fp16-test")
    assert m.precision == "fp16" and m.engine == "onnxruntime" and len(m.extra["fp32_islands"]) > 40
    g = onnx.load(str(folder / "model.onnx"))
    io = {v.name: v.type.tensor_type.elem_type for v in (*g.graph.input, *g.graph.output)}
    assert io == {"images": TensorProto.UINT8, "scores": TensorProto.FLOAT, "maps": TensorProto.FLOAT}
    types = {v.name: v.type.tensor_type.elem_type for v in g.graph.value_info}
    src = onnx.load(str(exported / "model.onnx"))
    converted = {n.name: n for n in g.graph.node}  # the converter renames island outputs, then casts them
    float_out = [o for n in fp32_islands(src) for o in converted[n.name].output if types.get(o) in (1, 10)]
    assert float_out and all(types[o] == TensorProto.FLOAT for o in float_out)  # islands compute in FP32
    weights = [t for t in g.graph.initializer if len(t.dims) == 2 and min(t.dims) >= 8]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)  # MatMul weights in FP16
    images = check_batch(2, 4, (SIZE, SIZE))
    with edgead.runtimes.load(exported) as a, edgead.runtimes.load(folder) as b:
        p, q = a.predict(images), b.predict(images)
    d = measure(p.scores, p.maps, q.scores, q.maps, reference="fp32", candidate="fp16", precision="fp16")
    assert d.map_r >= 0.999 and 1e-5 < d.max_abs_maps < 1e-2 and d.max_abs_scores < 1e-2


def test_precision_graph_is_verified_before_it_is_written(exported: Path) -> None:
    import edgead.export.precision as precision

    folder, check = precision.precision_graph(exported, "fp16")
    assert folder == exported / "onnx-fp16" and check.map_r >= 0.999 and check.images == 8
    recorded = read_manifest(folder).extra["cpu_check"]
    assert recorded["map_r"] == check.map_r and "FP16 executed op by op" in recorded["arithmetic"]
    assert recorded["passed"] is True and recorded["budget"]["min_map_r"] == 0.999  # FP16's own default target
    assert 1e-5 < check.max_abs_maps < 1e-2  # FP16 rounding is really there
    import shutil

    shutil.rmtree(folder)
    # the caller's budget is the one applied (it used to be a hard-coded table): r 1 only an exact copy meets
    with pytest.raises(ArtifactError, match=r"fp16 graph .*/onnx-fp16 misses its target .* map r 0\.9\d+ < 1\.0\b"):
        precision.precision_graph(exported, "fp16", budget=Budget.for_precision("fp16", min_map_r=1.0))
    assert not folder.exists()


def test_budget_for_precision_takes_the_precisions_map_r_and_the_callers_values() -> None:
    assert Budget.for_precision("fp16").min_map_r == 0.999 and Budget.for_precision("int8").min_map_r == 0.99
    assert Budget.for_precision("fp16", min_map_r=0.9, max_drop=None) == Budget(min_map_r=0.9)


@pytest.mark.parametrize("how", ["flat", "nan"])
def test_precision_graph_with_flat_or_nan_outputs_is_refused(exported: Path, monkeypatch, how) -> None:
    """A flat FP16 graph once had map r 1.0 and was written; now each problem is named and nothing is kept."""
    import shutil

    import edgead.export.fp16_reference as fp16_reference
    import edgead.export.precision as precision
    from tests.test_verify import FLAT, NAN, Broken

    real = fp16_reference.Fp16ReferenceRunner
    monkeypatch.setattr(fp16_reference, "Fp16ReferenceRunner", lambda folder, m: Broken(real(folder, m), how, "fp16"))
    shutil.rmtree(exported / "onnx-fp16", ignore_errors=True)
    reasons = "; ".join(f.format(n=8) for f in (FLAT if how == "flat" else NAN))
    with pytest.raises(ArtifactError) as err:
        precision.precision_graph(exported, "fp16")
    assert f"misses its target against FP32 ONNX export in ONNX Runtime (the export names no checkpoint): " \
           f"{reasons} (max |diff| maps" in str(err.value)
    assert not (exported / "onnx-fp16").exists()


def test_precision_graph_measures_data_with_masks_at_their_own_resolution(exported: Path, tmp_path) -> None:
    """--data frames bigger than the model input: both sides' pixel metrics come from maps brought onto each frame
    (before: the candidate's model-size maps met frame-size masks and the check raised)."""
    import edgead.export.precision as precision
    from edgead.synth import make_synthetic

    make_synthetic(tmp_path, categories=("texture",), size=48, n_train=2, n_test_good=2, n_test_defect=2, seed=3)
    folder, f = precision.precision_graph(exported, "fp16", data=tmp_path / "texture")
    assert folder == exported / "onnx-fp16" and f.map_r >= 0.999 and f.images == 10  # 2 good + 4 types x 2
    assert abs(f.drop("image_auroc")) <= 0.25 and abs(f.drop("aupro")) <= 0.05
    assert f.metrics["aupro"] == pytest.approx(f.reference_metrics["aupro"], abs=0.05)  # the same measure both sides
    assert f.metrics["aupro_q1"] is not None and abs(f.drop("aupro_q1")) <= 0.01  # the small-defect target, met
