"""anomalib's Dinomaly (``anomalib.models.image.dinomaly``) checkpoints -> edgead Dinomaly detectors.

Same key layout as the original under Lightning's ``model.`` prefix (``state_dict`` of the ``.ckpt``), but the
bottleneck MLP has no biases (and, where the file says so, neither do the decoder MLPs), the 5x5 Gaussian pads by
reflection, and the returned anomaly map is the crop-size map before the 256 px resize and blur (the score still
comes from the blurred 256 px map). Not interchangeable with the original: the importer refuses the other one.
"""

from __future__ import annotations

from typing import Any

import torch

from edgead.importers.dinomaly import build
from edgead.models.detector import Detector

FORMAT = "anomalib-dinomaly"


def convert(sd: dict[str, torch.Tensor], what: str, **opts: Any) -> Detector:
    return build(sd, what, anomalib=True, **opts)
