"""In-graph postprocessing: patch-grid anomaly map -> pixel map -> image score.

Everything here exports to ONNX as plain ops (Resize, Conv, TopK, ReduceMean) so the whole detector is one
graph. The smoothing kernel is a fixed buffer, not a parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgead.spec import PostSpec


def gaussian_kernel(ksize: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian ``(ksize, ksize)``."""
    r = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g).to(torch.float32)


def box_kernel(ksize: int) -> torch.Tensor:
    return torch.full((ksize, ksize), 1.0 / (ksize * ksize), dtype=torch.float32)


class PostProcess(nn.Module):
    """Patch map ``(N, h, w)`` -> image scores ``(N,)`` and pixel maps ``(N, *map_size)``.

    Upsample to ``post.upsample`` (default ``map_size``), optionally resize to ``post.resize``, smooth (one kernel
    or a box cascade), optionally center-crop to ``post.crop`` and score that map. The returned map is the
    smoothed (or, with ``output='upsampled'``, the upsampled) map, resized to ``map_size`` when it differs.
    """

    def __init__(self, post: PostSpec, map_size: tuple[int, int], top_k: int) -> None:
        super().__init__()
        self.map_size = tuple(map_size)
        self.upsample = tuple(post.upsample or map_size)
        self.resize = tuple(post.resize) if post.resize else None
        self.crop = tuple(post.crop) if post.crop else None
        # The scored map's size is fixed by the spec, so the crop offsets are constants of the graph (never
        # Python arithmetic on traced shapes). torchvision's center_crop rounds half offsets (L2BT crops with it).
        base = self.resize or self.upsample
        self.crop_offset = ((int(round((base[0] - self.crop[0]) / 2.0)), int(round((base[1] - self.crop[1]) / 2.0)))
                            if self.crop else (0, 0))
        self.align_corners = post.align_corners
        self.top_k = int(top_k)
        self.pad = post.pad
        self.score = post.score
        self.pool = int(post.pool)
        self.output = post.output
        if post.cascade:
            kernels = [box_kernel(k) for k, r in post.cascade for _ in range(r)]
        elif post.smooth == "gaussian":
            kernels = [gaussian_kernel(post.ksize, post.sigma)]
        elif post.smooth == "box":
            kernels = [box_kernel(post.ksize)]
        else:
            kernels = []
        self.ksizes = tuple(int(k.shape[0]) for k in kernels)
        for i, kernel in enumerate(kernels):
            self.register_buffer(f"kernel{i}" if i else "kernel", kernel[None, None], persistent=False)
        if not kernels:
            self.register_buffer("kernel", torch.ones(1, 1, 1, 1), persistent=False)
        self.ksize = self.ksizes[0] if self.ksizes else 1

    def _kernels(self) -> list[torch.Tensor]:
        return [getattr(self, f"kernel{i}" if i else "kernel") for i in range(len(self.ksizes))]

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        for kernel in self._kernels():
            p = kernel.shape[-1] // 2
            if p == 0:
                continue
            if self.pad == "reflect":
                m = F.conv2d(F.pad(m, (p, p, p, p), mode="reflect"), kernel)
            else:
                m = F.conv2d(m, kernel, padding=p)
        return m

    def scored_map(self, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(upsampled, smoothed)`` maps, both ``(N, 1, h, w)``; the image score is taken from the second."""
        up = F.interpolate(patch_map[:, None], size=self.upsample, mode="bilinear", align_corners=self.align_corners)
        m = up
        if self.resize is not None and self.resize != self.upsample:
            m = F.interpolate(m, size=self.resize, mode="bilinear", align_corners=False)
        return up, self.smooth(m)

    def image_score(self, m: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            top, left = self.crop_offset
            m = m[:, :, top : top + self.crop[0], left : left + self.crop[1]]
        if self.score == "avgpool_max":
            return F.avg_pool2d(m, self.pool, stride=1).flatten(1).amax(dim=1)
        return torch.topk(m.flatten(1), self.top_k, dim=1).values.mean(dim=1)

    def forward(self, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up, m = self.scored_map(patch_map)
        scores = self.image_score(m)
        out = up if self.output == "upsampled" else m
        if tuple(out.shape[-2:]) != self.map_size:
            out = F.interpolate(out, size=self.map_size, mode="bilinear", align_corners=False)
        return scores, out[:, 0]


def grid_from_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, h*w)`` per-patch values -> ``(N, h, w)``."""
    return tokens.reshape(tokens.shape[0], grid[0], grid[1])


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos`` over the last dimension, written with explicit reductions so it exports cleanly."""
    dot = (a * b).sum(-1)
    na = torch.sqrt((a * a).sum(-1).clamp_min(eps * eps))
    nb = torch.sqrt((b * b).sum(-1).clamp_min(eps * eps))
    return 1.0 - dot / (na * nb)


def sigma_to_ksize(sigma: float) -> int:
    """An odd kernel size covering about +-2 sigma."""
    return 2 * math.ceil(2 * sigma) + 1
