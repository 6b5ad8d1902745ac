"""``edgead compile OUT --engine openvino --precision fp32|bf16|int8``: OpenVINO IR beside the ONNX export
(in the sub-folder the registry names).

FP32 and BF16 share one IR with FP32 weights; the precision the CPU plugin executes in is written into the
manifest (``inference_precision``) and set by the runner explicitly, since some CPUs otherwise default to bf16.
INT8 is NNCF post-training quantisation (``edgead.calib.openvino_int8``). The spec goes into ``rt_info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgead import precisions
from edgead.calib.dataset import CalibrationSet
from edgead.errors import EdgeadError, InputError, require
from edgead.export.onnx import source_onnx
from edgead.fsutil import atomic_dir
from edgead.registry import OPENVINO, artifact_folder
from edgead.runtimes.manifest import write_manifest

if TYPE_CHECKING:
    from edgead.calib.validation import AccuracyTarget

XML = OPENVINO.model_file
PRECISIONS = OPENVINO.compiles


def compile_openvino(artifact_dir: str | Path, precision: str = "fp32",
                     calib: CalibrationSet | str | Path | None = None, out: str | Path | None = None,
                     subset_size: int = 300, method: str | None = None, target: AccuracyTarget | None = None,
                     max_float_layers: int | None = None) -> Path:
    """Write the OpenVINO ``precision`` artifact folder in ``OUT`` (model.xml, model.bin, manifest.json); its path."""
    if precision not in PRECISIONS:
        raise EdgeadError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, found '{precision}'")
    ov = require(OPENVINO.package, OPENVINO.extra, "compiling for OpenVINO")
    p = precisions.get(precision)
    artifact_dir = Path(artifact_dir)
    onnx_path, src = source_onnx(artifact_dir)
    out = Path(out) if out else artifact_folder(artifact_dir, OPENVINO.name, precision)
    model = ov.convert_model(str(onnx_path))
    # the CPU plugin's INFERENCE_PRECISION_HINT (the precision table's; INT8 IRs run their quantised products in
    # int8 and the rest in f32)
    extra: dict = {"inference_precision": p.openvino_hint, "source": onnx_path.name}
    versions = {OPENVINO.package: ov.__version__}
    if p.quantized:
        if calib is None:
            raise InputError("INT8 needs calibration images: pass --calib DIR (normal images of the part)")
        from edgead.calib.openvino_int8 import quantize_openvino

        if not isinstance(calib, CalibrationSet):
            calib = CalibrationSet(calib, src.spec, batch_size=1, limit=subset_size)
        model, extra["calibration"], extra["quantization"] = quantize_openvino(model, src.spec, calib, method,
                                                                                target, max_float_layers)
        versions["nncf"] = require("nncf", "nncf").__version__
    model.set_rt_info(src.spec.to_json(), ["edgead", "spec"])
    model.set_rt_info(precision, ["edgead", "precision"])
    with atomic_dir(out) as tmp:
        ov.save_model(model, str(tmp / XML), compress_to_fp16=False)
        write_manifest(tmp, OPENVINO.manifest_name, precision, XML, src.spec, versions, src.batch, extra)
    return out
