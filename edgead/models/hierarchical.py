"""Hierarchical backbones (ResNet-50, EfficientFormer-L1, Swin) from timm, tapped at stages, as token sequences.

Stage outputs have different widths and strides. Every tapped stage is resized (bilinear) to the grid of the
finest tapped stage and returned as patch tokens ``(N, h*w, C_i)`` with no prefix tokens, so the heads written
for ViT taps work unchanged. With ``tap_norm`` each tap is standardised per patch over its channels (a LayerNorm
without affine parameters): CNN stage outputs have no final norm, and density heads need comparable scales.

``norm='dyt'`` replaces every LayerNorm of the backbone by DyT; a backbone whose kept stages have no LayerNorm
(ResNet's BatchNorm, EfficientFormer's convolutional stages) refuses it rather than silently ignoring it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgead.errors import ConfigError
from edgead.models.norms import DyT, norm_layer


@dataclass(frozen=True)
class HierarchicalConfig:
    """A timm model class, its constructor arguments and default stage taps (0-based ``forward_intermediates``)."""

    builder: str  # "resnet" | "efficientformer" | "swin"
    kwargs: dict[str, Any] = field(default_factory=dict)
    taps: tuple[int, ...] = (1, 2)
    stride: int = 16  # input sides must be a multiple of this (the deepest default tap's stride; Swin: windows)
    layernorm: bool = True  # has LayerNorms that DyT can replace


HIERARCHICAL: dict[str, HierarchicalConfig] = {
    # ResNet-50: stage indices of forward_intermediates are 0 stem, 1 layer1, 2 layer2, 3 layer3, 4 layer4.
    "resnet50": HierarchicalConfig("resnet", dict(block="bottleneck", layers=(3, 4, 6, 3)), taps=(2, 3),
                                   layernorm=False),
    "efficientformer_l1": HierarchicalConfig("efficientformer", dict(depths=(3, 2, 6, 4),
                                             embed_dims=(48, 96, 224, 448), num_vit=1), taps=(1, 2)),
    # Swin-T stands in for EsViT (a Swin-T trained with EsViT's self-supervision), whose weights timm lacks.
    "swin_tiny_patch4_window7_224": HierarchicalConfig("swin", dict(embed_dim=96, depths=(2, 2, 6, 2),
                                                       num_heads=(3, 6, 12, 24), window_size=7), taps=(1, 2),
                                                       stride=112),
    # Tiny variants for tests.
    "resnet_tiny_test": HierarchicalConfig("resnet", dict(block="basic", layers=(1, 1, 1, 1)), taps=(2, 3),
                                           layernorm=False),
    "efficientformer_tiny_test": HierarchicalConfig("efficientformer", dict(depths=(1, 1, 1, 2),
                                                    embed_dims=(16, 24, 32, 48), num_vit=1), taps=(1, 2)),
    "swin_tiny_test": HierarchicalConfig("swin", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                         window_size=4), taps=(1, 2), stride=64),
}


def is_hierarchical(name: str) -> bool:
    return name in HIERARCHICAL


def _create(cfg: HierarchicalConfig, norm: Callable[..., nn.Module], input_size: tuple[int, int]) -> nn.Module:
    kw = dict(cfg.kwargs)
    if cfg.builder == "resnet":
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = Bottleneck if kw.pop("block") == "bottleneck" else BasicBlock
        return ResNet(block=block, num_classes=0, **kw)
    if cfg.builder == "efficientformer":
        from timm.models.efficientformer import EfficientFormer

        return EfficientFormer(num_classes=0, norm_layer_cl=norm, img_size=tuple(input_size), **kw)
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=tuple(input_size), num_classes=0, norm_layer=norm, drop_path_rate=0.0, **kw)


class HierarchicalBackbone(nn.Module):
    """Stage taps of a hierarchical timm model, resized to the finest tapped grid, as ``(N, h*w, C_i)`` tokens."""

    num_prefix_tokens = 0

    def __init__(self, name: str, norm: str, input_size: tuple[int, int], taps: tuple[int, ...],
                 tap_norm: bool = False, weights: str | Path | None = None) -> None:
        super().__init__()
        cfg = HIERARCHICAL[name]
        for side in input_size:
            if side % cfg.stride:
                raise ConfigError(f"input size {tuple(input_size)} must be a multiple of {cfg.stride} for {name}")
        if norm == "dyt" and not cfg.layernorm:
            raise ConfigError(f"backbone {name} has no LayerNorm to replace by DyT; use norm 'layernorm' "
                             "(its own BatchNorms are kept)")
        if not taps:
            raise ConfigError("a backbone needs at least one tapped stage")
        if cfg.builder == "efficientformer" and max(taps) >= 3 and tuple(input_size) != (224, 224):
            raise ConfigError(f"{name}'s attention stage 3 has fixed 7x7 position biases: tap it at input 224, "
                             f"found {tuple(input_size)}")
        model = _create(cfg, partial(norm_layer(norm), eps=1e-5) if norm == "layernorm" else DyT, input_size)
        if weights is not None:
            load_hierarchical_weights(model, weights, name)
        stages = len(model.feature_info) if hasattr(model, "feature_info") else 0
        if min(taps) < 0 or (stages and max(taps) >= stages):
            raise ConfigError(f"tapped stages of {name} must be in 0..{stages - 1}, found {list(taps)}")
        self.taps = tuple(sorted(set(taps)))
        model.prune_intermediate_layers(list(self.taps), prune_norm=True, prune_head=True)
        if norm == "dyt" and not any(isinstance(m, DyT) for m in model.modules()):
            raise ConfigError(f"the tapped stages {list(self.taps)} of {name} have no LayerNorm to replace by DyT; "
                             "use norm 'layernorm' or tap a later stage")
        self.model = model
        self.tap_norm = tap_norm
        with torch.no_grad():
            probe = self._stages(torch.zeros(1, 3, *input_size))
        self.dims = tuple(int(t.shape[1]) for t in probe)
        self.grid_size = tuple(int(s) for s in probe[0].shape[-2:])
        self.embed_dim = self.dims[0]

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.forward_intermediates(x, indices=list(self.taps), intermediates_only=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for f, dim in zip(self._stages(x), self.dims, strict=True):
            if tuple(f.shape[-2:]) != self.grid_size:
                f = F.interpolate(f, size=self.grid_size, mode="bilinear", align_corners=False)
            t = f.flatten(2).transpose(1, 2)
            if self.tap_norm:
                t = F.layer_norm(t, (dim,), eps=1e-5)
            out.append(t)
        return out


def load_hierarchical_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load a timm-layout file into ``model`` strictly (classifier tensors are ignored)."""
    from edgead.errors import ArtifactError
    from edgead.models.weights import read_state_dict

    sd = read_state_dict(path)
    for prefix in ("module.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(("fc.", "head", "dist_head"))}
    missing = [k for k in own if k not in sd and not k.endswith(".alpha")]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        first = (missing or unexpected or bad)[:3]
        raise ArtifactError(f"weights file {Path(path).name} does not fit the {name} backbone: {len(missing)} "
                            f"missing, {len(unexpected)} unknown, {len(bad)} of another shape (first: "
                            f"{', '.join(first)})")
    model.load_state_dict(sd, strict=False)
