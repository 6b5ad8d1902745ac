"""Calibration images: a folder (or MVTec category: its ``train/good``) prepared with the run-time function.

Every INT8 path (OpenVINO NNCF, ONNX Runtime Q/DQ, TensorRT entropy calibrator) reads its batches here, so the
pixels a quantiser sees are exactly the pixels the deployed engine will see. Imports no torch.

Selection is stratified over the folder: the sorted listing (file names usually follow capture time, lot or
camera) is cut into as many equal strata as images are wanted and one image is drawn from each, so a subset of
300 out of 5,000 spans the whole folder rather than its first 300 files. The same strata give the hold-out
images the compile-time gate measures on (``split_calibration``): never the images the quantiser saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgead.errors import InputError
from edgead.imageio import list_images, model_inputs, read_image
from edgead.spec import DetectorSpec


def calibration_files(folder: str | Path) -> list[Path]:
    """The image files of a calibration folder (an MVTec category means its ``train/good``), sorted."""
    folder = Path(folder)
    if (folder / "train" / "good").is_dir():
        folder = folder / "train" / "good"
    try:
        return list_images(folder)
    except InputError as exc:
        raise InputError(f"calibration folder has no usable image: {exc}") from exc


def stratified_indices(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``min(k, n)`` sorted indices into ``range(n)``, one drawn from each of ``k`` equal contiguous strata."""
    if k >= n:
        return np.arange(n)
    edges = np.linspace(0, n, k + 1)
    lo, hi = np.ceil(edges[:-1]).astype(int), np.ceil(edges[1:]).astype(int)
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(a, max(b, a + 1)) for a, b in zip(lo, hi, strict=True)])


def split_calibration(files: Sequence[Path], limit: int, holdout: int, seed: int = 0) -> tuple[list[Path],
                                                                                                  list[Path]]:
    """(calibration, hold-out) files: ``holdout + limit`` stratified draws, every n-th one held out.

    The hold-out images are spread over the folder like the calibration ones; the two never share a file.
    """
    if limit < 1 or holdout < 0:
        raise InputError(f"expected a calibration subset >= 1 and a hold-out >= 0, found {limit} and {holdout}")
    if holdout and len(files) < holdout + 1:
        raise InputError(f"expected more than {holdout} calibration images to hold {holdout} out for the "
                         f"fidelity gate, found {len(files)}; pass --val DIR or fewer hold-out images")
    idx = stratified_indices(len(files), limit + holdout, seed)
    held = set(idx[np.round(np.linspace(0, len(idx) - 1, holdout)).astype(int)].tolist()) if holdout else set()
    calib = [files[i] for i in idx if i not in held][:limit]
    return calib, [files[i] for i in sorted(held)]


class CalibrationSet:
    """Up to ``limit`` images of ``folder`` (stratified) as uint8 ``(N, H, W, 3)`` batches of ``batch_size``.

    ``files`` overrides the selection. Unreadable files are skipped and counted (``skipped``); none readable is
    an ``InputError``.
    """

    def __init__(self, folder: str | Path, spec: DetectorSpec, batch_size: int = 8, limit: int = 300,
                 files: Sequence[Path] | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise InputError(f"calibration batch size must be >= 1, found {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.folder = Path(folder)
        if files is None:
            everything = calibration_files(folder)
            files = [everything[i] for i in stratified_indices(len(everything), limit, seed)]
            self.available = len(everything)
        else:
            self.available = len(files)
        images, self.skipped, self.files = [], [], []
        per_frame = -(-limit // max(1, len(files)))  # tiles kept from each frame of a tiled spec
        for f in files:
            try:
                inputs = model_inputs(read_image(f), spec)
            except InputError:
                self.skipped.append(Path(f))
                continue
            if len(inputs) > per_frame:
                inputs = inputs[np.round(np.linspace(0, len(inputs) - 1, per_frame)).astype(int)]
            images.extend(inputs)
            self.files.append(Path(f))
        if not images:
            raise InputError(f"calibration folder {folder} has no usable image ({len(files)} files, none readable)")
        self.images = np.stack(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def describe(self) -> dict:
        """The manifest's record of the calibration set."""
        return {"folder": str(self.folder), "images": len(self), "frames": len(self.files), "available": self.available,
                "selection": "stratified over the sorted folder listing",
                "skipped": [str(p) for p in self.skipped]}

    def batches(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive batches; the last may be smaller."""
        step = batch_size or self.batch_size
        for i in range(0, len(self), step):
            yield self.images[i : i + step]

    def full_batches(self, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Batches of exactly ``batch_size`` (the last one padded by repeating images), for fixed-shape engines."""
        step = batch_size or self.batch_size
        for b in self.batches(step):
            if b.shape[0] < step:
                reps = np.resize(np.arange(len(self)), step - b.shape[0])
                b = np.concatenate([b, self.images[reps]])
            yield b
