"""``edgead compile``: one entry point, one small builder per engine (no if-chains over engines)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError, InputError


def _openvino(out: Path, precision: str, calib: Path | None, **_: Any) -> Path:
    from edgead.export.openvino import compile_openvino

    return compile_openvino(out, precision, calib)


def _onnxruntime(out: Path, precision: str, calib: Path | None, **_: Any) -> Path:
    if precision != "int8":
        raise EdgeadError(f"ONNX Runtime runs the FP32 export (OUT/model.onnx) as it is; compile makes int8 only, "
                          f"found --precision {precision}")
    if calib is None:
        raise InputError("INT8 needs calibration images: pass --calib DIR (normal images of the part)")
    from edgead.calib.onnx_qdq import quantize_qdq

    return quantize_qdq(out, calib)


def _tensorrt(out: Path, precision: str, calib: Path | None, batch: str = "1:1:8", workspace: float = 4.0,
              int8_mode: str = "qdq", **_: Any) -> Path:
    from edgead.export.tensorrt import compile_trt, parse_batch

    return compile_trt(out, precision, parse_batch(batch), workspace, calib, int8_mode)


COMPILERS: dict[str, tuple[Callable[..., Path], tuple[str, ...]]] = {
    "openvino": (_openvino, ("fp32", "bf16", "int8")),
    "onnxruntime": (_onnxruntime, ("int8",)),
    "trt": (_tensorrt, ("fp16", "int8")),
}


def compile_artifact(out: str | Path, engine: str, precision: str, calib: str | Path | None = None,
                     **options: Any) -> Path:
    """Compile the export in ``out`` for ``engine`` at ``precision``; returns the new artifact folder."""
    engine = {"tensorrt": "trt", "ort": "onnxruntime", "ov": "openvino"}.get(engine, engine)
    if engine not in COMPILERS:
        raise EdgeadError(f"engine must be one of {', '.join(COMPILERS)}, found '{engine}'")
    builder, precisions = COMPILERS[engine]
    if precision not in precisions:
        raise EdgeadError(f"{engine} precision must be one of {', '.join(precisions)}, found '{precision}'")
    return builder(Path(out), precision, Path(calib) if calib else None, **options)
