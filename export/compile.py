"""``edgead compile``: one entry point; which engines compile, to which precisions, with which builder, is read
from the registry (``edgead.registry``). Each builder below adapts one engine module to the shared signature
``(out, precision, calib, **options) -> Path`` (no if-chains over engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgead import registry
from edgead.errors import EdgeadError, InputError


def build_openvino(out: Path, precision: str, calib: Path | None, **_: Any) -> Path:
    from edgead.export.openvino import compile_openvino

    return compile_openvino(out, precision, calib)


def build_onnxruntime(out: Path, precision: str, calib: Path | None, data: Path | None = None, **_: Any) -> Path:
    if precision == "fp16":  # the mixed FP16 graph TensorRT also builds from, verified on the CPU
        from edgead.export.precision import precision_graph

        return precision_graph(out, "fp16", calib, data)[0]
    if precision != "int8":
        raise EdgeadError(f"ONNX Runtime runs the FP32 export (OUT/model.onnx) as it is; compile makes fp16 and "
                          f"int8, found --precision {precision}")
    if calib is None:
        raise InputError("INT8 needs calibration images: pass --calib DIR (normal images of the part)")
    from edgead.calib.onnx_qdq import quantize_qdq

    return quantize_qdq(out, calib)


def build_tensorrt(out: Path, precision: str, calib: Path | None, batch: str = "1:1:8", workspace: float = 4.0,
                   int8_mode: str = "qdq", data: Path | None = None, **_: Any) -> Path:
    from edgead.export.tensorrt import compile_trt, parse_batch

    return compile_trt(out, precision, parse_batch(batch), workspace, calib, int8_mode, data=data)


def compile_artifact(out: str | Path, engine: str, precision: str, calib: str | Path | None = None,
                     **options: Any) -> Path:
    """Compile the export in ``out`` for ``engine`` at ``precision``; returns the new artifact folder."""
    eng = next((e for e in registry.compilable() if engine == e.name or engine in e.aliases), None)
    if eng is None:
        raise EdgeadError(f"engine must be one of {', '.join(e.name for e in registry.compilable())}, "
                          f"found '{engine}'")
    if precision not in eng.compiles:
        raise EdgeadError(f"{eng.name} precision must be one of {', '.join(eng.compiles)}, found '{precision}'")
    return eng.compiler_function()(Path(out), precision, Path(calib) if calib else None, **options)
