"""``edgead verify``: every artifact in an export folder against the PyTorch reference, with a verdict.

The reference is picked by the one rule every check uses (``edgead.fidelity.reference_for``): the checkpoint
recorded in the export's manifest (or one given explicitly) run in PyTorch; without PyTorch installed, the FP32
ONNX export run in ONNX Runtime (OpenVINO without it) stands in for it (the report says which). A checkpoint the
export names that is gone is an error here (``--ckpt`` names another): verify never checks the export against
itself by accident.

Every artifact folder is checked as what it is, with the engine its manifest names: an export that ``edgead
tune`` decided is not followed to its choice (``load(OUT)``'s redirect) but checked itself, the chosen artifact
is checked in its own folder, and, when the choice runs with settings of its own (OpenVINO throughput mode, a
static batch), once more with them.

``--data``: an MVTec-layout category (every test image is compared: differences, map r, label flips and score
shift; metrics and the accuracy drop with its interval, pixel metrics and the small-defect Q1 AUPRO against each
mask at its own resolution, never shrunk to the model input), or a plain folder of normal images with no labels
(what a line has before it sees a defect): then the verdict rests on map r, the score shift, the flips and the
NaN/flat checks, and the report says no accuracy drop was measured. Without ``--data`` a fixed synthetic parity
batch is used. Without a budget, each artifact is held to its own precision's targets
(``Budget.for_precision``: FP16 map r 0.999, INT8/BF16 0.99); a callable gives the budget per precision. Flips
compare the reference's labels (its threshold) with the artifact's labels under the threshold the artifact
applies (its own, for a reduced-precision artifact the compile gate recalibrated). Each artifact is measured with
``edgead.fidelity.measure`` and judged by an ``edgead.fidelity.Budget``.

A tiled export (a tiling plan in its spec, docs/tiling.md) is judged on the path the line runs: every image of
``--data`` read whole and scored by ``Runner.predict_frames`` on both sides (the reference cut with the export's
plan, whatever its checkpoint's spec says), its stitched frame-size map met with its mask at the same size, one
frame at a time (frames of several sizes are fine); without ``--data`` the synthetic parity batch is frames of about
two and a half tiles per axis (``parity_frame_size``), tiled and stitched the same way. Untiled exports keep the
full-frame comparison (both sides ``prepare``d to the input, maps brought onto each mask).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgead import precisions, registry
from edgead.data import GOOD, TestItem, read_masks, test_items
from edgead.errors import ArtifactError, InputError
from edgead.evaluate import run_frames_on_items, run_on_items
from edgead.fidelity import (
    Budget,
    Fidelity,
    Reference,
    measure,
    reference_for,
    reference_label,
    score_noise,
)
from edgead.imageio import list_images
from edgead.runtimes.compare import check_batch
from edgead.runtimes.loader import load, tuned_choice
from edgead.runtimes.manifest import export_of, find_artifacts, is_export, read_manifest
from edgead.spec import TilePlan


@dataclass(frozen=True)
class ArtifactCheck:
    """One row of the report: an artifact folder, its ``Fidelity`` against the reference and the ``Budget``'s
    reasons (``failures``), with what its manifest records about how it was built."""

    folder: Path
    engine: str
    precision: str
    fidelity: Fidelity
    failures: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # the manifest's record: layers kept in float, why
    compiled: dict[str, Any] | None = None  # the compile-time gate's record: drop and map r measured then
    settings: str = ""  # runner settings it was checked with: "" (as built) or the tuned choice's, e.g. throughput
    budget: Budget | None = None  # the targets it was judged by (its precision's)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def name(self) -> str:
        """Engine and precision; the folder too where it is not the engine's own for that precision (two int8
        artifacts of one engine, say, would otherwise read alike)."""
        own = registry.find(self.engine)
        usual = None if own is None else own.folder_for(self.precision)
        where = "" if usual is None or usual == "." or self.folder.name == usual else f" ({self.folder.name}/)"
        return f"{self.engine} {self.precision}{where}" + (f" (tuned: {self.settings})" if self.settings else "")

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "engine": self.engine, "precision": self.precision,
                "settings": self.settings, "passed": self.passed, "failures": self.failures,
                **self.fidelity.to_dict(), "quantization": self.quantization, "compile_time_fidelity": self.compiled,
                "budget": None if self.budget is None else self.budget.to_dict()}


@dataclass(frozen=True)
class Report:
    reference: str  # "torch", or "onnxruntime fp32" / "openvino fp32" where torch is missing
    budget: Budget
    images: int
    data: str | None
    checks: list[ArtifactCheck]
    accuracy: str = ""  # what the accuracy verdict rests on, e.g. "not measured: ... normal images, no labels"
    reference_is: str = ""  # the reference in words (``Reference.label``)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reference_label(self) -> str:
        return self.reference_is or reference_label(self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_is": self.reference_label, "passed": self.passed,
                "budget": self.budget.to_dict(), "images": self.images, "data": self.data,
                "accuracy": self.accuracy, "artifacts": [c.to_dict() for c in self.checks]}


def _reference(out: Path, ckpt: Path | None) -> Reference:
    """``reference_for`` (the one rule), refusing an export whose named checkpoint is gone."""
    ref = reference_for(out, ckpt)
    if ref.missing_checkpoint is not None:
        ref.close()
        raise ArtifactError(f"reference checkpoint {ref.missing_checkpoint} named by the export is gone; pass --ckpt")
    return ref


def _data_items(data: Path) -> tuple[list[TestItem], str]:
    """The images of ``data`` and what the accuracy verdict can rest on: an MVTec category's test split
    (labelled), else a plain folder of normal images (no labels)."""
    if (data / "test").is_dir():
        return test_items(data), ""
    items = [TestItem(p, 0, GOOD, None) for p in list_images(data)]
    return items, f"not measured: {data} holds normal images only (no labels); the verdict rests on map r, score " \
                  f"shift, label flips and the NaN/flat checks"


def export_plan(out: Path, folders: list[Path]) -> TilePlan | None:
    """The tiling plan an export's artifacts run with: its root manifest's spec's, else its first artifact's."""
    root = out / registry.MANIFEST
    return read_manifest(out if root.is_file() else folders[0]).spec.tiling


def parity_frame_size(plan: TilePlan) -> tuple[int, int]:
    """Frames of the synthetic parity batch for a tiled export: three tiles per axis, the last one aligned to the
    edge (two strides plus half a tile), so seams and the edge-aligned tile are all compared."""
    (th, tw), ov = plan.tile, plan.overlap
    return th + 2 * (th - ov) - (th - ov) // 2, tw + 2 * (tw - ov) - (tw - ov) // 2


def _run_tiled(runner: Any, items: list[TestItem] | None, frames: np.ndarray | None, plan: TilePlan
               ) -> tuple[np.ndarray, list[np.ndarray] | np.ndarray]:
    """Scores and frame-size maps of ``runner`` on the line's path: each item read whole (one at a time) or the
    parity ``frames``, cut by ``plan`` and stitched (``Runner.predict_frames``)."""
    runner.tiling = plan
    if items is not None:
        return run_frames_on_items(runner, items)
    p = runner.predict_frames(frames)
    return p.scores, p.maps


def _export_root(path: Path) -> tuple[Path, Path | None]:
    """(export root, the one artifact folder to check or None for all of them) for the folder a user named: an
    export folder, or one artifact folder inside it (``edgead verify out/openvino-int8``), which is judged
    against its export's reference alone. An artifact folder outside an export has no reference: refused."""
    if not (path / registry.MANIFEST).is_file() or is_export(path):
        return path, None
    if (root := export_of(path)) is not None:
        return root, path
    m = read_manifest(path, verify=False)
    raise ArtifactError(f"expected an export folder (edgead export CKPT -o OUT) or an artifact folder inside one, "
                        f"found the {m.engine} {m.precision} artifact {path} outside an export: its FP32 "
                        f"reference is unknown; pass the export folder it was compiled from")


