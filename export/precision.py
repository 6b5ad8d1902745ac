"""Precision graphs (FP16 ONNX, INT8 Q/DQ ONNX) verified on the CPU before anything reports success.

``precision_graph(OUT, "fp16"|"int8", calib, data, budget)`` writes ``OUT/onnx-fp16`` or ``OUT/onnx-int8`` (when
missing) and measures it against the FP32 reference of the export with ``edgead.fidelity`` (the one rule,
``reference_for``: the checkpoint in PyTorch when torch is installed, else the FP32 export, which the export
checked against PyTorch within 1e-4): on every test image of ``data`` (a labelled category: differences, map r,
the AUROC drop with its interval, pixel metrics and the small-defect Q1 AUPRO at each mask's own resolution),
else on the calibration images (or a fixed synthetic batch). The caller's ``Budget`` judges it (default
``Budget.for_precision``: map r >= 0.999 for FP16, 0.99 for INT8, 0.5 AUROC points, 1 Q1 AUPRO point).

A tiled export (a tiling plan in its spec, docs/tiling.md) is judged on the path the line runs, as ``edgead verify``
and the compile gate judge it: the export's plan cuts both sides, each image read whole, one at a time, through
``Runner.predict_frames`` (``edgead.evaluate.run_frames_on_items``), its stitched frame-size map met with its mask
at the same size (``measure`` on frame maps, no spec). The test images of ``data`` all; of the calibration folder,
whole frames spread over the ones calibration reads, about ``limit`` tiles' worth and at least one frame (the FP16
graph runs op by op in numpy: a 2448x2048 frame is 143 tiles of 224 px); without either, two of ``verify``'s
synthetic parity frames of three tiles per axis. Untiled exports keep the comparison above.

How FP16 is executed here: not in ONNX Runtime, whose x86 CPU provider computes an FP16 graph in FP32 (it
casts around ops lacking FP16 kernels and drops the FP16 round trips between them). The FP16 graph runs in
``edgead.export.fp16_reference``: numpy FP16 tensors, every op's result rounded to FP16, MatMul/Gemm/Conv
accumulating in FP32 like FP16 tensor cores (``tests/test_precision.py``: ``2048 + 1`` is 2048 there, 2049 in
ONNX Runtime). The INT8 graph runs in ONNX Runtime, which executes Q/DQ as integer-rounded values.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgead import precisions
from edgead.errors import ArtifactError, InputError
from edgead.fidelity import Budget, Fidelity, measure, reference_for, score_noise
from edgead.registry import ONNX, artifact_folder
from edgead.runtimes.compare import check_batch
from edgead.runtimes.manifest import read_manifest
from edgead.spec import TilePlan

#: how each kind of precision graph (the precision table's ``onnx_graph``) is executed for its check
ARITHMETIC = {"mixed": "FP16 executed op by op on the CPU (numpy reference: FP16 storage and rounding after "
                       "every op, FP32 accumulation in MatMul/Gemm/Conv)",
              "qdq": "INT8 Q/DQ in ONNX Runtime on the CPU"}
#: synthetic frames of a tiled check without data: 9 tiles each (``edgead.verify.parity_frame_size``), so 18 tiles
#: stand for the untiled check's 8 images; the FP16 graph runs op by op in numpy, verify's 8 frames would be 72
PARITY_FRAMES = 2


def _graph(precision: str) -> str:
    """The kind of ONNX graph ``precision`` is built as ("mixed" FP16, "qdq" INT8), or an ``InputError``."""
    p = precisions.find(precision)
    if p is None or p.onnx_graph not in ARITHMETIC:
        graphs = [q.name for q in precisions.PRECISIONS.values() if q.onnx_graph in ARITHMETIC]
        raise InputError(f"precision graphs are {' or '.join(graphs)}, found '{precision}'")
    return p.onnx_graph


def _graph_runner(folder: Path, precision: str) -> Any:
    if _graph(precision) == "mixed":
        from edgead.export.fp16_reference import Fp16ReferenceRunner

        return Fp16ReferenceRunner(folder, read_manifest(folder))
    from edgead.runtimes.loader import load

    return load(folder, ONNX.name)


def check_graph(export_dir: str | Path, folder: str | Path, calib: str | Path | None = None,
                data: str | Path | None = None, limit: int = 32) -> Fidelity:
    """The graph in ``folder`` measured against the export's FP32 reference (see the module docstring)."""
    export_dir, folder = Path(export_dir), Path(folder)
    precision = read_manifest(folder).precision
    _graph(precision)
    ref = reference_for(export_dir)
    runner = _graph_runner(folder, precision)
    labels = masks = None
    try:
        spec = ref.runner.spec
        plan = read_manifest(export_dir).spec.tiling
        if plan is not None:
            if runner.tiling != plan:
                raise ArtifactError(f"{folder} carries tiling plan {runner.tiling}, its export {plan}: the "
                                    f"artifacts of one export run one plan; compile it again")
            return _check_tiled(ref, runner, plan, folder, precision, calib, data, limit,
                                score_noise(read_manifest(export_dir).extra))
        if data is not None:
            from edgead.data import read_masks, test_items
            from edgead.evaluate import run_on_items

            items = test_items(data)
            ref_scores, ref_maps = run_on_items(ref.runner, items)
            scores, maps = run_on_items(runner, items)
            labels = np.array([it.label for it in items])
            if labels.min() == labels.max():
                labels = None  # one class only: differences and map r, no metrics
            else:
                masks = read_masks(items)  # each at its own resolution: maps are brought onto it, never shrunk
        else:
            if calib is not None:
                from edgead.calib.dataset import CalibrationSet

                images = CalibrationSet(calib, spec, limit=limit).images
            else:
                images = check_batch(0, 8, spec.input_size)
            a, b = ref.runner.predict(images), runner.predict(images)
            ref_scores, ref_maps, scores, maps = a.scores, a.maps, b.scores, b.maps
        return measure(ref_scores, ref_maps, scores, maps, reference=ref.label,
                       candidate=f"{folder} ({ARITHMETIC[_graph(precision)]})", precision=precision,
                       threshold=spec.threshold, labels=labels, masks=masks, spec=spec,
                       noise=score_noise(read_manifest(export_dir).extra))
    finally:
        runner.close()
        ref.close()


