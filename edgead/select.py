"""``edgead select``: which detector should run on this line? Fit, evaluate and bench a grid of candidates.

Each candidate (family x backbone x norm) is fitted on the normal images of ``data``, exported, compiled for the
chosen engine and precision, evaluated *on that artifact* against the labelled test split (so INT8 losses show;
pixel metrics and the small-defect Q1 AUPRO against each mask at its own resolution, ``edgead.evaluate``), with
the compile gate's verdict against the FP32 reference beside it (``edgead.fidelity``, read from the artifact's
manifest), and timed there (ms per image at batch 1, median). Results land in
``OUT/candidates/<key>/result.json`` as each candidate finishes; a rerun skips finished candidates and reuses a
finished checkpoint or export of an interrupted one. The summary is ``OUT/select.json`` and the accuracy/latency
Pareto plot ``OUT/pareto.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError
from edgead.fsutil import write_text_atomic

Progress = Callable[[str, int, int], None]

DEFAULT_FAMILIES = ("fbft", "nf", "gmm")
DEFAULT_BACKBONES = ("vit_small_patch16_224", "resnet50", "efficientformer_l1", "swin_tiny_patch4_window7_224")
DEFAULT_NORMS = ("layernorm",)
DEFAULT_SIZE = 112
DEFAULT_EPOCHS = 20  # per candidate; fewer than a single `edgead fit` so the default grid stays short
RESULT = "result.json"


@dataclass(frozen=True)
class Candidate:
    family: str
    backbone: str
    norm: str

    @property
    def key(self) -> str:
        return f"{self.family}-{self.backbone}-{self.norm}"


@dataclass(frozen=True)
class CandidateResult:
    """One finished candidate: accuracy on the test split and latency, both on the compiled artifact."""

    key: str
    family: str
    backbone: str
    norm: str
    engine: str
    precision: str
    executed_precision: str
    image_auroc: float
    aupro: float
    pixel_auroc: float
    p50_ms: float  # per image, batch 1
    params: int
    flops: int  # one image, counted on the ONNX graph (on the torch module for engine torch)
    fit_seconds: float
    artifact: str
    cpu_seconds: float = 0.0  # CPU time of this process for the candidate (all steps); wall time on free cores
    # is about this divided by the cores used, whatever else the machine was doing
    aupro_q1: float | None = None  # AUPRO (30 % FPR) of the smallest quartile of defect areas
    map_r: float | None = None  # reduced precision: the compile gate's map r against the FP32 reference
    fidelity_passed: bool | None = None  # reduced precision: whether the gate's budget was met (None: not gated)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Selection:
    results: tuple[CandidateResult, ...]
    pareto: tuple[str, ...]  # keys on the front, fastest first
    skipped: tuple[tuple[str, str], ...]  # (key, reason): not a valid combination
    failed: tuple[tuple[str, str], ...]  # (key, one-line error)
    reused: tuple[str, ...]  # keys whose results came from an earlier run
    seconds: float


def make_grid(families: Sequence[str], backbones: Sequence[str], norms: Sequence[str], size: int
              ) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every valid combination, and the invalid ones with the reason (checked without building models)."""
    from edgead.models.build import detector_spec
    from edgead.models.hierarchical import HIERARCHICAL

    grid, skipped = [], []
    for family in families:
        for backbone in backbones:
            for norm in norms:
                c = Candidate(family, backbone, norm)
                try:
                    detector_spec(family, backbone, norm, input_size=size)
                    check_input_size(backbone, size)
                    if norm == "dyt" and backbone in HIERARCHICAL and not HIERARCHICAL[backbone].layernorm:
                        raise ValueError(f"{backbone} has no LayerNorm to replace by DyT")
                except (ValueError, EdgeadError) as exc:
                    skipped.append((c.key, str(exc).splitlines()[0]))
                    continue
                grid.append(c)
    return grid, skipped


def check_input_size(backbone: str, size: int) -> None:
    """Raise ``ValueError`` when ``size`` does not suit ``backbone`` (patch size, stage strides)."""
    from edgead.models.backbone import backbone_config
    from edgead.models.hierarchical import HIERARCHICAL

    step = HIERARCHICAL[backbone].stride if backbone in HIERARCHICAL else backbone_config(backbone).patch_size
    if size % step:
        raise ValueError(f"input size {size} is not a multiple of {step}, as {backbone} needs")


def pareto_front(results: Sequence[CandidateResult]) -> list[str]:
    """Keys not dominated in (higher image AUROC, then AUPRO; lower latency), fastest first."""
    front = []
    for r in results:
        dominated = any(
            o is not r and o.p50_ms <= r.p50_ms and (o.image_auroc, o.aupro) >= (r.image_auroc, r.aupro)
            and (o.p50_ms < r.p50_ms or (o.image_auroc, o.aupro) > (r.image_auroc, r.aupro))
            for o in results
        )
        if not dominated:
            front.append(r)
    return [r.key for r in sorted(front, key=lambda r: r.p50_ms)]


def _artifact(export: Path, engine: str, precision: str, calib: Path) -> Path:
    """The compiled artifact for ``engine``/``precision`` in ``export``, built unless already there."""
    from edgead import registry
    from edgead.export.compile import compile_artifact

    folder = registry.artifact_folder(export, engine, precision)
    if (folder / registry.MANIFEST).is_file():
        return folder
    return compile_artifact(export, engine, precision, calib)


