"""The DyT vs LayerNorm study: the same detector with each norm, FLOPs counted two ways, latency on every engine.

``edgead bench norms [--backbone vit_small_patch14_dinov2] [--size 224] [--family fbft] [--json-out DIR/norms.json]``
(or ``run_norm_study(...)``) does, for each norm:

1. builds the detector from a seed and gives every parameter that is initialised to a constant (biases, norm
   weights, DyT alpha, LayerScale) a random value around it, as training would; otherwise the ONNX simplifier
   deletes zero-bias adds and unit-weight multiplies and the graph is not the one a trained model exports;
2. counts FLOPs with ``torch_flops`` and ``onnx_flops`` (``edgead.export.flops``), which must agree within 1 %;
3. exports the ONNX graph and a copy with the norm affines folded into the following linear layers (both through
   ``export_onnx``, parity-checked against PyTorch), and compiles each configuration of ``CONFIGS`` through
   ``edgead.export.compile`` (OpenVINO fp32 / bf16 / int8 and ONNX Q/DQ int8 calibrated on generated texture
   images, TensorRT where it is installed); an engine missing here is a skipped row with its reason;
4. measures end-to-end latency (``edgead.bench.latency``) at each batch size, and each result's share of this
   machine's peak matrix rate (``edgead.bench.roofline``).

It prints the study's table (FLOPs, GPU ms, CPU ms; DyT, LayerNorm, difference, ratio) and writes
``norms.json`` and ``norms.png`` (a bar chart drawn with OpenCV) into the output folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgead import precisions, registry
from edgead.bench.roofline import Achieved, Peak, achieved_rates, measure_peaks, render_achieved, render_peaks
from edgead.bench.schema import BenchResult, bench_document
from edgead.bench.timing import bench_runner
from edgead.errors import EdgeadError

NORMS = ("dyt", "layernorm")
FLOP_TOLERANCE = 0.01
FOLDED = "folded"


def _configs() -> tuple[tuple[str, str, str], ...]:
    """(engine, precision, variant) measured, in table order, from the registry's rows: the reference, then every
    engine at each precision its device computes natively (no FP16 on a CPU provider), each CPU engine's full
    precision also with the norm affines folded (variant ``FOLDED``)."""
    full = precisions.full().name
    rows = [(registry.reference().name, full, "")]
    for e in registry.ENGINES.values():
        if e.checkpoint:
            continue
        for p in map(precisions.get, e.precisions):
            if e.device == "CPU" and p.cpu_flags is None:
                continue
            rows.append((e.name, p.name, ""))
            if not p.reduced and e.device == "CPU":
                rows.append((e.name, p.name, FOLDED))
    return tuple(rows)


#: (engine, precision, variant) measured, in table order; variant "folded" = norm affines folded
CONFIGS: tuple[tuple[str, str, str], ...] = _configs()
#: the FP32 ONNX export (as exported, and folded) whose FLOPs the study counts
_EXPORT = (registry.exporter().name, precisions.full().name, "")
_EXPORT_FOLDED = (*_EXPORT[:2], FOLDED)
#: the FLOP counter run on the reference engine's (PyTorch) model, beside the ONNX graph's
_TORCH = registry.reference().name


@dataclass(frozen=True)
class NormStudy:
    """Everything the study measured; ``results`` carry ``label`` = ``"<norm> <engine> <precision>[ folded]"``."""

    backbone: str
    family: str
    size: int
    flops: dict[str, dict[str, Any]]  # norm -> {"torch": FlopCount dict, "onnx": ..., "agreement": float}
    folding: dict[str, dict[str, Any]]  # norm -> {"folded": n, "max_abs_maps": ..., "max_abs_scores": ...}
    results: list[BenchResult]
    peaks: dict[str, Peak]
    achieved: list[Achieved]
    notes: list[str] = field(default_factory=list)

    def result(self, norm: str, engine: str, precision: str, variant: str, batch: int) -> BenchResult | None:
        label = _label(norm, engine, precision, variant)
        return next((r for r in self.results if r.label == label and r.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "family": self.family,
            "size": self.size,
            "flops": self.flops,
            "folding": self.folding,
            "peaks": {k: p.to_dict() for k, p in self.peaks.items()},
            "achieved": [a.to_dict() for a in self.achieved],
            "notes": self.notes,
        }


def _label(norm: str, engine: str, precision: str, variant: str) -> str:
    return " ".join(x for x in (norm, engine, precision, variant) if x)


def perturb_constant_params(detector: Any, seed: int = 0, scale: float = 0.1) -> Any:
    """Give 1-D parameters (biases, norm weights, DyT alpha, LayerScale) random values around their init, in
    place."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in detector.parameters():
            if p.ndim <= 1:
                size = torch.where(p == 0, torch.ones_like(p), p.abs())
                p.add_(scale * size * torch.randn(p.shape, generator=gen))
    return detector


