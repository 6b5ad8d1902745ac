"""The compile-time fidelity gate: a reduced-precision artifact is measured before it is written.

Every INT8/BF16/FP16 compile that runs on this machine (OpenVINO, ONNX Runtime Q/DQ) is built into a staging
folder, run on validation data (``calib.validation``: a labelled ``--val`` folder, else the calibration hold-out
plus synthetic defects) and measured against the export's FP32 reference (``edgead.fidelity``: the one rule,
``reference_for``; one ``measure``, one ``Budget``, pixel metrics and the small-defect Q1 AUPRO at each mask's own
resolution). An artifact that misses its ``Budget`` is refused — nothing is written — unless the caller accepts the
drop; either way the measured figures go into the artifact's manifest as ``extra.fidelity``.

The verdict on the line is score vs threshold, so the threshold a reduced-precision artifact applies is
recomputed by the fit rule from its own scores on the held-out normals (``edgead.fidelity.recomputed_threshold``)
and written into its manifest's spec, the one its runner reads; the reference's threshold is kept beside it as
``extra.reference_threshold``. TensorRT engines cannot run here: they are checked by
``edgead verify`` on the GPU machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from edgead.calib.dataset import CalibrationSet, calibration_files, split_calibration
from edgead.calib.validation import AccuracyTarget, labelled_validation, proxy_validation
from edgead.errors import FidelityError, InputError
from edgead.fidelity import Budget, Fidelity, reference_for, score_noise
from edgead.runtimes.loader import load
from edgead.runtimes.manifest import MANIFEST, read_manifest, write_manifest

#: images held out of a calibration folder for the gate when no --val is given: a fifth, 4 to 50 of them
HOLDOUT_FRACTION, HOLDOUT_MIN, HOLDOUT_MAX = 0.2, 4, 50


@dataclass(frozen=True)
class Plan:
    """Calibration images and the accuracy target of one reduced-precision compile (either may be None).

    The target (the FP32 reference run on the validation images) is computed when first asked for, not by
    ``plan``: a compile without the accuracy-aware search asks for it only in ``judge``, after the build, so the
    reference's memory (PyTorch, the checkpoint, its run at the input size) is not under NNCF's statistics
    collection (at 1036 px: 2733 -> 2466 MiB peak for INT8; docs/line-resolution.md, "Compile memory at 1036 px").
    """

    calib: CalibrationSet | None
    measure_reference: Callable[[], AccuracyTarget] | None = field(default=None, repr=False)

    @cached_property
    def target(self) -> AccuracyTarget | None:
        return None if self.measure_reference is None else self.measure_reference()


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc ``malloc_trim``): a reference run at a large input
    size leaves hundreds of MB in the allocator's free lists, counted in the process's RSS until trimmed."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def default_holdout(n: int) -> int:
    return int(min(HOLDOUT_MAX, max(HOLDOUT_MIN, round(HOLDOUT_FRACTION * n))))


def plan(export_dir: Path, calib_dir: Path | None, val_dir: Path | None, budget: Budget, limit: int = 300,
         holdout: int | None = None, seed: int = 0) -> Plan:
    """Choose calibration and validation images; the FP32 reference runs on the latter when ``Plan.target`` is
    first read."""
    from edgead.export.onnx import source_onnx

    _, src = source_onnx(export_dir)
    spec = src.spec
    calib = None
    if val_dir is not None:
        val = labelled_validation(val_dir, spec)
        if calib_dir is not None:
            calib = CalibrationSet(calib_dir, spec, batch_size=1, limit=limit, seed=seed)
    elif calib_dir is not None:
        files = calibration_files(calib_dir)
        k = default_holdout(len(files)) if holdout is None else holdout
        chosen, held = split_calibration(files, limit, k, seed)
        calib = CalibrationSet(calib_dir, spec, batch_size=1, files=chosen)
        calib.available = len(files)
        val = proxy_validation(CalibrationSet(calib_dir, spec, files=held), seed)
    else:
        return Plan(None)

    def measure_reference() -> AccuracyTarget:
        reference = reference_for(export_dir)
        try:
            return AccuracyTarget.from_reference(reference, val, budget,
                                                 score_noise(read_manifest(export_dir).extra))
        finally:
            reference.close()
            del reference
            release_memory()

    return Plan(calib, measure_reference)


def record(fid: Fidelity | None, target: AccuracyTarget | None, failures: list[str], accepted: bool) -> dict:
    """The manifest's ``extra.fidelity``: what was measured at compile time, against what, and the verdict."""
    if fid is None or target is None:
        return {"measured": False, "reason": "no validation data (pass --val DIR or --calib DIR)",
                "accepted": accepted}
    metric = target.budget.metric
    return {"measured": True, "reference": target.reference, "validation": target.val.source,
            "budget": target.budget.to_dict(), "passed": not failures, "accepted": accepted and bool(failures),
            "failures": failures, "metric": metric, "drop": fid.drop(metric), "map_r": fid.map_r,
            "q1_drop": fid.drop("aupro_q1"),
            "max_abs_scores": fid.max_abs_scores, "score_error_rel": fid.score_error_rel, "flips": fid.flips,
            "flips_to_anomalous": fid.flips_to_anomalous, "flips_to_normal": fid.flips_to_normal,
            "problems": [str(p) for p in fid.problems], "noise": target.noise,
            "threshold": {"reference": fid.threshold, "recomputed": fid.own_threshold,
                          "flips_with_recomputed": fid.own_threshold_flips,
                          "rule": "the reference's threshold moved by max(mean + 3 std, max) of the artifact's "
                                  "minus the reference's scores on the held-out normals",
                          "applied": fid.own_threshold is not None},
            "auroc_interval": None if fid.auroc_interval is None else fid.auroc_interval.to_dict(),
            "metrics": fid.metrics, "reference_metrics": fid.reference_metrics}


