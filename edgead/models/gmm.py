"""GMM: a mixture density head over patch features (after VT-ADL's Gaussian mixture density network).

Each patch feature (taps concatenated over channels) is projected onto the ``proj_dim`` leading principal
components of the training features, whitened (set once before training by ``prepare``). For every patch,
MLPs predict the means, per-dimension scales and weights of ``components`` Gaussians from the patch's context:
the mean of its 8 neighbours' projected features and a learned code of its grid position. The centre feature is
not an input, so the mixture cannot learn to copy it; training minimises the negative log-likelihood of the
centre under the predicted mixture.

Normalisation. The published head min-max normalises the log-likelihood over each *batch*, which makes a part's
score depend on the other parts in its batch. Here the per-patch NLL is normalised by fixed statistics of the
held-out normal images, ``(nll - nll_lo) / (nll_hi - nll_lo)`` with their lowest and highest per-patch NLL,
computed once after training (``calibrate``) and stored in the spec (``head.nll_lo``, ``head.nll_hi``), so
every image gets the same score alone or in any batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_SCALE_LIMIT = 5.0  # soft clamp of predicted log-scales to (-5, 5)


class GMMHead(nn.Module):
    """Mixture density head; taps are ``(N, T, C_i)`` tokens on one patch grid."""

    def __init__(self, dims: tuple[int, ...], num_prefix_tokens: int, grid: tuple[int, int], components: int = 100,
                 proj_dim: int = 16, hidden: int = 128, pos_dim: int = 8, nll_lo: float = 0.0,
                 nll_hi: float = 1.0) -> None:
        super().__init__()
        width = int(sum(dims))
        d = min(int(proj_dim), width)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = tuple(grid)
        self.k, self.d = int(components), d
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("proj", torch.eye(width, d))  # replaced by whitened PCA in prepare()
        self.register_buffer("nll_lo", torch.tensor(float(nll_lo)), persistent=False)
        self.register_buffer("nll_hi", torch.tensor(float(nll_hi)), persistent=False)
        ring = torch.ones(d, 1, 3, 3) / 8.0
        ring[:, :, 1, 1] = 0.0
        self.register_buffer("ring", ring, persistent=False)
        self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], pos_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        # first layer over [context, position] written as two linears so the position code broadcasts over the batch
        self.ctx_in = nn.Linear(d, hidden)
        self.pos_in = nn.Linear(pos_dim, hidden, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.means = nn.Linear(hidden, self.k * d)
        self.log_scales = nn.Linear(hidden, self.k * d)
        self.logits = nn.Linear(hidden, self.k)

    def _project(self, taps: list[torch.Tensor]) -> torch.Tensor:
        p = self.num_prefix_tokens
        x = torch.cat([t[:, p:] for t in taps], dim=-1)
        return (x - self.center) @ self.proj  # (N, P, d)

    @torch.no_grad()
    def prepare(self, cached: list[list[torch.Tensor]], max_rows: int = 20000) -> None:
        """Centre and whitened PCA projection from the cached training taps."""
        p = self.num_prefix_tokens
        rows = torch.cat([torch.cat([t[:, p:] for t in taps], -1).flatten(0, 1) for taps in cached])
        if len(rows) > max_rows:
            rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_rows]]
        center = rows.mean(0)
        _, s, vh = torch.linalg.svd(rows - center, full_matrices=False)
        std = (s[: self.d] / math.sqrt(max(1, len(rows) - 1))).clamp_min(1e-6)
        self.center.copy_(center)
        self.proj.copy_(vh[: self.d].T / std)

    def nll(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Per-patch negative log-likelihood ``(N, P)`` of the projected features under their mixture."""
        y = self._project(taps)
        n, count, d = y.shape
        grid = y.transpose(1, 2).reshape(n, d, *self.grid)
        ctx = F.conv2d(F.pad(grid, (1, 1, 1, 1), mode="replicate"), self.ring, groups=d)
        ctx = ctx.flatten(2).transpose(1, 2)
        h = self.mlp(self.ctx_in(ctx) + self.pos_in(self.pos))
        mu = self.means(h).reshape(n, count, self.k, d)
        log_s = LOG_SCALE_LIMIT * torch.tanh(self.log_scales(h).reshape(n, count, self.k, d) / LOG_SCALE_LIMIT)
        log_w = torch.log_softmax(self.logits(h), dim=-1)
        r = (y[:, :, None, :] - mu) * torch.exp(-log_s)
        log_n = -0.5 * (r * r).sum(-1) - log_s.sum(-1) - 0.5 * d * math.log(2.0 * math.pi)
        a = log_w + log_n  # (N, P, K)
        top = a.max(dim=-1, keepdim=True).values
        return -(top[..., 0] + torch.log(torch.exp(a - top).sum(-1)))

    def loss(self, taps: list[torch.Tensor]) -> torch.Tensor:
        return self.nll(taps).mean() / self.d

    @torch.no_grad()
    def calibrate(self, taps: list[torch.Tensor]) -> dict[str, float]:
        """Set the normalisation from held-out normal taps; returns the spec head fields to store."""
        nll = self.nll(taps)
        lo, hi = float(nll.min()), float(nll.max())
        if not hi > lo:
            hi = lo + 1.0
        self.nll_lo.fill_(lo)
        self.nll_hi.fill_(hi)
        return {"nll_lo": lo, "nll_hi": hi}

    def anomaly_map(self, taps: list[torch.Tensor]) -> torch.Tensor:
        m = (self.nll(taps) - self.nll_lo) / (self.nll_hi - self.nll_lo)
        return m.reshape(m.shape[0], self.grid[0], self.grid[1])
