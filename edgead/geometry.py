"""Where a model's anomaly map lies in the camera frame: the inverse of ``edgead.imageio.prepare``.

``prepare`` stretches a frame of (H, W) pixels to ``spec.resize`` (or straight to the input size) and cuts the
centre ``spec.input_size`` out of it. A map of the input size therefore covers the centre-cropped part of the
frame, scaled by ``H / resize_h`` and ``W / resize_w``. ``map_to_frame`` brings a map back onto the frame's own
pixel grid so pixel metrics are computed against ground-truth masks at their own resolution, never against
masks shrunk to the model input:

1. the map is placed where the crop was cut, on a canvas of the resized frame's size;
2. the border the crop dropped is filled by edge replication (each unseen pixel takes the score of the nearest
   pixel the model saw), so every ground-truth pixel is still scored and a defect outside the crop counts as
   found only as far as the crop's edge suggests, rather than being left out of the metric;
3. the canvas is resized to (H, W) with OpenCV's pixel-centre convention, bilinear when enlarging (as the FBFT
   evaluation upsamples its maps), area averaging when shrinking both sides.

Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgead.errors import InputError

if TYPE_CHECKING:
    from edgead.spec import DetectorSpec


@dataclass(frozen=True)
class Crop:
    """The part of a frame the model sees, in frame pixels (continuous coordinates, pixel edges at integers)."""

    top: float
    left: float
    bottom: float
    right: float


def _offsets(spec: DetectorSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized h, w), (crop top, left)) of ``prepare``: the crop offsets are in resized pixels."""
    rh, rw = spec.resize or spec.input_size
    h, w = spec.input_size
    return (rh, rw), ((rh - h) // 2, (rw - w) // 2)


def seen_region(frame_size: tuple[int, int], spec: DetectorSpec) -> Crop:
    """The region of a (H, W) frame that ``prepare`` keeps for the model."""
    (rh, rw), (top, left) = _offsets(spec)
    sy, sx = frame_size[0] / rh, frame_size[1] / rw
    h, w = spec.input_size
    return Crop(top * sy, left * sx, (top + h) * sy, (left + w) * sx)


def map_to_frame(amap: np.ndarray, frame_size: tuple[int, int], spec: DetectorSpec) -> np.ndarray:
    """A (h, w) anomaly map of ``spec`` brought onto its (H, W) frame: float32 (H, W), see the module docstring."""
    amap = np.asarray(amap)
    if amap.shape != tuple(spec.map_size):
        raise InputError(f"expected an anomaly map of the detector's map size {tuple(spec.map_size)}, found "
                         f"{amap.shape}")
    height, width = int(frame_size[0]), int(frame_size[1])
    if height < 1 or width < 1:
        raise InputError(f"expected a frame size of at least 1x1 pixels, found {height}x{width}")
    (rh, rw), (top, left) = _offsets(spec)
    h, w = amap.shape
    canvas = np.ascontiguousarray(amap, dtype=np.float32)
    if (rh, rw) != (h, w):
        canvas = cv2.copyMakeBorder(canvas, top, rh - h - top, left, rw - w - left, cv2.BORDER_REPLICATE)
    if (rh, rw) == (height, width):
        return canvas
    shrinking = height <= rh and width <= rw
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(canvas, (width, height), interpolation=interp)
