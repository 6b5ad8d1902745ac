"""Dinomaly: reconstruct grouped encoder features through a noisy bottleneck and a linear-attention decoder.

The frozen encoder is tapped at 8 middle blocks, split into two groups whose members are averaged. The mean of
all taps passes a dropout MLP bottleneck (the "noise" that stops identity mapping) and 8 decoder blocks whose
attention is linear (``elu + 1`` feature map), which cannot focus sharply enough to copy anomalies. The decoder
outputs, in reverse order, are grouped the same way. Training minimises a global cosine distance per group, with
the gradient of well-reconstructed points scaled down (hard mining); the map is the mean over groups of the
per-point cosine distance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgead.errors import ConfigError
from edgead.models.postprocess import cosine_distance


class LinearAttention(nn.Module):
    """Multi-head attention with the ``elu(x) + 1`` kernel: cost linear in the number of tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, d)
        q = F.elu(q) + 1.0
        k = F.elu(k) + 1.0
        kv = k.transpose(-2, -1) @ v  # (N, heads, d, d)
        z = 1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1))  # (N, heads, T, 1)
        out = (q @ kv) * z
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention."""

    def __init__(self, dim: int, num_heads: int, norm: Callable[[int], nn.Module], mlp_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, bias=mlp_bias), nn.GELU(),
                                 nn.Linear(4 * dim, dim, bias=mlp_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NoisyBottleneck(nn.Module):
    """MLP with dropout on its input, hidden and output: active in training, identity at export.

    ``bias=False`` matches anomalib's Dinomaly, whose bottleneck has no biases.
    """

    def __init__(self, dim: int, dropout: float = 0.2, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=bias)
        self.fc2 = nn.Linear(4 * dim, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        x = self.drop(F.gelu(self.fc1(x)))
        return self.drop(self.fc2(x))


def hard_mining_p(step: int, p_final: float = 0.9, warmup: int = 1000) -> float:
    """Share of easiest points whose gradient is down-weighted: ramps linearly 0 -> ``p_final``."""
    return p_final * min(1.0, step / max(1, warmup))


def global_cosine_hm(
    enc: list[torch.Tensor], dec: list[torch.Tensor], p: float, factor: float = 0.1
) -> torch.Tensor:
    """Grouped global cosine distance; points below the ``p``-quantile of point distance get ``factor`` x grad."""
    loss = enc[0].new_zeros(())
    for a, b in zip(enc, dec, strict=True):
        a = a.detach()
        if p > 0:
            with torch.no_grad():
                point = cosine_distance(a, b)  # (N, L)
                keep = max(1, int(point.numel() * (1.0 - p)))
                thresh = torch.topk(point.flatten(), keep).values[-1]
                w = torch.where(point < thresh, factor, 1.0)[..., None]
            # Same value as b, gradient scaled by w.
            b = b * w + b.detach() * (1.0 - w)
        loss = loss + (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean()
    return loss / len(enc)


class DinomalyHead(nn.Module):
    """Bottleneck + decoder over 8 encoder taps, split into ``groups`` of tap positions.

    Class and register tokens go through the bottleneck and decoder with the patch tokens (as the original and
    anomalib do with ``remove_class_token=False``); only the distance map drops them.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_prefix_tokens: int,
        grid: tuple[int, int],
        norm: Callable[[int], nn.Module],
        groups: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (4, 5, 6, 7)),
        decoder_depth: int = 8,
        dropout: float = 0.2,
        bottleneck_bias: bool = True,
        decoder_mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        self.groups = tuple(tuple(g) for g in groups)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = tuple(grid)
        self.bottleneck = NoisyBottleneck(dim, dropout, bottleneck_bias)
        self.decoder = nn.ModuleList(
            DecoderBlock(dim, num_heads, norm, decoder_mlp_bias) for _ in range(decoder_depth)
        )
        self.hm_step = 0  # training step for the hard-mining schedule (not a parameter)

    def _grouped(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.num_prefix_tokens
        return [torch.stack([feats[i][:, p:] for i in g]).mean(0) for g in self.groups]

    def encode_decode(self, taps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.bottleneck(torch.stack(taps).mean(0))
        dec = []
        for blk in self.decoder:
            x = blk(x)
            dec.append(x)
        return self._grouped(taps), self._grouped(dec[::-1])

    def loss(self, taps: list[torch.Tensor]) -> torch.Tensor:
        enc, dec = self.encode_decode(taps)
        loss = global_cosine_hm(enc, dec, hard_mining_p(self.hm_step))
        self.hm_step += 1
        return loss

    def anomaly_map(self, taps: list[torch.Tensor]) -> torch.Tensor:
        enc, dec = self.encode_decode(taps)
        m = torch.stack([cosine_distance(a, b) for a, b in zip(enc, dec, strict=True)]).mean(0)
        return m.reshape(m.shape[0], self.grid[0], self.grid[1])
