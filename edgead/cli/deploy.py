"""Commands that build and check artifacts: ``export``, ``compile``, ``verify``, ``build-c``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgead.cli.common import (
    CompileEngine,
    CompilePrecision,
    FullFrame,
    JsonFlag,
    OutDir,
    TileOverlap,
    TileSize,
    console,
    emit_json,
    tile_plan,
)
from edgead.errors import require


def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint folder written by edgead fit or import.")],
    out: OutDir,
    simplifier: Annotated[str, typer.Option(help="onnxslim | onnxsim | none")] = "onnxslim",
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    fold_norms: Annotated[bool, typer.Option(help="Fold each norm's affine into the next linear layer.")] = True,
    tile: TileSize = None,
    overlap: TileOverlap = None,
    full_frame: FullFrame = False,
    json_out: JsonFlag = False,
) -> None:
    """Export one end-to-end ONNX graph (uint8 images in; scores and maps out), checked against PyTorch.

    A tiling plan (--tile/--overlap, or the checkpoint's own from fit) travels in the artifact: frames of any
    size are cut into tiles and their maps stitched back by every runtime; --full-frame exports without one.

    OUT: the export folder (model.onnx and its manifest), replaced atomically."""
    require("torch", "torch", "edgead export")
    from dataclasses import replace

    from edgead.errors import ConfigError
    from edgead.export.onnx import export_onnx
    from edgead.models.checkpoint import load_checkpoint

    detector = load_checkpoint(ckpt)
    plan = tile_plan(tile, overlap, detector.spec.input_size)
    if full_frame:
        if plan is not None:
            raise ConfigError("expected either a tiling plan (--tile/--overlap) or --full-frame, found both")
        detector.spec = replace(detector.spec, tiling=None)
    r = export_onnx(detector, out, simplifier=simplifier, opset=opset, source=ckpt, fold_norms=fold_norms,
                    tiling=plan)
    final_plan = plan or detector.spec.tiling
    result = {"path": str(r.path / "model.onnx"), "simplified": r.simplified, "nodes_raw": r.nodes_raw,
              "tiling": None if final_plan is None else {"tile": list(final_plan.tile), "overlap": final_plan.overlap},
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
    if final_plan is not None:
        console.print(f"tiling plan: {final_plan.tile[0]}x{final_plan.tile[1]} tiles, overlap {final_plan.overlap} px "
                      f"(frames of any size in, maps of their size out)")


ValDir = Annotated[Path | None, typer.Option("--val", help="Labelled MVTec-layout category the fidelity gate and "
                                              "--max-drop measure on (default: a hold-out of --calib plus "
                                              "synthetic defects).")]
MaxDrop = Annotated[float | None, typer.Option(help="Accuracy budget: largest drop of --metric against FP32 "
                                               "(0.003 = 0.3 AUROC points); INT8 keeps the most sensitive "
                                               "layers in float until it holds.")]
Metric = Annotated[str, typer.Option(help="Metric of the budget: auroc | aupro | pixel_auroc | map_r.")]
MinMapR = Annotated[float | None, typer.Option(help="Fidelity gate: minimum map Pearson r against FP32 (default: the "
                                                "precision's own, 0.999 FP16, 0.99 INT8/BF16).")]
MaxQ1Drop = Annotated[float, typer.Option(help="With masks: largest drop of the small-defect AUPRO (smallest "
                                          "quartile of defect areas, Q1) against FP32 (0.01 = 1 point).")]
AcceptDrop = Annotated[bool, typer.Option(help="Write the artifact even when it misses the budget (the "
                                          "measured drop is recorded in its manifest).")]
CalibSize = Annotated[int, typer.Option(help="Calibration images, drawn stratified over the folder.")]
MaxFlips = Annotated[int | None, typer.Option(help="Fail above this many label flips against the threshold "
                                              "(flips are always counted and reported).")]


def compile_cmd(
    out: Annotated[Path, typer.Argument(help="Export folder (holds model.onnx).")],
    engine: CompileEngine = "",
    precision: CompilePrecision = "",
    calib: Annotated[Path | None, typer.Option(help="Calibration images (INT8): a folder or MVTec category.")]
    = None,
    val: ValDir = None,
    max_drop: MaxDrop = None,
    metric: Metric = "auroc",
    min_map_r: MinMapR = None,
    accept_drop: AcceptDrop = False,
    max_flips: MaxFlips = None,
    max_q1_drop: MaxQ1Drop = 0.01,
    calib_size: CalibSize = 300,
    max_float_layers: Annotated[int | None, typer.Option(help="Q/DQ with --max-drop: refuse rather than keep more "
                                                         "than this many layers in float.")] = None,
    calib_method: Annotated[str | None, typer.Option(help="Activation statistics: OpenVINO default | minmax | "
                                                     "mean_minmax | percentile | histogram; ONNX Runtime "
                                                     "percentile | minmax | entropy.")] = None,
    batch: Annotated[str, typer.Option(help="TensorRT profile MIN:OPT:MAX.")] = "1:1:8",
    workspace: Annotated[float, typer.Option(help="TensorRT workspace in GB.")] = 4.0,
    int8_mode: Annotated[str, typer.Option(help="TensorRT INT8: qdq | entropy (legacy, TensorRT 10 only).")] = "qdq",
    data: Annotated[Path | None, typer.Option(help="Labelled MVTec-layout category: the FP16/INT8 graph's "
                                                   "AUROC/AUPRO change is checked on it.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Compile the export for an engine and precision into OUT/<engine>-<precision>/.

    INT8/BF16 artifacts are measured against FP32 before they are written and refused when they miss the
    budget (map r >= 0.99 and <= 0.5 AUROC points by default) unless --accept-drop is given.

    Without --precision and --engine: the artifact edgead tune would choose for this CPU (INT8 and BF16 need
    --calib), built, gated, timed and recorded so that loading OUT runs it; one line says what and why.
    """
    if precision == "auto":
        _compile_auto(out, calib, val, data, batch, json_out)
        return
    if not precision and not engine:
        _compile_default(out, calib, val, data, batch, json_out)
        return
    engine = engine or "openvino"
    if not precision:  # an engine named without a precision: its FP32 as before, or the first it builds
        from edgead import precisions, registry

        eng = next((e for e in registry.compilable() if engine in (e.name, *e.aliases)), None)
        full = precisions.full().name
        precision = full if eng is None or full in eng.compiles else eng.compiles[0]
    from edgead.export.compile import compile_artifact
    from edgead.fidelity import Budget

    budget = Budget.for_precision(precision, min_map_r=min_map_r, metric=metric, max_flips=max_flips,
                                  max_drop=max_drop, max_q1_drop=max_q1_drop)
    path = compile_artifact(out, engine, precision, calib, val=val, budget=budget, accuracy_aware=max_drop
                            is not None, accept_drop=accept_drop, calib_size=calib_size, calib_method=calib_method,
                            max_float_layers=max_float_layers, batch=batch, workspace=workspace, int8_mode=int8_mode,
                            data=data)
    _report_compile(path, json_out)


def _compile_auto(out: Path, calib: Path | None, val: Path | None, data: Path | None, batch: str,
                  json_out: bool) -> None:
    """``--precision auto`` is ``edgead tune``: every candidate this CPU makes sense for, gated, timed, fastest kept.

    The batch the candidates are timed at is --batch's OPT (``MIN:OPT:MAX``) or --batch itself when it is one number.
    """
    from edgead.cli.tune import tune

    tune(out, batch=_opt_batch(batch, " with --precision auto"), calib=calib, data=data or val, json_out=json_out)


def _compile_default(out: Path, calib: Path | None, val: Path | None, data: Path | None, batch: str,
                     json_out: bool) -> None:
    """No --precision: ``export.default.default_artifact`` (tune with the candidates this CPU cannot win with
    pruned), at --batch's OPT size."""
    from edgead.export.default import default_artifact

    choice = default_artifact(out, calib, data or val, _opt_batch(batch),
                              progress=None if json_out else lambda m: console.print(f"[dim]{m}[/dim]"))
    if json_out:
        emit_json({"path": str(choice.folder), "engine": choice.engine, "precision": choice.precision,
                   "reason": choice.reason, "tune": choice.decision})
        return
    console.print(f"compiled [bold]{choice.folder}[/]: {choice.reason}")


def _opt_batch(batch: str, context: str = "") -> int:
    """--batch's OPT (``MIN:OPT:MAX``) or --batch itself when it is one number (``context`` ends the error)."""
    from edgead.errors import InputError

    parts = batch.split(":")
    try:
        size = int(parts[1] if len(parts) == 3 else parts[0]) if len(parts) in (1, 3) else None
    except ValueError:
        size = None
    if size is None:
        raise InputError(f"expected --batch N or MIN:OPT:MAX{context}, found {batch!r}")
    return size


def _report_compile(path: Path, json_out: bool) -> None:
    from edgead.runtimes.manifest import read_manifest

    extra = read_manifest(path).extra
    fid, quant = extra.get("fidelity"), extra.get("quantization")
    if json_out:
        emit_json({"path": str(path), "fidelity": fid, "quantization": quant, "calibration": extra.get("calibration")})
        return
    console.print(f"compiled [bold]{path}[/]")
    if quant:
        console.print(f"  {quant.get('quantized_layers')} layers INT8, {len(quant.get('float_layers', []))} kept "
                      f"in float{': ' + ', '.join(quant['float_layers']) if quant.get('float_layers') else ''}")
    if fid and fid.get("measured"):
        b = fid["budget"]
        drop, iv = fid["drop"], fid.get("auroc_interval")
        ci = f" (95% CI {100 * iv['low']:+.2f} to {100 * iv['high']:+.2f})" if iv and fid["metric"] == "image_auroc" \
            else ""
        shift = fid.get("score_error_rel")
        verdict = "[green]met[/]" if fid["passed"] else f"[red]MISSED, accepted[/] ({'; '.join(fid['failures'])})"
        console.print(f"  vs FP32 on {fid['validation']['images']} images ({fid['validation']['kind']}): "
                      f"{fid['metric']} drop {'n/a' if drop is None else f'{100 * drop:+.2f}'} points{ci} (budget "
                      f"{100 * b['max_drop']:.2f}), map r {fid['map_r']:.4f} (>= {b['min_map_r']}), label flips "
                      f"{fid['flips']}, largest score shift "
                      f"{'n/a' if shift is None else f'{100 * shift:.2f} % of the threshold'}: {verdict}")
        if fid.get("q1_drop") is not None:
            console.print(f"  small-defect AUPRO (Q1) drop {100 * fid['q1_drop']:+.2f} points (budget "
                          f"{100 * b.get('max_q1_drop', 0.01):.2f})")
        thr = fid.get("threshold") or {}
        if thr.get("recomputed") is not None:
            console.print(f"  threshold {thr['recomputed']:.6g}, recomputed from this artifact's held-out normals "
                          f"(what it applies; PyTorch's {thr['reference']:.6g}), with "
                          f"{thr['flips_with_recomputed']} label flips")


def verify(
    out: Annotated[Path, typer.Argument(help="Export folder (every artifact in it is checked) or one "
                                                   "artifact folder inside it.")],
    data: Annotated[Path | None, typer.Option(help="MVTec-layout category (every test image is compared, metrics "
                                              "and the accuracy drop computed) or a plain folder of normal images "
                                              "(no labels: map r, score shift, flips, NaN/flat checks).")] = None,
    ckpt: Annotated[Path | None, typer.Option(help="Reference checkpoint (default: the one exported).")] = None,
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 8,
    atol: Annotated[float, typer.Option(help="FP32 artifacts: max |diff| of maps and scores.")] = 1e-4,
    min_map_r: Annotated[float | None, typer.Option(help="INT8/FP16/BF16: minimum map Pearson r (default: the "
                                                "precision's own, 0.999 FP16, 0.99 INT8/BF16).")] = None,
    max_drop: Annotated[float, typer.Option(help="INT8/FP16/BF16 with --data: largest metric drop "
                                            "(0.005 = 0.5 AUROC points).")] = 0.005,
    metric: Annotated[str, typer.Option(help="Metric of --max-drop: auroc | aupro | pixel_auroc | map_r.")]
    = "auroc",
    max_flips: Annotated[int | None, typer.Option(help="Fail above this many label flips against the "
                                                  "threshold (default: report only).")] = None,
    max_q1_drop: MaxQ1Drop = 0.01,
    json_out: JsonFlag = False,
) -> None:
    """Judge every artifact against the PyTorch reference; exit 1 when one misses its precision's targets."""
    from edgead.cli.common import check_batch
    from edgead.errors import FidelityError
    from edgead.fidelity import Budget
    from edgead.verify import verify_artifacts

    check_batch(batch)

    def budget(precision: str) -> Budget:  # each artifact is held to its own precision's targets
        return Budget.for_precision(precision, atol=atol, min_map_r=min_map_r, max_drop=max_drop, metric=metric,
                                    max_flips=max_flips, max_q1_drop=max_q1_drop)

    rep = verify_artifacts(out, data, ckpt, batch, budget)
    if json_out:
        emit_json(rep.to_dict())
    else:
        _verify_table(rep, out)
    failed = [c for c in rep.checks if not c.passed]
    if failed:
        worst = "; ".join(f"{c.name}: {', '.join(c.failures)}" for c in failed)
        raise FidelityError(f"{len(failed)} of {len(rep.checks)} artifacts miss their targets against the "
                            f"{rep.reference_label}: {worst}")


def _verify_table(rep, out: Path) -> None:
    table = Table(title=f"verify {out} against the {rep.reference_label}, {rep.images} images",
                  caption=f"accuracy drop {rep.accuracy}" if rep.accuracy else None)
    cols = ["artifact", "max|Δ| maps", "max|Δ| scores", "map r", "flips", "shift/thr"]
    labelled = any(c.fidelity.metrics for c in rep.checks)
    if labelled:
        cols += [rep.budget.metric, "Δ", "Q1 AUPRO Δ"]
    for col in cols + ["float layers", "verdict"]:
        table.add_column(col, justify="left" if col in ("artifact", "verdict") else "right")
    for c in rep.checks:
        f = c.fidelity
        row = [c.name, f"{f.max_abs_maps:.2e}", f"{f.max_abs_scores:.2e}", f"{f.map_r:.5f}",
               "-" if f.flips is None else str(f.flips),
               "-" if f.score_error_rel is None else f"{100 * f.score_error_rel:.2f}%"]
        if labelled:
            m = f.metrics.get(rep.budget.metric)
            d = f.drop(rep.budget.metric)
            iv = f.auroc_interval if rep.budget.metric == "image_auroc" else None
            ci = "" if iv is None or iv.low == iv.high else f" [{0.0 - iv.high:+.4f}, {0.0 - iv.low:+.4f}]"
            q1 = f.drop("aupro_q1")
            row += ["-" if m is None else f"{m:.4f}", "-" if d is None else f"{0.0 - d:+.4f}{ci}",  # no -0.0000
                    "-" if q1 is None else f"{0.0 - q1:+.4f}"]
        q = c.quantization or {}
        row.append(str(len(q.get("float_layers", []))) if q else "-")
        row.append("[green]pass[/]" if c.passed else f"[red]FAIL[/] {'; '.join(c.failures)}")
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
    val: ValDir = None,
    max_drop: MaxDrop = None,
    metric: Metric = "auroc",
    min_map_r: MinMapR = None,
    accept_drop: AcceptDrop = False,
    calib_size: CalibSize = 300,
    json_out: JsonFlag = False,
) -> None:
    """Calibrated INT8 Q/DQ ONNX (OUT/onnx-int8/): runs in ONNX Runtime; TensorRT builds explicit INT8 from it."""
    compile_cmd(out, engine="onnxruntime", precision="int8", calib=calib, val=val, max_drop=max_drop,
                metric=metric, min_map_r=min_map_r, accept_drop=accept_drop, calib_size=calib_size,
                calib_method=method, json_out=json_out)
