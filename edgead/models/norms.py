"""Normalisation layers: LayerNorm and Dynamic Tanh (DyT), chosen by name, and LayerNorm -> DyT conversion.

DyT (Zhu et al., 2025) replaces ``LayerNorm`` by ``y = weight * tanh(alpha * x) + bias`` with a learnable scalar
``alpha`` (initialised to 0.5) and per-channel ``weight`` (1) and ``bias`` (0). It has no reduction over channels,
which is what makes it interesting on accelerators.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from edgead.errors import ConfigError


class DyT(nn.Module):
    """Dynamic Tanh: ``weight * tanh(alpha * x) + bias`` over the last dimension."""

    def __init__(self, num_features: int, alpha_init: float = 0.5, eps: float = 0.0, **_: object) -> None:
        # ``eps`` and other LayerNorm keywords are accepted so DyT drops in wherever a norm_layer is built.
        super().__init__()
        self.num_features = num_features
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha={self.alpha.item():.3g}"


_NORMS: dict[str, Callable[..., nn.Module]] = {
    "layernorm": partial(nn.LayerNorm, eps=1e-6),
    "dyt": DyT,
}


def norm_layer(name: str, eps: float | None = None) -> Callable[..., nn.Module]:
    """The norm constructor for ``name`` ('layernorm' or 'dyt'); ``eps`` overrides LayerNorm's epsilon."""
    try:
        ctor = _NORMS[name]
    except KeyError:
        raise ConfigError(f"norm must be one of {', '.join(_NORMS)}, found '{name}'") from None
    if eps is not None and name == "layernorm":
        return partial(nn.LayerNorm, eps=eps)
    return ctor


def convert_to_dyt(module: nn.Module, alpha_init: float = 0.5) -> nn.Module:
    """Replace every ``nn.LayerNorm`` in ``module`` (in place) by a DyT keeping its affine weight and bias.

    Used to fine-tune a LayerNorm-pretrained backbone as a DyT one. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.LayerNorm):
            (features,) = child.normalized_shape
            dyt = DyT(features, alpha_init=alpha_init)
            with torch.no_grad():
                if child.weight is not None:
                    dyt.weight.copy_(child.weight)
                if child.bias is not None:
                    dyt.bias.copy_(child.bias)
            setattr(module, name, dyt)
        else:
            convert_to_dyt(child, alpha_init)
    return module
