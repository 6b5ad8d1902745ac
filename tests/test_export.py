"""FP32 parity: ONNX Runtime and OpenVINO f32 against PyTorch within 1e-4 (both families, norms, batch 1 and 8)."""

import numpy as np
import onnx
import pytest

import edgead.runtimes as rt
from edgead.export.openvino import compile_openvino
from edgead.runtimes.compare import check_batch, compare
from edgead.spec import DetectorSpec

ATOL = 1e-4


@pytest.mark.parametrize("family", ["fbft", "dinomaly"])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_fp32_engines_match_torch(tiny_export, family, norm):
    root = tiny_export(family, norm)
    ov_dir = compile_openvino(root / "export", "fp32")
    ref = rt.load(root / "ckpt")
    assert ref.engine == "torch"
    candidates = {"onnxruntime": rt.load(root / "export"), "openvino": rt.load(ov_dir),
                  "openvino-onnx": rt.load(root / "export", engine="openvino")}
    for n in (1, 8):
        images = check_batch(n, n, (56, 56))
        for d in compare(ref, candidates, images):
            assert d.max_abs_maps <= ATOL and d.max_abs_scores <= ATOL, d
    assert candidates["openvino"].inference_precision in ("f32", "float32", "<Type: 'float32'>")


def test_onnx_graph_contract(tiny_export):
    root = tiny_export("fbft", "layernorm")
    model = onnx.load(str(root / "export" / "model.onnx"))
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [56, 56, 3]
    assert [o.name for o in model.graph.output] == ["scores", "maps"]
    assert model.opset_import[0].version >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert DetectorSpec.from_json(meta["edgead_spec"]).family == "fbft"
    # the export holds one graph with the top-k score inside
    assert any(n.op_type == "TopK" for n in model.graph.node)


def test_openvino_rt_info_carries_spec(tiny_export):
    import openvino as ov

    root = tiny_export("fbft", "layernorm")
    ov_dir = compile_openvino(root / "export", "fp32")
    m = ov.Core().read_model(str(ov_dir / "model.xml"))
    spec = DetectorSpec.from_json(m.get_rt_info(["edgead", "spec"]).astype(str))
    assert spec.input_size == (56, 56)


def test_failing_simplifier_keeps_checked_raw_graph(tmp_path, monkeypatch):
    import torch

    import edgead.export.onnx as ex
    from edgead.models import build_detector, detector_spec

    def broken(model, simplifier):
        for init in model.graph.initializer:  # a "simplification" that changes numbers
            if init.data_type == onnx.TensorProto.FLOAT and len(init.raw_data) > 1000:
                arr = onnx.numpy_helper.to_array(init) * 1.5
                init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
                break
        return model

    monkeypatch.setattr(ex, "_simplify", broken)
    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=28))
    r = ex.export_onnx(det, tmp_path / "out")
    assert not r.simplified and "failed the parity check" in r.notes[0]
    assert r.parity.max_abs_maps <= ATOL
    assert rt.load(tmp_path / "out").manifest.extra["simplifier"] == "none"


def test_parity_check_runs_high_resolution_images_one_per_call(tmp_path, monkeypatch):
    """At high resolution (simulated: a call holds one 28 px image) the torch reference and every ONNX Runtime
    check see one image per call, and the check is as strict as one batched call: same images, same atol."""
    import onnxruntime as ort
    import torch

    import edgead.export.onnx as ex
    from edgead.models import build_detector, detector_spec
    from edgead.runtimes import chunks
    from edgead.runtimes.torch_runner import TorchRunner

    monkeypatch.setattr(chunks, "CALL_PIXELS", 28 * 28)
    torch_calls, ort_calls = [], []
    infer = TorchRunner._infer
    monkeypatch.setattr(TorchRunner, "_infer", lambda self, x: (torch_calls.append(len(x)), infer(self, x))[1])

    class SpySession(ort.InferenceSession):
        def run(self, names, feeds, *args):
            ort_calls.append(len(next(iter(feeds.values()))))
            return super().run(names, feeds, *args)

    monkeypatch.setattr(ort, "InferenceSession", SpySession)
    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", input_size=28))
    r = ex.export_onnx(det, tmp_path / "out", check_batch_size=3)
    assert torch_calls == [1, 1, 1]
    assert ort_calls == [1] * 3 * (1 + len(r.passes))  # the raw graph, then each kept pass
    assert r.parity.within(ATOL) and r.parity.max_scaled_maps <= ATOL
    # traced at batch 1 (one image per call), the graph still takes any batch: three images in one call
    images = check_batch(1, 3, (28, 28))
    ref = TorchRunner.from_detector(det).predict(images)
    maps = ort.InferenceSession(str(tmp_path / "out" / "model.onnx")).run(["maps"], {"images": images})[0]
    assert maps.shape == (3, 28, 28) and ort_calls[-1] == 3
    np.testing.assert_allclose(maps, ref.maps, atol=ATOL)
