"""Calibration images: a folder (or MVTec category: its ``train/good``) prepared with the run-time function.

Every INT8 path (OpenVINO NNCF, ONNX Runtime Q/DQ, TensorRT entropy calibrator) reads its batches here, so the
pixels a quantiser sees are exactly the pixels the deployed engine will see. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgead.errors import InputError
from edgead.imageio import list_images, prepare, read_image
from edgead.spec import DetectorSpec


def _calibration_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if (folder / "train" / "good").is_dir():
        folder = folder / "train" / "good"
    try:
        return list_images(folder)
    except InputError as exc:
        raise InputError(f"calibration folder has no usable image: {exc}") from exc


class CalibrationSet:
    """Up to ``limit`` images from ``folder`` as uint8 ``(N, H, W, 3)`` batches of ``batch_size``.

    Unreadable files are skipped and counted (``skipped``); a folder with no readable image is an ``InputError``.
    """

    def __init__(self, folder: str | Path, spec: DetectorSpec, batch_size: int = 8, limit: int = 300) -> None:
        if batch_size < 1:
            raise InputError(f"calibration batch size must be >= 1, found {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        files = _calibration_files(Path(folder))[:limit]
        images, self.skipped = [], []
        for f in files:
            try:
                images.append(prepare(read_image(f), spec))
            except InputError:
                self.skipped.append(f)
        if not images:
            raise InputError(f"calibration folder {folder} has no usable image ({len(files)} files, none readable)")
        self.images = np.stack(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

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