def build_study_detector(family: str, backbone: str, norm: str, size: int, seed: int = 0) -> Any:
    import torch

    from edgead.models.build import build_detector, detector_spec

    torch.manual_seed(seed)
    detector = build_detector(detector_spec(family, backbone, norm, input_size=size))
    return perturb_constant_params(detector, seed)


def _build_artifacts(
    detector: Any, root: Path, calib: Path, log: Any
) -> tuple[dict[tuple[str, str, str], Path | str], dict[str, Any]]:
    """Export (plain and with norm affines folded) and compile every configuration of ``CONFIGS`` through the
    export and compile API; (config -> artifact folder or the reason it is missing, folding figures)."""
    from edgead.export.compile import compile_artifact
    from edgead.export.onnx import export_onnx
    from edgead.runtimes.manifest import read_manifest

    export, folded = root / "export", root / "export-folded"
    log(f"export {root.name}")
    export_onnx(detector, export, fold_norms=False)  # the baseline
    report = export_onnx(detector, folded, fold_norms=True)  # the folding pass is parity-checked against PyTorch
    if "fold-norms" not in report.passes:
        raise EdgeadError(f"{root.name}: norm folding was dropped by the export ({'; '.join(report.notes)})")
    parity = {"folded": read_manifest(folded).extra["norms_folded"],
              "max_abs_scores": report.parity.max_abs_scores, "max_abs_maps": report.parity.max_abs_maps}
    arts: dict[tuple[str, str, str], Path | str] = {}
    for engine, precision, variant in CONFIGS:
        eng = registry.get(engine)
        if eng.checkpoint:
            continue
        source = folded if variant == FOLDED else export
        folder = registry.artifact_folder(source, engine, precision)
        if folder == source:  # the export itself is this engine's artifact
            arts[(engine, precision, variant)] = source
            continue
        missing = eng.missing()
        if missing:
            arts[(engine, precision, variant)] = missing
            continue
        log(f"compile {engine} {precision} ({root.name}{' folded' if variant else ''})")
        try:
            # a speed study: the fidelity gate measures and records, it does not refuse (accept_drop)
            arts[(engine, precision, variant)] = compile_artifact(source, engine, precision,
                                                                  calib if precisions.get(precision).reduced
                                                                  else None,
                                                                  accept_drop=True)
        except EdgeadError as exc:  # e.g. TensorRT installed on a machine without a GPU: a skip with its reason
            arts[(engine, precision, variant)] = str(exc).splitlines()[0]
    return arts, parity


def _measure(
    norm: str,
    detector: Any,
    arts: dict[tuple[str, str, str], Path | str],
    batches: Sequence[int],
    iters: int,
    warmup: int,
    log: Any,
) -> list[BenchResult]:
    from edgead import runtimes
    from edgead.runtimes.torch_runner import TorchRunner

    results = []
    for engine, precision, variant in CONFIGS:
        label = _label(norm, engine, precision, variant)
        if registry.get(engine).checkpoint:
            runner = TorchRunner.from_detector(detector)
        else:
            art = arts.get((engine, precision, variant), "not built")
            if not isinstance(art, Path):
                results += [BenchResult.skip(engine, precision, b, str(art), label) for b in batches]
                continue
            runner = runtimes.load(art, engine=engine)
        log(f"bench {label} ({runner.executed_precision()})")
        with runner:
            results += bench_runner(runner, batches, iters, warmup, label)
    return results


