"""Commands that build and check artifacts: ``export``, ``compile``, ``verify``, ``build-c``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgead.cli.common import CompileEngine, CompilePrecision, JsonFlag, OutDir, console, emit_json
from edgead.errors import require


def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder written by edgead fit or import.")],
    out: OutDir,
    simplifier: Annotated[str, typer.Option(help="onnxslim | onnxsim | none")] = "onnxslim",
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    fold_norms: Annotated[bool, typer.Option(help="Fold each norm's affine into the next linear layer.")] = True,
    json_out: JsonFlag = False,
) -> None:
    """Export one end-to-end ONNX graph (uint8 images in; scores and maps out), checked against PyTorch.

    OUT: the export folder (model.onnx and its manifest), replaced atomically."""
    require("torch", "torch", "edgead export")
    from edgead.export.onnx import export_onnx
    from edgead.fsutil import check_output_target
    from edgead.models.checkpoint import load_checkpoint

    check_output_target(out, inputs=(ckpt,))
    r = export_onnx(load_checkpoint(ckpt), out, simplifier=simplifier, opset=opset, source=ckpt,
                    fold_norms=fold_norms)
    result = {"path": str(r.path / "model.onnx"), "simplified": r.simplified, "nodes_raw": r.nodes_raw,
              "nodes_final": r.nodes_final, "max_abs_maps": r.parity.max_abs_maps,
              "max_abs_scores": r.parity.max_abs_scores, "passes": r.passes, "notes": r.notes}
    if json_out:
        emit_json(result)
        return
    for note in r.notes:
        console.print(f"[yellow]warning:[/] {note}")
    console.print(f"exported [bold]{result['path']}[/] ({r.nodes_raw} -> {r.nodes_final} nodes"
                  f"{', ' + ', '.join(r.passes) if r.passes else ''}); vs PyTorch max |diff| maps "
                  f"{r.parity.max_abs_maps:.2e}, scores {r.parity.max_abs_scores:.2e}")


def compile_cmd(
    out: Annotated[Path, typer.Argument(help="Export folder (holds model.onnx).")],
    engine: CompileEngine = "openvino",
    precision: CompilePrecision = "fp32",
    calib: Annotated[Path | None, typer.Option(help="Calibration images (INT8): a folder or MVTec category.")]
    = None,
    batch: Annotated[str, typer.Option(help="TensorRT profile MIN:OPT:MAX.")] = "1:1:8",
    workspace: Annotated[float, typer.Option(help="TensorRT workspace in GB.")] = 4.0,
    int8_mode: Annotated[str, typer.Option(help="TensorRT INT8: qdq | entropy (legacy, TensorRT 10 only).")] = "qdq",
    data: Annotated[Path | None, typer.Option(help="Labelled MVTec-layout category: the FP16/INT8 graph's "
                                                   "AUROC/AUPRO change is checked on it.")] = None,
) -> None:
    """Compile the export for an engine and precision into OUT/<engine>-<precision>/."""
    from edgead.export.compile import compile_artifact

    path = compile_artifact(out, engine, precision, calib, batch=batch, workspace=workspace, int8_mode=int8_mode,
                            data=data)
    console.print(f"compiled [bold]{path}[/]")


def verify(
    out: Annotated[Path, typer.Argument(help="Export folder; every artifact in it is checked.")],
    data: Annotated[Path | None, typer.Option(help="Labelled MVTec-layout category for metrics.")] = None,
    ckpt: Annotated[Path | None, typer.Option(help="Reference checkpoint (default: the one exported).")] = None,
    batch: Annotated[int, typer.Option(help="Images in the parity batch.")] = 8,
    json_out: JsonFlag = False,
) -> None:
    """Max/mean |difference| of maps and scores of every artifact against PyTorch; metrics with --data."""
    from edgead.cli.common import check_batch
    from edgead.verify import verify_artifacts

    check_batch(batch)

    ref, checks = verify_artifacts(out, data, ckpt, batch)
    if json_out:
        emit_json({"reference": ref, "artifacts": [c.to_dict() for c in checks]})
        return
    table = Table(title=f"verify {out} against {ref}")
    for col in ("artifact", "max|Δ| maps", "mean|Δ| maps", "max|Δ| scores", "map r"):
        table.add_column(col, justify="right" if col != "artifact" else "left")
    if data:
        for col in ("img AUROC", "Δ", "AUPRO", "Δ", "data map r"):
            table.add_column(col, justify="right")
    for c in checks:
        row = [f"{c.engine} {c.precision}", f"{c.diff.max_abs_maps:.2e}",
               f"{c.diff.mean_abs_maps:.2e}", f"{c.diff.max_abs_scores:.2e}", f"{c.diff.map_pearson:.5f}"]
        if data:
            row += [f"{c.metrics['image_auroc']:.4f}", f"{c.delta['image_auroc']:+.4f}",
                    f"{c.metrics['aupro']:.4f}", f"{c.delta['aupro']:+.4f}", f"{c.metrics['map_pearson']:.5f}"]
        table.add_row(*row)
    console.print(table)


def build_c(
    out: Annotated[Path, typer.Argument(help="Folder for libedgead.so, edgead.h and the example program.")],
    sanitize: Annotated[bool, typer.Option(help="Build with AddressSanitizer.")] = False,
) -> None:
    """Build the C runtime (libedgead.so + edgead.h) against the installed OpenVINO."""
    from edgead.export.build_c import build_c as build

    path = build(out, sanitize=sanitize)
    console.print(f"C runtime written to [bold]{path}[/]")


def calibrate(
    out: Annotated[Path, typer.Argument(help="Export folder (holds model.onnx).")],
    calib: Annotated[Path, typer.Option(help="Calibration images: a folder or an MVTec category (train/good).")],
    method: Annotated[str, typer.Option(help="percentile | minmax | entropy")] = "percentile",
) -> None:
    """Calibrated INT8 Q/DQ ONNX (OUT/onnx-int8/): runs in ONNX Runtime; TensorRT builds explicit INT8 from it."""
    from edgead.calib.onnx_qdq import quantize_qdq
    from edgead.fsutil import check_output_target
    from edgead.registry import ONNX, artifact_folder

    check_output_target(artifact_folder(out, ONNX.name, "int8"), inputs=(calib,))

    console.print(f"calibrated [bold]{quantize_qdq(out, calib, method=method)}[/]")
