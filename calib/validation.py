"""Validation data for reduced-precision builds: what the compile-time gate and accuracy-aware INT8 measure on.

Two sources, both prepared with the run-time function:

- a labelled MVTec-layout category (``--val DIR``): its test images, labels and masks, each mask at its own
  resolution (``edgead.data.read_masks``, never shrunk to the model input: the maps are brought onto it);
- otherwise a documented proxy made from normal images the quantiser never saw (the calibration hold-out):
  each normal image once as it is (label 0) and once with one synthetic defect painted on it by
  ``edgead.synth.paint_defect`` (label 1, exact mask at the prepared image's size), defect types in turn. The
  proxy measures what INT8 noise does to a detector on this part's own appearance: map r and score error against
  FP32 on real normals, label flips against the threshold, and whether defects still rank above normals (AUROC,
  AUPRO, the small-defect Q1 AUPRO).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgead.calib.dataset import CalibrationSet
from edgead.data import read_masks, test_items
from edgead.errors import InputError
from edgead.fidelity import NOISE, Budget, Fidelity, Reference, measure, score_noise
from edgead.imageio import load_batch
from edgead.runtimes.base import Runner
from edgead.runtimes.chunks import predict_in_calls
from edgead.spec import DetectorSpec
from edgead.synth import DEFECTS, paint_defect


@dataclass(frozen=True)
class ValidationSet:
    """Prepared uint8 images ``(N, H, W, 3)``, labels ``(N,)`` (1 = defect), one mask per image at its own
    resolution (``(H_i, W_i)``: the frame's for a labelled folder, the prepared image's for the proxy) and a
    record."""

    images: np.ndarray
    labels: np.ndarray
    masks: list[np.ndarray]
    source: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def labelled_validation(folder: str | Path, spec: DetectorSpec) -> ValidationSet:
    """The test split of an MVTec-layout category; it must hold good and defect images."""
    items = test_items(folder)
    labels = np.array([it.label for it in items], dtype=np.int64)
    if labels.min() == labels.max():
        raise InputError(f"expected good and defect test images in the validation folder {folder}, found only "
                         f"{'defect' if labels[0] else 'good'} ones")
    return ValidationSet(load_batch([it.path for it in items], spec), labels, read_masks(items),
                         {"kind": "labelled", "folder": str(folder), "images": len(items),
                          "defects": int(labels.sum())})


def proxy_validation(normals: CalibrationSet, seed: int = 0) -> ValidationSet:
    """Held-out normals plus one synthetic-defect copy of each (see the module docstring)."""
    n = len(normals)
    h, w = normals.spec.input_size
    if h != w:
        raise InputError(f"the synthetic-defect proxy needs a square input, found {h}x{w}; pass --val DIR")
    defects, masks = [], []
    for i, img in enumerate(normals.images):
        rng = np.random.default_rng([seed, i])
        d, m = paint_defect(img, DEFECTS[i % len(DEFECTS)], rng)
        defects.append(d)
        masks.append(m.astype(np.uint8))
    images = np.concatenate([normals.images, np.stack(defects)])
    labels = np.array([0] * n + [1] * n, dtype=np.int64)
    all_masks = [np.zeros((h, w), np.uint8) for _ in range(n)] + masks
    return ValidationSet(images, labels, all_masks,
                         {"kind": "proxy: held-out normals + synthetic defects painted on them",
                          "folder": str(normals.folder), "images": 2 * n, "normals": n,
                          "files": [p.name for p in normals.files]})


@dataclass(frozen=True)
class AccuracyTarget:
    """What a reduced-precision build is measured against: the FP32 reference's outputs on a validation set, and
    a budget (``edgead.fidelity``: every candidate is measured with ``measure`` into a ``Fidelity``)."""

    val: ValidationSet
    ref_scores: np.ndarray
    ref_maps: np.ndarray
    threshold: float | None
    budget: Budget
    noise: float = NOISE  # the reference's own score noise: differences below it are ties (edgead.fidelity)
    reference: str = "FP32 ONNX export"  # the reference in words (``Reference.label``)
    spec: DetectorSpec | None = None  # brings model-size maps onto each mask's own resolution
    #: the reference's metrics once measured (pixel metrics at full resolution are the costly part of a search)
    _reference_metrics: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reference(cls, reference: Reference, val: ValidationSet, budget: Budget,
                       noise: float = NOISE) -> AccuracyTarget:
        """The reference's outputs on ``val``; ``noise`` is the export's measured parity with PyTorch."""
        scores, maps = predict_all(reference.runner, val.images)
        spec = reference.runner.spec
        return cls(val, scores, maps, spec.threshold, budget, noise, reference.label, spec)

    @classmethod
    def from_runner(cls, reference: Runner, val: ValidationSet, budget: Budget) -> AccuracyTarget:
        """As ``from_reference`` for a runner of the FP32 export (its noise: the export's parity record)."""
        scores, maps = predict_all(reference, val.images)
        spec = reference.spec
        return cls(val, scores, maps, spec.threshold, budget, score_noise(reference.manifest.extra),
                   reference.describe(), spec)

    def measure(self, scores: np.ndarray, maps: np.ndarray, candidate: str, precision: str,
                threshold: float | None = None) -> Fidelity:
        """``scores``/``maps`` of a candidate (applying ``threshold``, default the reference's) measured against
        the reference's on the validation set."""
        fid = measure(self.ref_scores, self.ref_maps, scores, maps, reference=self.reference,
                      candidate=candidate, precision=precision, threshold=self.threshold, labels=self.val.labels,
                      masks=self.val.masks, spec=self.spec, noise=self.noise, candidate_threshold=threshold,
                      reference_metrics=self._reference_metrics or None)
        if not self._reference_metrics and fid.reference_metrics and not fid.problems:
            self._reference_metrics.update(fid.reference_metrics)  # complete: pixel metrics included
        return fid

    def measure_runner(self, runner: Runner) -> Fidelity:
        scores, maps = predict_all(runner, self.val.images)
        return self.measure(scores, maps, runner.describe(), runner.manifest.precision)


def predict_all(runner: Runner, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of ``images`` in calls of at most ``batch`` images, fewer at high resolution
    (``edgead.runtimes.chunks``: a 1036 px image runs alone)."""
    p = predict_in_calls(runner.predict, images, batch)
    return p.scores, p.maps