def judge(staged: Path, target: AccuracyTarget | None, accept_drop: bool) -> dict:
    """Measure the staged artifact; raise ``FidelityError`` on a miss unless ``accept_drop``. Returns the record."""
    if target is None:
        if not accept_drop:
            raise InputError("the fidelity gate needs held-out data for a reduced-precision artifact: pass --calib "
                             "DIR (normal images, a part is held out) or --val DIR (labelled MVTec category), or "
                             "--accept-drop to write it unmeasured")
        return record(None, None, [], True)
    runner = load(staged)  # the reference is closed and its memory released (measure_reference) before this
    try:
        fid = target.measure_runner(runner)
        name = f"{runner.engine} {runner.manifest.precision}"
    finally:
        runner.close()
    failures = target.budget.failures(fid)
    if failures and not accept_drop:
        fix = ("its outputs cannot be right, whatever stays in float: check the engine and the build" if fid.problems
               else "Pass --max-drop to keep sensitive layers in float until it holds, or --accept-drop to write "
                    "it anyway")
        raise FidelityError(f"refused {name}: {'; '.join(failures)} against the {target.reference} on "
                            f"{target.val.source['images']} validation images ({target.val.source['kind']}); "
                            f"nothing written. {fix[0].upper()}{fix[1:]}")
    return record(fid, target, failures, accept_drop)


def commit(staged: Path, dest: Path, rec: dict[str, Any]) -> None:
    """Add the gate record to the staged manifest and move the staged files into ``dest`` (an atomic_dir).

    A measured artifact gets the threshold recomputed from its own scores as its spec's threshold (what its runner
    applies), the reference's kept as ``extra.reference_threshold``.
    """
    m = read_manifest(staged)
    (staged / MANIFEST).unlink()
    spec, extra = m.spec, {**m.extra, "fidelity": rec}
    own = (rec.get("threshold") or {}).get("recomputed")
    if own is not None:
        extra["reference_threshold"] = spec.threshold
        spec = replace(spec, threshold=float(own))
    write_manifest(staged, m.engine, m.precision, m.model, spec, m.versions, m.batch, extra)
    for f in staged.iterdir():
        os.replace(f, dest / f.name)
    staged.rmdir()