def _check_tiled(ref: Any, runner: Any, plan: TilePlan, folder: Path, precision: str, calib: Any, data: Any,
                 limit: int, noise: float) -> Fidelity:
    """``check_graph`` of a tiled export: whole frames through ``predict_frames`` on both sides (module docstring)."""
    from edgead.data import read_masks, test_items
    from edgead.evaluate import run_frames_on_items
    from edgead.verify import parity_frame_size

    spec = ref.runner.spec
    ref.runner.tiling = runner.tiling = plan  # the reference too: whatever plan its own spec (a checkpoint) carries
    labels = masks = None
    if data is not None or calib is not None:
        items = test_items(data) if data is not None else _calibration_frames(calib, runner.spec, limit)
        ref_scores, ref_maps = run_frames_on_items(ref.runner, items)
        scores, maps = run_frames_on_items(runner, items)
        if data is not None:
            labels = np.array([it.label for it in items])
            if labels.min() == labels.max():
                labels = None
            else:
                masks = read_masks(items)  # at the frame's size, as the stitched maps are
    else:
        frames = check_batch(0, PARITY_FRAMES, parity_frame_size(plan))
        a, b = ref.runner.predict_frames(frames), runner.predict_frames(frames)
        ref_scores, ref_maps, scores, maps = a.scores, a.maps, b.scores, b.maps
    return measure(ref_scores, ref_maps, scores, maps, reference=ref.label,
                   candidate=f"{folder} ({ARITHMETIC[_graph(precision)]}, whole frames tiled and stitched)",
                   precision=precision, threshold=spec.threshold, labels=labels, masks=masks, spec=None,
                   noise=noise)