def run_norm_study(
    backbone: str | None = None,
    size: int | None = None,
    family: str = "fbft",
    out: str | Path = "bench-norms",
    iters: int = 20,
    batches: Sequence[int] = (1, 8),
    warmup: int = 3,
    seed: int = 0,
    calib_images: int = 32,
    console: Any = None,
) -> NormStudy:
    """Run the study, print its tables, write ``OUT/norms.json`` and ``OUT/norms.png``; return the
    measurements."""
    from edgead.export.flops import agreement, onnx_flops, torch_flops
    from edgead.models.build import FAMILY_DEFAULTS, default_backbone
    from edgead.synth import make_synthetic
    from edgead.term import make_console

    if family not in FAMILY_DEFAULTS:
        raise EdgeadError(f"model family must be one of {', '.join(FAMILY_DEFAULTS)}, found '{family}'")
    backbone = backbone or default_backbone(family)
    size = size or int(FAMILY_DEFAULTS[family].get("input_size", 224))
    console = console or make_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        console.print(f"[dim]{msg}[/dim]")

    calib = (
        make_synthetic(
            out / "calib",
            categories=("texture",),
            size=size,
            n_train=calib_images,
            n_test_good=1,
            n_test_defect=1,
            seed=seed,
        )
        / "texture"
    )
    flops: dict[str, dict[str, Any]] = {}
    folding: dict[str, dict[str, Any]] = {}
    results: list[BenchResult] = []
    batch_flops: dict[tuple[str, str, int], int] = {}
    notes: list[str] = []
    for norm in NORMS:
        detector = build_study_detector(family, backbone, norm, size, seed)
        arts, parity = _build_artifacts(detector, out / norm, calib, log)
        model = registry.exporter().model_file
        t, o = torch_flops(detector, 1), onnx_flops(arts[_EXPORT] / model, 1)
        spread = agreement([t, o])
        if spread > FLOP_TOLERANCE:
            raise EdgeadError(
                f"{norm}: torch and ONNX FLOP counts differ by {100 * spread:.2f} %, expected <= 1 %"
            )
        flops[norm] = {_TORCH: t.to_dict(), "onnx": o.to_dict(), "agreement": spread}
        folding[norm] = parity
        for b in batches:
            batch_flops[(norm, "", b)] = onnx_flops(arts[_EXPORT] / model, b).total
            batch_flops[(norm, FOLDED, b)] = onnx_flops(arts[_EXPORT_FOLDED] / model, b).total
        results += _measure(norm, detector, arts, batches, iters, warmup, log)
    log("roofline: peak matmul rates")
    peaks = measure_peaks()
    achieved = []
    for norm in NORMS:
        for variant in ("", FOLDED):
            rows = [
                r
                for r in results
                if r.label.startswith(norm + " ") and r.label.endswith("folded") == bool(variant)
            ]
            achieved += [
                _tag(a, norm, variant)
                for a in achieved_rates(rows, lambda b, n=norm, v=variant: batch_flops[(n, v, b)], peaks)
            ]
    study = NormStudy(backbone, family, size, flops, folding, results, peaks, achieved, notes)
    console.print(render_study(study, batches))
    console.print(render_peaks(peaks))
    console.print(
        render_achieved(achieved, "achieved rate vs peak (FLOPs of the graph run / p50 batch latency)")
    )
    doc = bench_document(results, f"norm study {family} {backbone} {size}", study=study.to_dict())
    (out / "norms.json").write_text(json.dumps(doc, indent=2) + "\n")
    draw_chart(study, batches, out / "norms.png")
    console.print(f"wrote {out / 'norms.json'} and {out / 'norms.png'}")
    return study


def _tag(a: Achieved, norm: str, variant: str) -> Achieved:
    from dataclasses import replace

    return replace(a, engine=f"{norm} {a.engine}", precision=f"{a.precision} {variant}".strip())


# -- presentation --------------------------------------------------------------------------------------------
def _ratio_row(label: str, dyt: float | None, ln: float | None, fmt: str) -> list[str]:
    if dyt is None or ln is None:
        return [
            label,
            "-" if dyt is None else format(dyt, fmt),
            "-" if ln is None else format(ln, fmt),
            "-",
            "-",
        ]
    return [label, format(dyt, fmt), format(ln, fmt), f"{dyt - ln:+{fmt}}", f"{dyt / ln:.3f}"]


#: The published study each family's row is compared with: (metric, DyT, LayerNorm, format). The MAE seed
#: counted its own network at 256x256 with its own counter; its GPU is not ours and its CPU is not this one.
SEED_REFERENCE: dict[str, list[tuple[str, float, float, str]]] = {
    "mae": [("seed FLOPs (its counter, 256x256)", 2_955_149_312, 2_936_799_232, ",.0f"),
            ("seed GPU ms", 12.57, 14.27, ".2f"), ("seed CPU ms", 141.25, 127.83, ".2f")],
}