def run_candidate(c: Candidate, data: Path, folder: Path, size: int, engine: str, precision: str,
                  epochs: int | None, iters: int, seed: int, progress: Progress | None) -> CandidateResult:
    """Fit (unless a checkpoint is there), export, compile, evaluate and bench one candidate."""
    import edgead.runtimes as rt
    from edgead.bench.timing import bench_runner
    from edgead.evaluate import evaluate_runner
    from edgead.export import export_onnx
    from edgead.export.flops import onnx_flops, torch_flops
    from edgead.fit import fit
    from edgead.models.checkpoint import is_checkpoint, load_checkpoint

    cpu0 = time.process_time()
    ckpt, export = folder / "ckpt", folder / "export"
    fit_seconds = 0.0
    if not is_checkpoint(ckpt):
        r = fit(data, ckpt, c.family, c.backbone, c.norm, size, epochs=epochs, seed=seed, progress=progress)
        fit_seconds = r.seconds
    else:
        fit_seconds = float(json.loads((ckpt / "fit.json").read_text()).get("seconds", 0.0))
    detector = load_checkpoint(ckpt)
    params = sum(p.numel() for p in detector.parameters())
    from edgead import registry

    if engine == registry.reference().name:  # the checkpoint is the artifact; nothing to export
        artifact, flops = ckpt, torch_flops(detector).total
    else:
        if not (export / "manifest.json").is_file():
            export_onnx(detector, export, source=ckpt)
        artifact, flops = _artifact(export, engine, precision, data), onnx_flops(export / "model.onnx").total
    runner = rt.load(artifact, engine=engine)
    with runner:
        ev = evaluate_runner(runner, data)
        m = ev.metrics
        bench = bench_runner(runner, (1,), iters=iters, warmup=2, label=c.key)[0]
        executed = runner.executed_precision()
        gate = runner.manifest.extra.get("fidelity") or {}
    return CandidateResult(
        key=c.key, family=c.family, backbone=c.backbone, norm=c.norm, engine=engine, precision=precision,
        executed_precision=executed, image_auroc=float(m.image_auroc), aupro=float(m.aupro),
        pixel_auroc=float(m.pixel_auroc), p50_ms=float(bench.p50_ms_per_image or 0.0), params=int(params),
        flops=int(flops), fit_seconds=float(fit_seconds), artifact=str(artifact),
        cpu_seconds=time.process_time() - cpu0, aupro_q1=None if ev.by_size is None else float(ev.by_size.q1),
        map_r=gate.get("map_r") if gate.get("measured") else None,
        fidelity_passed=gate.get("passed") if gate.get("measured") else None,
    )


def select(
    data: str | Path,
    out: str | Path,
    families: Sequence[str] = DEFAULT_FAMILIES,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    norms: Sequence[str] = DEFAULT_NORMS,
    size: int = DEFAULT_SIZE,
    engine: str = "openvino",
    precision: str = "fp32",
    epochs: int | None = DEFAULT_EPOCHS,
    iters: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> Selection:
    """Run the grid (resuming finished candidates) and write ``select.json`` and ``pareto.png`` into ``out``."""
    from edgead.data import test_items

    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    test_items(data)  # a labelled test split must be there before anything is fitted
    grid, skipped = make_grid(families, backbones, norms, size)
    if not grid:
        raise EdgeadError(f"expected at least one valid candidate, found none: {skipped[0][1] if skipped else ''}")
    results, failed, reused = [], [], []
    for i, c in enumerate(grid):
        folder = out / "candidates" / c.key
        done = folder / RESULT
        if done.is_file():
            r = CandidateResult.from_dict(json.loads(done.read_text()))
            if (r.engine, r.precision) == (engine, precision):
                results.append(r)
                reused.append(c.key)
                if progress:
                    progress("candidates", i + 1, len(grid))
                continue
        try:
            r = run_candidate(c, data, folder, size, engine, precision, epochs, iters, seed, progress)
        except (EdgeadError, ValueError, RuntimeError) as exc:
            failed.append((c.key, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__))
        else:
            write_text_atomic(done, json.dumps(asdict(r), indent=2) + "\n")
            results.append(r)
        if progress:
            progress("candidates", i + 1, len(grid))
    front = pareto_front(results)
    sel = Selection(tuple(results), tuple(front), tuple(skipped), tuple(failed), tuple(reused),
                    time.perf_counter() - t0)
    write_selection(sel, out, data=str(data), size=size, engine=engine, precision=precision)
    return sel


def write_selection(sel: Selection, out: Path, **context: Any) -> None:
    from edgead.bench.machine import machine_info
    from edgead.selectplot import plot_pareto

    doc = {
        "schema_version": 1, **context, "seconds": round(sel.seconds, 1), "machine": machine_info(),
        "pareto": list(sel.pareto), "results": [asdict(r) for r in sel.results],
        "skipped": [{"key": k, "reason": v} for k, v in sel.skipped],
        "failed": [{"key": k, "error": v} for k, v in sel.failed], "reused": list(sel.reused),
    }
    write_text_atomic(out / "select.json", json.dumps(doc, indent=2) + "\n")
    if sel.results:
        plot_pareto(sel.results, sel.pareto, out / "pareto.png",
                    title=f"{context.get('data', '')}: {context.get('engine')} {context.get('precision')}")
