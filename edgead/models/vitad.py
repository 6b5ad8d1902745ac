"""ViTAD: a plain-ViT student reconstructs a frozen ViT teacher's features from its deepest (neck) tap.

The teacher (ViT-S/16 in the paper) is tapped at three levels and at a neck block. The neck's patch tokens pass a
linear fuser and a plain-ViT student with its own positional embedding (no class token). The student is tapped
at three of its blocks and its taps pair with the teacher's in reverse (the student's deepest tap reconstructs
the teacher's shallowest). The anomaly map is the sum over levels of the per-patch cosine distance.

Indices here are 0-based: the paper's teacher taps "3, 6, 9" and neck "12" are blocks 2, 5, 8 and 11; the
student's taps "3, 6, 9" of 9 blocks are its blocks 2, 5, 8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.vision_transformer import Block
from torch import nn

from edgead.errors import ConfigError
from edgead.models.postprocess import cosine_distance


class ViTADStudent(nn.Module):
    """Plain ViT blocks over patch tokens with a learned positional embedding; returns the tapped outputs."""

    def __init__(self, dim: int, num_heads: int, depth: int, taps: tuple[int, ...], num_patches: int,
                 norm: Callable[..., nn.Module]) -> None:
        super().__init__()
        if not taps or min(taps) < 0 or max(taps) >= depth:
            raise ConfigError(f"student taps must be in 0..{depth - 1}, found {list(taps)}")
        self.taps = tuple(taps)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x + self.pos_embed
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.taps:
                out.append(x)
        return out


class ViTADHead(nn.Module):
    """Fuser + student over the teacher taps ``(level taps..., neck taps...)`` (the last ``necks`` taps)."""

    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int, grid: tuple[int, int],
                 norm: Callable[..., nn.Module], levels: int = 3, necks: int = 1, student_depth: int = 9,
                 student_taps: tuple[int, ...] = (2, 5, 8)) -> None:
        super().__init__()
        if len(student_taps) != levels:
            raise ConfigError(f"ViTAD pairs {levels} teacher levels with student taps, found {list(student_taps)}")
        self.levels = levels
        self.necks = necks
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = tuple(grid)
        self.fuser = nn.Linear(dim * necks, dim)
        self.student = ViTADStudent(dim, num_heads, student_depth, tuple(student_taps), grid[0] * grid[1], norm)

    def pairs(self, taps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student patch features per level; the student's taps in reverse order."""
        if len(taps) != self.levels + self.necks:
            raise ConfigError(f"ViTAD expects {self.levels + self.necks} teacher taps, found {len(taps)}")
        p = self.num_prefix_tokens
        patches = [t[:, p:] for t in taps]
        teacher, neck = patches[: self.levels], patches[self.levels :]
        student = self.student(self.fuser(torch.cat(neck, dim=-1)))
        return teacher, student[::-1]

    def loss(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Sum over levels of the mean per-patch cosine distance (teacher detached)."""
        teacher, student = self.pairs(taps)
        return sum(cosine_distance(t.detach(), s).mean() for t, s in zip(teacher, student, strict=True))

    def anomaly_map(self, taps: list[torch.Tensor]) -> torch.Tensor:
        teacher, student = self.pairs(taps)
        m = torch.stack([cosine_distance(t, s) for t, s in zip(teacher, student, strict=True)]).sum(0)
        return m.reshape(m.shape[0], self.grid[0], self.grid[1])