def _runs(out: Path, folders: list[Path], only: Path | None = None) -> list[tuple[Path, str, dict[str, Any], str]]:
    """(folder, engine, runner options, settings) to check: each folder with the engine its own manifest names
    (never ``load``'s redirect to a tuned choice), plus the tuned choice once more with its settings if any (when
    ``only`` one folder is checked: if the choice is that folder)."""
    runs = [(f, registry.for_artifact(read_manifest(f).engine).name, {}, "") for f in folders]
    tuned = tuned_choice(out, read_manifest(out).extra) if (out / registry.MANIFEST).is_file() else None
    if tuned is not None and only is not None and tuned[0].resolve() != only.resolve():
        tuned = None
    if tuned is not None and tuned[2]:
        folder, engine, options = tuned
        settings = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in options.items())
        runs.append((folder, engine, options, settings))
    return runs


def verify_artifacts(out: str | Path, data: str | Path | None = None, ckpt: str | Path | None = None,
                     batch: int = 8, budget: Budget | Callable[[str], Budget] | None = None) -> Report:
    """Judge every artifact in ``out`` against the reference, over every image of ``data`` if given."""
    if batch < 1:
        raise InputError(f"expected a batch size >= 1, found {batch}")
    budget_for: Callable[[str], Budget] = (budget if callable(budget) else
                                           (lambda _: budget) if budget is not None else Budget.for_precision)
    out, only = _export_root(Path(out))
    folders = [only] if only is not None else find_artifacts(out)
    if not folders:
        raise ArtifactError(f"expected an export folder with manifest.json, found none in {out}")
    plan = export_plan(out, folders)
    ref = _reference(out, Path(ckpt) if ckpt else None)
    ref_name, ref_is, spec, threshold = ref.kind, ref.label, ref.runner.spec, ref.runner.spec.threshold
    noise = score_noise(read_manifest(out).extra) if (out / registry.MANIFEST).is_file() else score_noise(None)
    labels = masks = images = items = None
    try:
        if data is not None:
            items, accuracy = _data_items(Path(data))
            if plan is not None:
                ref_scores, ref_maps = _run_tiled(ref.runner, items, None, plan)
            else:
                ref_scores, ref_maps = run_on_items(ref.runner, items, batch)
            if not accuracy:
                labels = np.array([it.label for it in items])
                if labels.min() == labels.max():
                    labels = None  # one class only: differences and flips, no metrics
                    accuracy = f"not measured: the test images of {data} are of one class only"
                else:
                    masks = read_masks(items)  # each at its own resolution: maps are brought onto it, never shrunk
                    accuracy = f"measured on {len(items)} labelled images ({int(labels.sum())} with defects)"
        elif plan is not None:
            images = check_batch(1, batch, parity_frame_size(plan))
            ref_scores, ref_maps = _run_tiled(ref.runner, None, images, plan)
            accuracy = "not measured: a synthetic parity batch of frames, tiled (pass --data)"
        else:
            images = check_batch(1, batch, spec.input_size)
            p = ref.runner.predict(images)
            ref_scores, ref_maps = p.scores, p.maps
            accuracy = "not measured: a synthetic parity batch (pass --data)"
    finally:
        ref.close()
    checks, ref_metrics = [], None
    for folder, engine, options, settings in _runs(out, folders, only):
        runner = load(folder, engine, **options)
        try:
            if plan is not None:
                if runner.tiling != plan:
                    raise ArtifactError(f"{folder} carries tiling plan {runner.tiling}, its export {plan}: the "
                                        f"artifacts of one export run one plan; compile it again")
                scores, maps = _run_tiled(runner, items, images, plan)
            elif data is not None:
                scores, maps = run_on_items(runner, items, batch)
            else:
                p = runner.predict(images)
                scores, maps = p.scores, p.maps
            fid = measure(ref_scores, ref_maps, scores, maps, reference=ref_name, candidate=runner.describe(),
                          precision=runner.manifest.precision, threshold=threshold, labels=labels, masks=masks,
                          spec=None if plan is not None else spec, reference_metrics=ref_metrics, noise=noise,
                          candidate_threshold=runner.spec.threshold)
            del scores, maps
        finally:
            runner.close()
        ref_metrics = fid.reference_metrics or None
        judged = budget_for(runner.manifest.precision)
        checks.append(ArtifactCheck(folder, runner.engine, runner.manifest.precision, fid, judged.failures(fid),
                                    runner.manifest.extra.get("quantization"), runner.manifest.extra.get("fidelity"),
                                    settings, judged))
    return Report(ref_name, budget_for(precisions.full().name), int(np.asarray(ref_scores).size),
                  None if data is None else str(data), checks,
                  accuracy, ref_is)
