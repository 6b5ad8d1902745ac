"""The exportable detector: uint8 images in, image scores and anomaly maps out, all in one ``forward``."""

from __future__ import annotations

import torch
from torch import nn

from edgead.models.backbone import Backbone
from edgead.models.postprocess import PostProcess
from edgead.spec import DetectorSpec


class Detector(nn.Module):
    """Preprocessing, frozen backbone, trained head and postprocessing as one module.

    ``forward(images)`` takes uint8 ``(N, H, W, 3)`` RGB at ``spec.input_size`` and returns float32
    ``scores (N,)`` and ``maps (N, H, W)``. The head exposes ``loss(taps)`` and ``anomaly_map(taps)``.
    """

    def __init__(self, spec: DetectorSpec, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        self.post = PostProcess(spec.post, spec.map_size, spec.top_k)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add.
        self.register_buffer("in_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("in_shift", -mean / std, persistent=False)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        self.backbone.eval()  # the teacher / encoder is frozen, always in inference mode
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB -> normalised float32 NCHW."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.in_scale + self.in_shift

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(self.normalize(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patch_map = self.head.anomaly_map(self.taps(images))
        return self.post(patch_map)
