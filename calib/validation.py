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

A tiled export (a tiling plan in its spec, docs/tiling.md) is judged on the path the line runs: the validation
images are whole frames at their own resolution, read one at a time when a run needs them (never all held: a
2448x2048 frame is 15 MB), each cut into the plan's tiles, run, stitched (``Runner.predict_frames`` for a runner,
``ValidationSet.run`` for the search's in-memory models) and its frame-size map met with its mask at the same size
(``edgead.fidelity.measure`` on frame maps). The proxy paints each defect copy on the whole held-out frame with a
diameter tied to the tile (``proxy_frames``: 1/16, 1/8, 1/4 and 1/2 of it in turn, at least 3 px), so the small
defects tiling is for are in the set. Calibration itself stays on tiles (``calib.dataset``: the engine only ever
sees tiles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgead.calib.dataset import CalibrationSet
from edgead.data import read_masks, test_items
from edgead.errors import InputError
from edgead.fidelity import NOISE, Budget, Fidelity, Reference, measure, score_noise
from edgead.imageio import load_batch, read_image
from edgead.runtimes.base import TILE_BATCH, Runner
from edgead.runtimes.chunks import predict_in_calls
from edgead.spec import DetectorSpec, TilePlan
from edgead.synth import DEFECTS, paint_defect

#: an engine run on a uint8 ``(n, H, W, 3)`` batch of model inputs: (scores ``(n,)``, maps ``(n, h, w)``)
Infer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: the proxy's defect diameters on a tiled export, as fractions of the tile's shorter side, in turn
TILE_DEFECT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


@dataclass(frozen=True)
class ValidationSet:
    """Labels ``(N,)`` (1 = defect), one mask per image at its own resolution (``(H_i, W_i)``: the frame's for a
    labelled folder or a tiled export, the prepared image's for the untiled proxy) and a record, with either
    ``images``, prepared uint8 ``(N, H, W, 3)`` (untiled), or for a tiled export ``frames``, one reader per image
    giving its whole frame when a run needs it, and the ``plan`` that cuts them."""

    images: np.ndarray | None
    labels: np.ndarray
    masks: list[np.ndarray]
    source: dict[str, Any]
    frames: Sequence[Callable[[], np.ndarray]] | None = field(default=None, repr=False)
    plan: TilePlan | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def tiled(self) -> bool:
        return self.frames is not None

    def outputs(self, runner: Runner) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """Scores and maps of ``runner`` on the set: prepared images in calls sized for memory (``predict_all``),
        or for a tiled set each frame whole through ``Runner.predict_frames`` with the set's plan, one frame at a
        time (a list of frame-size maps)."""
        if self.frames is None:
            assert self.images is not None
            return predict_all(runner, self.images)
        runner.tiling = self.plan
        scores, maps = [], []
        for read in self.frames:
            p = runner.predict_frames(read())
            scores.append(p.scores)
            maps.append(p.maps[0])
        return np.concatenate(scores), maps

    def run(self, infer: Infer, score_fraction: float, batch: int = 8
            ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """``outputs`` for an engine given as a function of model-input batches (the accuracy-aware search's
        in-memory models): images in batches of ``batch``, or each frame cut into the plan's tiles, run
        ``TILE_BATCH`` tiles a call, and stitched with ``score_fraction`` (``edgead.runtimes.tiling``, the code
        ``predict_frames`` runs)."""
        if self.frames is None:
            assert self.images is not None
            parts = [infer(self.images[i : i + batch]) for i in range(0, len(self.images), batch)]
            return (np.concatenate([np.asarray(s, np.float32).reshape(-1) for s, _ in parts]),
                    np.concatenate([np.asarray(m, np.float32) for _, m in parts]))
        from edgead.runtimes.tiling import cut, stitch_frames, tile_grid

        assert self.plan is not None
        scores, maps = [], []
        for read in self.frames:
            frame = read()
            grid = tile_grid(frame.shape[:2], self.plan)
            tiles = cut(np.ascontiguousarray(frame)[None], grid)
            del frame
            tile_maps = np.concatenate([np.asarray(infer(tiles[i : i + TILE_BATCH])[1], np.float32)
                                        for i in range(0, len(tiles), TILE_BATCH)])
            s, m = stitch_frames(tile_maps, grid, score_fraction)
            scores.append(s)
            maps.append(m[0])
        return np.concatenate(scores), maps


def _plan_record(plan: TilePlan) -> dict[str, Any]:
    return {"path": "whole frames, tiled and stitched (Runner.predict_frames)", **asdict(plan)}


def labelled_validation(folder: str | Path, spec: DetectorSpec) -> ValidationSet:
    """The test split of an MVTec-layout category; it must hold good and defect images. For a tiled ``spec`` the
    images stay whole frames on disk, read when a run needs them (see the module docstring)."""
    items = test_items(folder)
    labels = np.array([it.label for it in items], dtype=np.int64)
    if labels.min() == labels.max():
        raise InputError(f"expected good and defect test images in the validation folder {folder}, found only "
                         f"{'defect' if labels[0] else 'good'} ones")
    source = {"kind": "labelled", "folder": str(folder), "images": len(items), "defects": int(labels.sum())}
    if spec.tiling is not None:
        return ValidationSet(None, labels, read_masks(items), {**source, "tiling": _plan_record(spec.tiling)},
                             [partial(read_image, it.path) for it in items], spec.tiling)
    return ValidationSet(load_batch([it.path for it in items], spec), labels, read_masks(items), source)


def _painted(path: Path, defect: str, seed: int, i: int, diameter: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out frame at ``path`` with its synthetic defect: the same pixels every call (seeded by ``i``)."""
    return paint_defect(read_image(path), defect, np.random.default_rng([seed, i]), diameter)


def proxy_frames(files: Sequence[Path], spec: DetectorSpec, seed: int = 0,
                 folder: str | Path | None = None) -> ValidationSet:
    """The proxy of a tiled export: each held-out frame whole (label 0, an empty mask) and once with a synthetic
    defect painted on the whole frame (label 1, its exact mask at the frame's size), defect types in turn and
    diameters ``TILE_DEFECT_FRACTIONS`` of the tile in turn. Only the masks are held; each frame is read (and its
    defect painted again, the same pixels) when a run needs it. Unreadable files and frames smaller than a tile
    are skipped, as calibration skips them."""
    plan = spec.tiling
    if plan is None:
        raise InputError("proxy_frames is the proxy of a tiled export; use proxy_validation")
    side = min(plan.tile)
    kept, readers, masks, sizes = [], [], [], []
    for f in files:
        try:
            frame = read_image(f)
        except InputError:
            continue
        if frame.shape[0] < plan.tile[0] or frame.shape[1] < plan.tile[1]:
            continue
        kept.append(Path(f))
        sizes.append(frame.shape[:2])
        del frame
    if not kept:
        raise InputError(f"expected held-out frames of at least one tile ({plan.tile[0]}x{plan.tile[1]}) for the "
                         f"fidelity gate, found none readable among {len(files)} files")
    normals = [partial(read_image, f) for f in kept]
    defect_masks, diameters = [], []
    for i, f in enumerate(kept):
        diameter = max(3, int(round(side * TILE_DEFECT_FRACTIONS[i % len(TILE_DEFECT_FRACTIONS)])))
        painted = partial(_painted, f, DEFECTS[i % len(DEFECTS)], seed, i, diameter)
        defect_masks.append(painted()[1].astype(np.uint8))
        readers.append(lambda painted=painted: painted()[0])
        diameters.append(diameter)
    n = len(kept)
    masks = [np.zeros(hw, np.uint8) for hw in sizes] + defect_masks
    labels = np.array([0] * n + [1] * n, dtype=np.int64)
    return ValidationSet(None, labels, masks,
                         {"kind": "proxy: held-out normals + synthetic defects painted on them",
                          "folder": str(folder if folder is not None else Path(kept[0]).parent),
                          "images": 2 * n, "normals": n,
                          "files": [p.name for p in kept], "defect_diameters": diameters,
                          "tiling": _plan_record(plan)},
                         normals + readers, plan)


def proxy_validation(normals: CalibrationSet, seed: int = 0) -> ValidationSet:
    """Held-out normals plus one synthetic-defect copy of each (see the module docstring). For a tiled spec the
    held-out files' whole frames, not the tiles ``normals`` cut from them (``proxy_frames``)."""
    if normals.spec.tiling is not None:
        return proxy_frames(normals.files, normals.spec, seed, normals.folder)
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
    ref_maps: np.ndarray | list[np.ndarray]  # a tiled set's: one stitched map per frame, at the frame's size
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
        scores, maps = val.outputs(reference.runner)
        spec = reference.runner.spec
        return cls(val, scores, maps, spec.threshold, budget, noise, reference.label, spec)

    @classmethod
    def from_runner(cls, reference: Runner, val: ValidationSet, budget: Budget) -> AccuracyTarget:
        """As ``from_reference`` for a runner of the FP32 export (its noise: the export's parity record)."""
        scores, maps = val.outputs(reference)
        spec = reference.spec
        return cls(val, scores, maps, spec.threshold, budget, score_noise(reference.manifest.extra),
                   reference.describe(), spec)

    def measure(self, scores: np.ndarray, maps: np.ndarray, candidate: str, precision: str,
                threshold: float | None = None) -> Fidelity:
        """``scores``/``maps`` of a candidate (applying ``threshold``, default the reference's) measured against
        the reference's on the validation set."""
        fid = measure(self.ref_scores, self.ref_maps, scores, maps, reference=self.reference,
                      candidate=candidate, precision=precision, threshold=self.threshold, labels=self.val.labels,
                      masks=self.val.masks, spec=None if self.val.tiled else self.spec, noise=self.noise,
                      candidate_threshold=threshold,
                      reference_metrics=self._reference_metrics or None)
        if not self._reference_metrics and fid.reference_metrics and not fid.problems:
            self._reference_metrics.update(fid.reference_metrics)  # complete: pixel metrics included
        return fid

    def measure_runner(self, runner: Runner) -> Fidelity:
        scores, maps = self.val.outputs(runner)
        return self.measure(scores, maps, runner.describe(), runner.manifest.precision)

    def measure_infer(self, infer: Infer, candidate: str, precision: str, batch: int = 8) -> Fidelity:
        """``measure`` of an engine given as a function of model-input batches (``ValidationSet.run``): the
        accuracy-aware search's in-memory models, tiled like a runner on a tiled set."""
        assert self.spec is not None or not self.val.tiled
        fraction = self.spec.post.score_fraction if self.spec is not None else 0.0
        scores, maps = self.val.run(infer, fraction, batch)
        return self.measure(scores, maps, candidate, precision)


def predict_all(runner: Runner, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of ``images`` in calls of at most ``batch`` images, fewer at high resolution
    (``edgead.runtimes.chunks``: a 1036 px image runs alone)."""
    p = predict_in_calls(runner.predict, images, batch)
    return p.scores, p.maps
