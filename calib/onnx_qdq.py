"""INT8 Q/DQ ONNX: static post-training quantisation with ONNX Runtime, calibrated on run-time-prepared images.

The result runs in ONNX Runtime and is the input TensorRT builds explicit INT8 engines from, so quantisation is
symmetric (zero point 0, as TensorRT requires), per-channel for weights, and limited to the matrix products
(MatMul/Gemm) that carry the compute. The in-graph postprocessing stays float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from edgead.calib.dataset import CalibrationSet
from edgead.errors import EdgeadError, require
from edgead.export.qdq_check import restore_island_inputs
from edgead.fsutil import atomic_dir
from edgead.registry import INPUT, ONNX, artifact_folder
from edgead.runtimes.manifest import read_manifest, write_manifest

MODEL = "model.onnx"
METHODS = ("minmax", "percentile", "entropy")


def _post_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.name.startswith("/post/")]


def quantize_qdq(artifact_dir: str | Path, calib_dir: str | Path, out: str | Path | None = None,
                 method: str = "percentile", limit: int = 300) -> Path:
    """The ONNX Runtime int8 artifact folder in ``OUT`` (a calibrated Q/DQ model.onnx and its manifest), made
    from the FP32 export in ``OUT``."""
    from edgead.export.onnx import set_metadata, source_onnx

    if method not in METHODS:
        raise EdgeadError(f"calibration method must be one of {', '.join(METHODS)}, found '{method}'")
    q = require("onnxruntime.quantization", "onnxruntime", "INT8 Q/DQ quantisation")
    ort = require("onnxruntime", "onnxruntime")
    artifact_dir = Path(artifact_dir)
    onnx_path, src = source_onnx(artifact_dir)
    data = CalibrationSet(calib_dir, src.spec, batch_size=1, limit=limit)

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(data.batches(1))

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {INPUT: b}

    calibrate = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                 "entropy": q.CalibrationMethod.Entropy}[method]
    model = onnx.load(str(onnx_path))
    out = Path(out) if out else artifact_folder(artifact_dir, ONNX.name, "int8")
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        q.quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        q.quantize_static(
            str(pre), str(tmp / MODEL), Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=_post_nodes(model),
            calibrate_method=calibrate,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "CalibPercentile": 99.999, "CalibTensorRangeSymmetric": True},
        )
        qm = onnx.load(str(tmp / MODEL))
        restore_island_inputs(qm)  # FP32 islands read float tensors, not a dequantized copy (TensorRT builds this)
        set_metadata(qm, {p.key: p.value for p in model.metadata_props})
        onnx.save(qm, str(tmp / MODEL))
        extra = {"calibration": {"images": len(data), "method": method, "folder": str(calib_dir),
                                 "skipped": [str(p) for p in data.skipped]},
                 "quantized_ops": ["MatMul", "Gemm"], "symmetric": True, "source": onnx_path.name}
        write_manifest(tmp, ONNX.manifest_name, "int8", MODEL, src.spec, {"onnxruntime": ort.__version__}, src.batch,
                       extra)
    read_manifest(out)
    return out
