"""Precision graphs (FP16 ONNX, INT8 Q/DQ ONNX) verified on the CPU before anything reports success.

``precision_graph(OUT, "fp16"|"int8", calib, data)`` writes ``OUT/onnx-fp16`` or ``OUT/onnx-int8`` (when
missing) and compares it with PyTorch FP32 (the checkpoint named by the export, when torch is installed; else
the FP32 export in ONNX Runtime, which the export checked against PyTorch within 1e-4) on the calibration
images (or a fixed synthetic batch), and with ``data`` on every test image of a labelled category: max/mean
|Δ| of maps and scores, map Pearson r, and the change of image AUROC and AUPRO.

How FP16 is executed here: not in ONNX Runtime, whose x86 CPU provider computes an FP16 graph in FP32 (it
casts around ops lacking FP16 kernels and drops the FP16 round trips between them). The FP16 graph runs in
``edgead.export.fp16_reference``: numpy FP16 tensors, every op's result rounded to FP16, MatMul/Gemm/Conv
accumulating in FP32 like FP16 tensor cores (``tests/test_precision.py``: ``2048 + 1`` is 2048 there, 2049 in
ONNX Runtime). The INT8 graph runs in ONNX Runtime, which executes Q/DQ as integer-rounded values.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import ArtifactError, InputError
from edgead.registry import ONNX, artifact_folder
from edgead.runtimes.compare import check_batch, difference, output_problems, pearson
from edgead.runtimes.manifest import read_manifest

#: map Pearson r a graph must keep against FP32 (DESIGN.md: INT8 >= 0.99; issue 14: FP16 >= 0.999)
MIN_MAP_R = {"fp16": 0.999, "int8": 0.99}
#: most image AUROC a graph may lose on labelled data (DESIGN.md: 0.5 points)
MAX_AUROC_DROP = 0.005
ARITHMETIC = {"fp16": "FP16 executed op by op on the CPU (numpy reference: FP16 storage and rounding after "
                      "every op, FP32 accumulation in MatMul/Gemm/Conv)",
              "int8": "INT8 Q/DQ in ONNX Runtime on the CPU"}


@dataclass(frozen=True)
class GraphCheck:
    """A precision graph against PyTorch FP32: the figures and what misses the targets."""

    precision: str
    reference: str
    arithmetic: str
    images: int
    max_abs_maps: float
    mean_abs_maps: float
    max_abs_scores: float
    mean_abs_scores: float
    map_r: float
    data: dict[str, float | None] = field(default_factory=dict)  # image_auroc/aupro of both, their change
    problems: tuple[str, ...] = ()  # NaN/Inf or flat outputs (runtimes.compare.output_problems): always a miss

    def failures(self) -> list[str]:
        out = list(self.problems)
        if np.isnan(self.map_r):
            out.append("map r undefined (a side's maps have no variance or hold NaN/Inf)")
        elif not self.map_r >= MIN_MAP_R[self.precision]:
            out.append(f"map r {self.map_r:.6f} < {MIN_MAP_R[self.precision]}")
        drop = self.data.get("delta_image_auroc")
        if drop is not None and -drop > MAX_AUROC_DROP + 1e-12:
            out.append(f"image AUROC drop {-100 * drop:.2f} points > {100 * MAX_AUROC_DROP:.1f}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reference(export_dir: Path) -> tuple[Any, str]:
    from edgead.runtimes.loader import load

    m = read_manifest(export_dir)
    ckpt = m.extra.get("checkpoint")
    if ckpt and Path(ckpt).is_dir() and importlib.util.find_spec("torch") is not None:
        return load(ckpt, "torch"), "PyTorch FP32 (checkpoint)"
    return load(export_dir, "onnxruntime"), "FP32 ONNX export in ONNX Runtime (no checkpoint or no PyTorch here)"


def check_graph(export_dir: str | Path, folder: str | Path, calib: str | Path | None = None,
                data: str | Path | None = None, limit: int = 32) -> GraphCheck:
    """Compare the graph in ``folder`` with PyTorch FP32 (see the module docstring)."""
    from edgead.runtimes.loader import load

    export_dir, folder = Path(export_dir), Path(folder)
    precision = read_manifest(folder).precision
    if precision not in MIN_MAP_R:
        raise InputError(f"expected an fp16 or int8 graph in {folder}, found precision {precision}")
    ref, ref_name = _reference(export_dir)
    if precision == "fp16":
        from edgead.export.fp16_reference import Fp16ReferenceRunner

        runner: Any = Fp16ReferenceRunner(folder, read_manifest(folder))
    else:
        runner = load(folder, "onnxruntime")
    try:
        if calib is not None:
            from edgead.calib.dataset import CalibrationSet

            images = CalibrationSet(calib, ref.spec, limit=limit).images
        else:
            images = check_batch(0, 8, ref.spec.input_size)
        d = difference(ref.predict(images), runner.predict(images))
        problems = list(d.problems)
        figures: dict[str, float | None] = {}
        if data is not None and not problems:
            from edgead.evaluate import evaluate_runner, metrics_of, run_on_items

            a = evaluate_runner(ref, data)
            scores, maps = run_on_items(runner, a.items)
            problems += output_problems(scores, maps, "candidate on --data")
            if not problems:
                b, _ = metrics_of(a.items, scores, maps, a.masks, runner.spec)
                for k in ("image_auroc", "aupro"):
                    x, y = getattr(a.metrics, k), getattr(b, k)
                    figures[f"fp32_{k}"], figures[k] = x, y
                    figures[f"delta_{k}"] = None if x is None or y is None else y - x
                figures["data_map_r"] = pearson(a.maps, maps)
                figures["data_max_abs_maps"] = float(np.abs(a.maps.astype(np.float64) - maps).max())
                figures["data_max_abs_scores"] = float(np.abs(a.scores.astype(np.float64) - scores).max())
    finally:
        runner.close()
        ref.close()
    return GraphCheck(precision, ref_name, ARITHMETIC[precision], int(images.shape[0]), d.max_abs_maps,
                      d.mean_abs_maps, d.max_abs_scores, d.mean_abs_scores, d.map_pearson, figures, tuple(problems))


def precision_graph(export_dir: str | Path, precision: str, calib: str | Path | None = None,
                    data: str | Path | None = None) -> tuple[Path, GraphCheck]:
    """The verified ``OUT/onnx-fp16`` or ``OUT/onnx-int8`` graph (written first when missing).

    An FP16 graph that misses its target is not kept; an INT8 graph is refused with the figures.
    """
    export_dir = Path(export_dir)
    if precision not in MIN_MAP_R:
        raise InputError(f"precision graphs are fp16 or int8, found '{precision}'")
    folder = artifact_folder(export_dir, ONNX.name, precision)
    src = read_manifest(export_dir)
    if precision == "fp16":
        from edgead.export.fp16 import write_fp16

        if not _current(folder, src.spec, "fp16"):
            checks: list[GraphCheck] = []

            def verify(tmp: Path) -> dict[str, Any]:
                checks.append(_judged(export_dir, tmp, calib, data, shown=folder))
                return checks[0].to_dict()

            write_fp16(export_dir, folder, verify=verify)
            return folder, checks[0]
    elif not _current(folder, src.spec, "int8"):
        if calib is None:
            raise InputError(f"INT8 builds from the calibrated Q/DQ ONNX in {folder}, found none; pass --calib "
                             f"DIR (normal images), or run: edgead compile {export_dir} --engine onnxruntime "
                             f"--precision int8 --calib DIR")
        from edgead.calib.onnx_qdq import quantize_qdq

        quantize_qdq(export_dir, calib)
    return folder, _judged(export_dir, folder, calib, data)


def _current(folder: Path, spec: Any, precision: str) -> bool:
    if not (folder / "manifest.json").is_file():
        return False
    m = read_manifest(folder)
    if m.precision != precision or m.spec != spec:
        same = "same" if m.spec == spec else "another"
        raise ArtifactError(f"{folder} is not the {precision} graph of this export (precision {m.precision}, "
                            f"{same} spec); delete it and compile again")
    return True


def _judged(export_dir: Path, folder: Path, calib: Any, data: Any, shown: Path | None = None) -> GraphCheck:
    check = check_graph(export_dir, folder, calib, data)
    bad = check.failures()
    if bad:
        raise ArtifactError(f"the {check.precision} graph {shown or folder} misses its target against "
                            f"{check.reference}: {'; '.join(bad)} (max |diff| maps {check.max_abs_maps:.2e}, "
                            f"scores {check.max_abs_scores:.2e})")
    return check
