"""NF: a FastFlow-style 2-D normalizing flow over each tapped feature map (Yu et al., 2021).

Each tap ``(N, C, h, w)`` passes its own stack of FrEIA ``AllInOneBlock`` affine coupling steps (the block the
FastFlow authors use): subnets of two convolutions with a hidden width of ``hidden_ratio * C``, 3x3 and 1x1
kernels alternating from step to step, a fixed hard channel permutation after each step and soft clamping of
the log-scales. Training minimises the negative log-likelihood of the features under a standard normal after the
flow. The anomaly map is the per-patch negative log-likelihood ``0.5 * mean_c z^2`` (the Jacobian term is summed
per image by the block, so, as in FastFlow, the map leaves it out), averaged over taps; the postprocessing
upsamples it bilinearly and scores the top-k mean.

FrEIA's block exports to ONNX as plain Conv/Split/Tanh/Exp/Softplus ops and runs in ONNX Runtime and OpenVINO
(checked by the parity tests), so it is used as is rather than rewritten.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgead.errors import require

FLOW_STEPS_TRANSFORMER = 20
FLOW_STEPS_CNN = 8


def _subnet(kernel: int, hidden_ratio: float):  # noqa: ANN202 - FrEIA's constructor protocol
    def make(c_in: int, c_out: int) -> nn.Module:
        hidden = max(1, int(c_in * hidden_ratio))
        pad = kernel // 2
        return nn.Sequential(nn.Conv2d(c_in, hidden, kernel, padding=pad), nn.ReLU(),
                             nn.Conv2d(hidden, c_out, kernel, padding=pad))

    return make


def flow_stack(channels: int, grid: tuple[int, int], steps: int, hidden_ratio: float, clamp: float,
               seed: int = 0) -> nn.Module:
    """``steps`` coupling blocks over ``(channels, *grid)``; the hard permutations come from ``seed``."""
    require("FrEIA", "torch", "the nf density head")
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    state = np.random.get_state()  # FrEIA draws its permutation from numpy's global generator
    np.random.seed(seed)
    try:
        flow = Ff.SequenceINN(channels, *grid)
        for i in range(steps):
            flow.append(Fm.AllInOneBlock, subnet_constructor=_subnet(3 if i % 2 == 0 else 1, hidden_ratio),
                        affine_clamping=clamp, permute_soft=False)
    finally:
        np.random.set_state(state)
    return flow


class NFHead(nn.Module):
    """One flow per tap; taps are ``(N, T, C_i)`` tokens on one patch grid."""

    def __init__(self, dims: tuple[int, ...], num_prefix_tokens: int, grid: tuple[int, int], steps: int,
                 hidden_ratio: float = 0.16, clamp: float = 2.0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = tuple(grid)
        self.flows = nn.ModuleList(flow_stack(c, self.grid, steps, hidden_ratio, clamp, seed=i)
                                   for i, c in enumerate(dims))

    def _maps(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.num_prefix_tokens
        return [t[:, p:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid) for t in taps]

    def loss(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Negative log-likelihood per feature dimension, averaged over images and taps."""
        total = taps[0].new_zeros(())
        for flow, x in zip(self.flows, self._maps(taps), strict=True):
            z, log_jac = flow(x)
            nll = 0.5 * (z * z).flatten(1).sum(1) - log_jac
            total = total + (nll / z[0].numel()).mean()
        return total / len(self.flows)

    def anomaly_map(self, taps: list[torch.Tensor]) -> torch.Tensor:
        maps = []
        for flow, x in zip(self.flows, self._maps(taps), strict=True):
            z, _ = flow(x)
            maps.append(0.5 * (z * z).mean(1))
        return torch.stack(maps).mean(0)