def _calibration_frames(calib: str | Path, spec: Any, limit: int) -> list[Any]:
    """Whole frames of the calibration folder for a tiled check: spread evenly over the frames calibration reads
    (``CalibrationSet``: stratified, readable, at least one tile), as many as make about ``limit`` tiles (counted
    on the first), at least one; each a good ``TestItem`` for ``run_frames_on_items``."""
    from edgead.calib.dataset import CalibrationSet
    from edgead.data import GOOD, TestItem
    from edgead.imageio import read_image
    from edgead.runtimes.tiling import tile_grid

    files = CalibrationSet(calib, spec, limit=limit).files
    tiles = len(tile_grid(read_image(files[0]).shape[:2], spec.tiling))
    k = max(1, min(len(files), -(-limit // tiles)))
    chosen = np.unique(np.round(np.linspace(0, len(files) - 1, k)).astype(int))
    return [TestItem(files[i], 0, GOOD, None) for i in chosen]


def record(fid: Fidelity, budget: Budget) -> dict[str, Any]:
    """The manifest's ``cpu_check``: the measured figures, how the graph ran, the budget and the verdict."""
    failures = budget.failures(fid)
    return {**fid.to_dict(), "arithmetic": ARITHMETIC[_graph(fid.precision)], "budget": budget.to_dict(),
            "passed": not failures, "failures": failures}


def precision_graph(export_dir: str | Path, precision: str, calib: str | Path | None = None,
                    data: str | Path | None = None, budget: Budget | None = None) -> tuple[Path, Fidelity]:
    """The verified ``OUT/onnx-fp16`` or ``OUT/onnx-int8`` graph (written first when missing) and its fidelity.

    ``budget`` (default ``Budget.for_precision(precision)``) judges it: an FP16 graph that misses it is not kept;
    an INT8 graph is refused with the reasons.
    """
    export_dir = Path(export_dir)
    graph = _graph(precision)
    budget = budget or Budget.for_precision(precision)
    folder = artifact_folder(export_dir, ONNX.name, precision)
    src = read_manifest(export_dir)
    if graph == "mixed":
        from edgead.export.fp16 import write_fp16

        if not _current(folder, src.spec, precision):
            checks: list[Fidelity] = []

            def verify(tmp: Path) -> dict[str, Any]:
                checks.append(_judged(export_dir, tmp, calib, data, budget, shown=folder))
                return record(checks[0], budget)

            write_fp16(export_dir, folder, verify=verify)
            return folder, checks[0]
    elif not _current(folder, src.spec, precision):
        if calib is None:
            raise InputError(f"INT8 builds from the calibrated Q/DQ ONNX in {folder}, found none; pass --calib "
                             f"DIR (normal images), or run: edgead compile {export_dir} --engine onnxruntime "
                             f"--precision int8 --calib DIR")
        from edgead.calib.onnx_qdq import quantize_qdq

        quantize_qdq(export_dir, calib)
    return folder, _judged(export_dir, folder, calib, data, budget)


def _current(folder: Path, spec: Any, precision: str) -> bool:
    """Whether ``folder`` holds this export's graph at ``precision`` (its threshold may be its own: the compile
    gate recomputes a reduced-precision artifact's threshold from its scores)."""
    if not (folder / "manifest.json").is_file():
        return False
    m = read_manifest(folder)
    same_spec = replace(m.spec, threshold=spec.threshold) == spec
    if m.precision != precision or not same_spec:
        same = "same" if same_spec else "another"
        raise ArtifactError(f"{folder} is not the {precision} graph of this export (precision {m.precision}, "
                            f"{same} spec); delete it and compile again")
    return True


def _judged(export_dir: Path, folder: Path, calib: Any, data: Any, budget: Budget,
            shown: Path | None = None) -> Fidelity:
    fid = check_graph(export_dir, folder, calib, data)
    bad = budget.failures(fid)
    if bad:
        raise ArtifactError(f"the {fid.precision} graph {shown or folder} misses its target against "
                            f"{fid.reference}: {'; '.join(bad)} (max |diff| maps {fid.max_abs_maps:.2e}, "
                            f"scores {fid.max_abs_scores:.2e})")
    return fid