def study_rows(study: NormStudy, batches: Sequence[int]) -> list[list[str]]:
    """The study's table as text rows: metric, DyT, LayerNorm, DyT - LayerNorm, DyT / LayerNorm."""
    rows = [_ratio_row(name, d, ln, fmt) for name, d, ln, fmt in SEED_REFERENCE.get(study.family, [])]
    rows += [
        _ratio_row(
            f"FLOPs ({how}, batch 1)",
            study.flops["dyt"][how]["total"],
            study.flops["layernorm"][how]["total"],
            ",.0f",
        )
        for how in (_TORCH, "onnx")
    ]
    for engine, precision, variant in CONFIGS:
        for b in batches:
            d = study.result("dyt", engine, precision, variant, b)
            ln = study.result("layernorm", engine, precision, variant, b)
            where = registry.get(engine).device
            name = f"{where} ms/img {engine} {precision}{' ' + variant if variant else ''} b{b}"
            if d is None or ln is None or d.skipped or ln.skipped:
                reason = (d or ln).skipped if (d or ln) else "not run"
                rows.append([name, "-", "-", "-", f"skipped: {reason}"])
                continue
            name += f" [{d.executed_precision}]"
            rows.append(_ratio_row(name, d.p50_ms_per_image, ln.p50_ms_per_image, ".2f"))
    return rows


def render_study(study: NormStudy, batches: Sequence[int]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=f"DyT vs LayerNorm: {study.family} {study.backbone} {study.size}x{study.size} "
        f"(p50, end to end)",
        title_justify="left",
    )
    for col in ("metric", "DyT", "LayerNorm", "DyT - LayerNorm", "ratio DyT/LN"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for row in study_rows(study, batches):
        t.add_row(*[escape(c) for c in row])
    agree = ", ".join(f"{n}: {100 * study.flops[n]['agreement']:.4f} %" for n in NORMS)
    fold = ", ".join(
        f"{n}: {study.folding[n]['folded']} norms folded, vs PyTorch max |diff| maps "
        f"{study.folding[n]['max_abs_maps']:.1e}"
        for n in NORMS
    )
    t.caption = f"torch vs ONNX FLOP counts differ by {agree}\n{fold}"
    t.caption_justify = "left"
    return t


_COLORS = {"dyt": (60, 130, 230), "layernorm": (200, 120, 40)}  # BGR


def draw_chart(study: NormStudy, batches: Sequence[int], path: Path) -> Path:
    """Grouped bars of CPU/GPU ms per image, DyT vs LayerNorm, one group per engine/precision/batch."""
    import cv2

    groups = []
    for engine, precision, variant in CONFIGS:
        for b in batches:
            vals = [study.result(n, engine, precision, variant, b) for n in NORMS]
            if all(v is not None and not v.skipped for v in vals):
                short = registry.get(engine).short
                name = f"{short} {precision}{' fold' if variant else ''}"
                groups.append((name, f"b{b}", [v.p50_ms_per_image for v in vals]))  # type: ignore[union-attr]
    w, h, left, bottom, top = max(640, 110 * len(groups) + 120), 520, 70, 90, 50
    img = np.full((h, w, 3), 255, np.uint8)
    vmax = max((v for g in groups for v in g[2]), default=1.0) * 1.15
    plot_h = h - bottom - top
    cv2.line(img, (left, top), (left, h - bottom), (0, 0, 0), 1)
    cv2.line(img, (left, h - bottom), (w - 20, h - bottom), (0, 0, 0), 1)
    for k in range(6):
        v = vmax * k / 5
        y = int(h - bottom - plot_h * k / 5)
        cv2.line(img, (left - 4, y), (w - 20, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.0f}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, (name, batch, vals) in enumerate(groups):
        x0 = left + 20 + i * 110
        for j, (norm, v) in enumerate(zip(NORMS, vals, strict=True)):
            bh = int(plot_h * v / vmax)
            x = x0 + j * 40
            cv2.rectangle(img, (x, h - bottom - bh), (x + 36, h - bottom), _COLORS[norm], -1)
            cv2.putText(img, f"{v:.1f}", (x, h - bottom - bh - 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, name, (x0 - 4, h - bottom + 18), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, batch, (x0 + 28, h - bottom + 34), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    title = f"ms per image (p50), {study.family} {study.backbone} {study.size}"
    cv2.putText(img, title, (left, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for j, norm in enumerate(NORMS):
        x = w - 260 + j * 120
        cv2.rectangle(img, (x, 14), (x + 16, 30), _COLORS[norm], -1)
        cv2.putText(
            img, "DyT" if norm == "dyt" else "LayerNorm", (x + 22, 28), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    path = Path(path)
    if not cv2.imwrite(str(path), img):
        raise EdgeadError(f"could not write the chart {path}")
    return path
