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
    """Upsample ``(N, h, w)`` to ``map_size``, smooth, and score by the mean of the top-k pixels."""

    def __init__(self, post: PostSpec, map_size: tuple[int, int], top_k: int) -> None:
        super().__init__()
        self.map_size = tuple(map_size)
        self.align_corners = post.align_corners
        self.top_k = int(top_k)
        self.pad = post.pad
        if post.smooth == "gaussian":
            kernel = gaussian_kernel(post.ksize, post.sigma)
        elif post.smooth == "box":
            kernel = box_kernel(post.ksize)
        else:
            kernel = torch.ones(1, 1)
        self.ksize = kernel.shape[0]
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        if self.ksize == 1:
            return m
        p = self.ksize // 2
        if self.pad == "reflect":
            m = F.pad(m, (p, p, p, p), mode="reflect")
            return F.conv2d(m, self.kernel)
        return F.conv2d(m, self.kernel, padding=p)

    def forward(self, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = patch_map[:, None]
        m = F.interpolate(m, size=self.map_size, mode="bilinear", align_corners=self.align_corners)
        m = self.smooth(m)[:, 0]
        scores = torch.topk(m.flatten(1), self.top_k, dim=1).values.mean(dim=1)
        return scores, m


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
