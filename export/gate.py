"""The compile-time fidelity gate: a reduced-precision artifact is measured before it is written.

Every INT8/BF16/FP16 compile that runs on this machine (OpenVINO, ONNX Runtime Q/DQ) is built into a staging
folder, run on validation data (``calib.validation``: a labelled ``--val`` folder, else the calibration hold-out
plus synthetic defects) and measured against the export's FP32 reference (``edgead.fidelity``: the one rule,
``reference_for``; one ``measure``, one ``Budget``, pixel metrics and the small-defect Q1 AUPRO at each mask's own
resolution). An artifact that misses its ``Budget`` is refused — nothing is written — unless the caller accepts the
drop; either way the measured figures go into the artifact's manifest as ``extra.fidelity``. An artifact built
before is judged again the same way, on the same images, with other runner settings (``target_for`` and
``measured``: ``edgead tune``'s INT8 IR with its float rest in BF16), with no rebuild.

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
from edgead.calib.validation import AccuracyTarget, ValidationSet, labelled_validation, proxy_validation
from edgead.errors import FidelityError, InputError
from edgead.fidelity import Budget, Fidelity, Reference, reference_for, score_noise
from edgead.runtimes.base import Runner
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
    calib, val = _split(export_dir, calib_dir, val_dir, limit, holdout, seed, with_calib=True)
    if val is None:
        return Plan(None)

    def measure_reference() -> AccuracyTarget:
        reference = reference_for(export_dir)
        try:
            target = AccuracyTarget.from_reference(reference, val, budget,
                                                   score_noise(read_manifest(export_dir).extra))
            _LAST_TARGET.clear()  # kept for ``target_for`` (one, the latest: its images and the reference's maps)
            _LAST_TARGET[_target_key(export_dir, calib_dir, val_dir, limit, holdout, seed)] = target
            return target
        finally:
            reference.close()
            del reference
            release_memory()

    return Plan(calib, measure_reference)


def _split(export_dir: Path, calib_dir: Path | None, val_dir: Path | None, limit: int, holdout: int | None,
           seed: int, with_calib: bool) -> tuple[CalibrationSet | None, ValidationSet | None]:
    """The calibration set (only ``with_calib``) and the validation set ``plan`` chooses (None, None without data)."""
    from edgead.export.onnx import source_onnx

    _, src = source_onnx(export_dir)
    spec = src.spec
    calib = None
    if val_dir is not None:
        val = labelled_validation(val_dir, spec)
        if calib_dir is not None and with_calib:
            calib = CalibrationSet(calib_dir, spec, batch_size=1, limit=limit, seed=seed)
    elif calib_dir is not None:
        files = calibration_files(calib_dir)
        k = default_holdout(len(files)) if holdout is None else holdout
        chosen, held = split_calibration(files, limit, k, seed)
        if with_calib:
            calib = CalibrationSet(calib_dir, spec, batch_size=1, files=chosen)
            calib.available = len(files)
        val = proxy_validation(CalibrationSet(calib_dir, spec, files=held), seed)
    else:
        return None, None
    return calib, val


def target_for(export_dir: Path, reference: Reference, calib_dir: Path | None, val_dir: Path | None,
               budget: Budget, limit: int = 300, holdout: int | None = None, seed: int = 0) -> AccuracyTarget | None:
    """``plan``'s target (the same validation images: the same split of the same folders) measured with an open
    ``reference`` (``reference_for(export_dir)``), or None without data: an artifact built and gated before is
    judged again (``measured``) with other runner settings, with no rebuild and no second reference. The target
    of this process's latest ``plan`` or ``target_for`` on the same export, folders and split is reused (the
    artifact just built, or another variant, was judged on it): the reference is not run on the images again."""
    key = _target_key(export_dir, calib_dir, val_dir, limit, holdout, seed)
    known = _LAST_TARGET.get(key)
    if known is not None:
        return replace(known, budget=budget)
    _, val = _split(export_dir, calib_dir, val_dir, limit, holdout, seed, with_calib=False)
    if val is None:
        return None
    target = AccuracyTarget.from_reference(reference, val, budget, score_noise(read_manifest(export_dir).extra))
    _LAST_TARGET.clear()
    _LAST_TARGET[key] = target  # the next variant judged on the same split reuses it
    return target


#: the latest target ``plan`` or ``target_for`` measured, by ``_target_key``
_LAST_TARGET: dict[tuple, AccuracyTarget] = {}


def _target_key(export_dir: Path, calib_dir: Path | None, val_dir: Path | None, limit: int, holdout: int | None,
                seed: int) -> tuple:
    """What a target depends on: the export (its files and reference checkpoint by hash) and the data's split."""
    m = read_manifest(export_dir, verify=False)
    where = [None if d is None else str(Path(d).resolve()) for d in (export_dir, calib_dir, val_dir)]
    return (*where, tuple(sorted(m.files.items())), str(m.extra.get("checkpoint_sha256")), limit, holdout, seed)


def validated_on(folder: Path, calib_dir: Path | None) -> tuple[Path | None, Path | None]:
    """(calib_dir, val_dir) that reproduce the validation the gate judged the artifact in ``folder`` on: its record's
    labelled folder where it was judged on one that is still there, else the calibration hold-out of
    ``calib_dir``."""
    source = ((read_manifest(folder, verify=False).extra.get("fidelity") or {}).get("validation") or {})
    labelled = source.get("kind") == "labelled" and source.get("folder")
    if labelled and Path(str(labelled)).is_dir():
        return None, Path(str(labelled))
    return calib_dir, None


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


def measured(runner: Runner, target: AccuracyTarget, accept_drop: bool = False) -> dict:
    """The gate record (``record``) of ``runner`` measured against ``target``; its ``failures`` name what it missed.

    ``judge`` holds a staged build to it; ``edgead tune`` holds an artifact built (and judged) before, run with
    other runner settings (OpenVINO's float rest of an INT8 IR in BF16), to it with no rebuild."""
    fid = target.measure_runner(runner)
    return record(fid, target, target.budget.failures(fid), accept_drop)


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
        rec = measured(runner, target, accept_drop)
        name = f"{runner.engine} {runner.manifest.precision}"
    finally:
        runner.close()
    failures = rec["failures"]
    if failures and not accept_drop:
        fix = ("its outputs cannot be right, whatever stays in float: check the engine and the build" if rec["problems"]
               else "Pass --max-drop to keep sensitive layers in float until it holds, or --accept-drop to write "
                    "it anyway")
        raise FidelityError(f"refused {name}: {'; '.join(failures)} against the {target.reference} on "
                            f"{target.val.source['images']} validation images ({target.val.source['kind']}); "
                            f"nothing written. {fix[0].upper()}{fix[1:]}")
    return rec


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
