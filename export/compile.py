"""``edgead compile``: one entry point; which engines compile, to which precisions, with which builder, is read from
the registry (``edgead.registry``). Each builder below adapts one engine module to the shared signature ``(out,
precision, calib, **options) -> Path`` (no if-chains over engines).

Reduced-precision builds for engines whose artifacts run on this machine pass the fidelity gate (``export.gate``):
the artifact is built into a staging folder inside the destination's temporary folder (``dest``), measured against
the export's FP32 reference (``fidelity.reference_for``), and moved into place only when it meets its budget (or
the caller accepts the drop). With an accuracy budget (``max_drop``) the INT8 builders search for the artifact that
meets it with the fewest layers in float. Engines that need hardware this machine lacks (TensorRT: a GPU) are
checked by ``edgead verify`` where they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgead import precisions, registry
from edgead.calib.dataset import CalibrationSet
from edgead.calib.validation import AccuracyTarget
from edgead.errors import EdgeadError, InputError
from edgead.fidelity import Budget
from edgead.fsutil import atomic_dir


def build_openvino(out: Path, precision: str, calib: Path | None, *, dest: Path | None = None,
                   calib_set: CalibrationSet | None = None, calib_method: str | None = None,
                   target: AccuracyTarget | None = None, max_float_layers: int | None = None, **_: Any) -> Path:
    from edgead.export.openvino import compile_openvino

    return compile_openvino(out, precision, calib_set or calib, dest, method=calib_method, target=target,
                            max_float_layers=max_float_layers)


def build_onnxruntime(out: Path, precision: str, calib: Path | None, *, dest: Path | None = None,
                      calib_set: CalibrationSet | None = None, calib_method: str | None = None,
                      target: AccuracyTarget | None = None, max_float_layers: int | None = None,
                      data: Path | None = None, budget: Budget | None = None, **_: Any) -> Path:
    graph = precisions.get(precision).onnx_graph
    if graph == "mixed":  # the mixed FP16 graph TensorRT also builds from, verified on the CPU
        from edgead.export.precision import precision_graph

        return precision_graph(out, precision, calib, data, budget)[0]
    if graph != "qdq":
        raise EdgeadError(f"ONNX Runtime runs the FP32 export (OUT/model.onnx) as it is; compile makes fp16 and "
                          f"int8, found --precision {precision}")
    if calib is None and calib_set is None:
        raise InputError("INT8 needs calibration images: pass --calib DIR (normal images of the part)")
    from edgead.calib.onnx_qdq import quantize_qdq

    return quantize_qdq(out, calib_set or calib, dest, method=calib_method or "percentile", target=target,
                        max_float_layers=max_float_layers)


def build_tensorrt(out: Path, precision: str, calib: Path | None, batch: str = "1:1:8", workspace: float = 4.0,
                   int8_mode: str = "qdq", data: Path | None = None, budget: Budget | None = None,
                   **_: Any) -> Path:
    from edgead.export.tensorrt import compile_trt, parse_batch

    return compile_trt(out, precision, parse_batch(batch), workspace, calib, int8_mode, data=data, budget=budget)


def _gated(eng: registry.Engine, precision: str) -> bool:
    """A precision the table gates (INT8/BF16; the FP16 graphs verify themselves against --data in
    ``export.precision``), on an engine whose artifacts this machine can run (no extra hardware named)."""
    return (p := precisions.find(precision)) is not None and p.gated and not eng.needs


def compile_artifact(out: str | Path, engine: str, precision: str, calib: str | Path | None = None, *,
                     val: str | Path | None = None, budget: Budget | None = None, max_drop: float | None = None,
                     accuracy_aware: bool | None = None, accept_drop: bool = False, calib_size: int = 300,
                     calib_method: str | None = None, holdout: int | None = None, **options: Any) -> Path:
    """Compile the export in ``out`` for ``engine`` at ``precision``; returns the new artifact folder.

    ``budget`` (default: the project's targets, with ``max_drop`` if given) is what the gate holds the artifact
    to; ``max_drop`` (or ``accuracy_aware``) also turns on the accuracy-aware INT8 search for that budget.
    """
    eng = next((e for e in registry.compilable() if engine == e.name or engine in e.aliases), None)
    if eng is None:
        raise EdgeadError(f"engine must be one of {', '.join(e.name for e in registry.compilable())}, "
                          f"found '{engine}'")
    if precision not in eng.compiles:
        raise EdgeadError(f"{eng.name} precision must be one of {', '.join(eng.compiles)}, found '{precision}'")
    out = Path(out)
    calib_dir = Path(calib) if calib else None
    build = eng.compiler_function()
    if budget is None:
        budget = Budget.for_precision(precision, max_drop=max_drop)
    elif max_drop is not None:
        raise InputError("pass either a budget or max_drop, not both")
    if not _gated(eng, precision):  # the precision graphs judge themselves, by the same budget
        return build(out, precision, calib_dir, calib_method=calib_method, budget=budget, **options)
    from edgead.export import gate

    aware = (max_drop is not None) if accuracy_aware is None else accuracy_aware
    p = gate.plan(out, calib_dir, Path(val) if val else None, budget, calib_size, holdout)
    if aware and p.target is None:
        raise InputError("--max-drop needs validation data: pass --calib DIR or --val DIR")
    dest = registry.artifact_folder(out, eng.name, precision)
    with atomic_dir(dest) as tmp:
        staged = build(out, precision, calib_dir, dest=tmp / "build", calib_set=p.calib, calib_method=calib_method,
                       target=p.target if aware and precisions.get(precision).quantized else None, **options)
        gate.commit(staged, tmp, gate.judge(staged, p.target, accept_drop))
    return dest
