"""FBFT: forward-backward feature transfer between two teacher layers.

A frozen ViT teacher gives patch features at a shallow block ``j`` and a deep block ``k``. Two small student
MLPs, shared across patches, learn ``j -> k`` (forward) and ``k -> j`` (backward) on normal images only. At test
time each direction's error is the L2 distance between the L2-normalised prediction and the normalised teacher
feature; the anomaly map is the product of the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def student_mlp(dim: int, hidden: int, out: int | None = None) -> nn.Sequential:
    """Three linear layers with GELU between them (``dim -> out``, ``out`` defaults to ``dim``)."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out or dim)
    )


def _unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True).clamp_min(eps * eps))


class FBFTHead(nn.Module):
    """Forward and backward students over the patch tokens of two taps ``(shallow, deep)``.

    ``deep_dim`` is the deep tap's width when it differs from the shallow one (hierarchical backbones).
    """

    def __init__(self, dim: int, hidden: int, num_prefix_tokens: int, grid: tuple[int, int],
                 deep_dim: int | None = None) -> None:
        super().__init__()
        deep = deep_dim or dim
        self.forward_student = student_mlp(dim, hidden, deep)
        self.backward_student = student_mlp(deep, hidden, dim)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = tuple(grid)

    def _patches(self, taps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        shallow, deep = taps
        p = self.num_prefix_tokens
        return shallow[:, p:], deep[:, p:]

    def loss(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Mean per-patch ``1 - cos`` of both directions."""
        fj, fk = self._patches(taps)
        fwd = 1.0 - F.cosine_similarity(self.forward_student(fj), fk, dim=-1)
        bwd = 1.0 - F.cosine_similarity(self.backward_student(fk), fj, dim=-1)
        return fwd.mean() + bwd.mean()

    def anomaly_map(self, taps: list[torch.Tensor]) -> torch.Tensor:
        fj, fk = self._patches(taps)
        d_fwd = torch.linalg.vector_norm(_unit(self.forward_student(fj)) - _unit(fk), dim=-1)
        d_bwd = torch.linalg.vector_norm(_unit(self.backward_student(fk)) - _unit(fj), dim=-1)
        m = d_fwd * d_bwd
        return m.reshape(m.shape[0], self.grid[0], self.grid[1])
