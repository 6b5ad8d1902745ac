"""Many images through one predict function in calls sized for memory, so checks at high resolution stay small.

An engine call's working memory grows with the pixels in the call, and a ViT's attention with their square: at
1036 px a ViT-S/14 has 5,476 tokens and an engine that materialises attention holds 6 heads x 5476^2 float32, 720 MB,
per layer per image (its softmax as much again). A batch of 8 such images is gigabytes. The export's parity check
and the compile gate therefore run their images in calls of at most ``CALL_PIXELS`` (at least one image, at most
``limit``): the same images, outputs and comparison as one call, with the peak of one image at high resolution.
Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgead.runtimes.base import Predictions

#: pixels one check call may hold: eight 224 px images (or three 518 px ones) share a call, a 1036 px one runs alone
CALL_PIXELS = 1 << 20


def images_per_call(size: tuple[int, int], limit: int = 8) -> int:
    """How many ``size`` images one call takes: as many as fit in ``CALL_PIXELS``, at least 1, at most ``limit``."""
    h, w = size
    return max(1, min(limit, CALL_PIXELS // max(1, h * w)))


def predict_in_calls(predict: Callable[[np.ndarray], Predictions], images: np.ndarray,
                     limit: int = 8) -> Predictions:
    """``predict`` over uint8 ``(N, H, W, 3)`` ``images`` in calls of ``images_per_call`` images, joined in order."""
    step = images_per_call(images.shape[1:3], limit)
    parts = [predict(images[i : i + step]) for i in range(0, images.shape[0], step)]
    if len(parts) == 1:
        return parts[0]
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    return Predictions(np.concatenate([p.scores for p in parts]), np.concatenate([p.maps for p in parts]), labels,
                       sum(p.seconds for p in parts))
