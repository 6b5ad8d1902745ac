"""timm or original DINOv2 backbone weights -> an edgead detector of any family with a fresh head.

The weights load strictly through ``edgead.models.weights`` (DINOv2's ``register_tokens``, ``mask_token`` and class
position are mapped onto timm's layout, position tables resampled to the grid); the head is randomly initialised
and is trained with ``edgead fit``-style training or used as a starting point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgead.errors import ArtifactError, InputError
from edgead.importers.common import encoder_shape, match_backbone, strip_prefix
from edgead.models.build import build_detector, detector_spec
from edgead.models.detector import Detector

FORMAT = "timm"


def convert(sd: dict[str, torch.Tensor], what: str, *, file: str | Path, family: str = "fbft",
            backbone: str | None = None, input_size: int | None = None, norm: str = "layernorm",
            **_: Any) -> Detector:
    enc = strip_prefix(strip_prefix(sd, "backbone."), "encoder.")
    name = match_backbone(encoder_shape(enc, what), what, backbone)
    try:
        spec = detector_spec(family, name, norm, input_size=input_size)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    try:
        return build_detector(spec, backbone_weights=file)
    except ValueError as exc:
        raise ArtifactError(f"{what}: {exc}") from exc
