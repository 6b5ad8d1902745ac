"""ViT backbones (timm ``VisionTransformer``) with a chosen norm, tapped at chosen blocks and truncated after them.

Names follow timm: DINOv2-style patch-14 models (with or without 4 register tokens) and DINO/DeiT-style patch-16
ones, plus tiny variants for tests. Weights always come from a local file (see ``edgead.models.weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from edgead.errors import ConfigError
from edgead.models.attention import ChunkedAttention
from edgead.models.norms import norm_layer


@dataclass(frozen=True)
class BackboneConfig:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    reg_tokens: int = 0
    layer_scale: float | None = None  # DINOv2 uses LayerScale (init 1e-5)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


_S = dict(embed_dim=384, depth=12, num_heads=6)
_B = dict(embed_dim=768, depth=12, num_heads=12)
_L = dict(embed_dim=1024, depth=24, num_heads=16)
_TINY = dict(embed_dim=32, depth=12, num_heads=2)

BACKBONES: dict[str, BackboneConfig] = {
    "vit_small_patch14_dinov2": BackboneConfig(14, **_S, layer_scale=1e-5),
    "vit_small_patch14_reg4_dinov2": BackboneConfig(14, **_S, reg_tokens=4, layer_scale=1e-5),
    "vit_base_patch14_dinov2": BackboneConfig(14, **_B, layer_scale=1e-5),
    "vit_base_patch14_reg4_dinov2": BackboneConfig(14, **_B, reg_tokens=4, layer_scale=1e-5),
    "vit_large_patch14_dinov2": BackboneConfig(14, **_L, layer_scale=1e-5),
    "vit_large_patch14_reg4_dinov2": BackboneConfig(14, **_L, reg_tokens=4, layer_scale=1e-5),
    "vit_small_patch16_224": BackboneConfig(16, **_S),  # DINO / DeiT-S
    "vit_base_patch16_224": BackboneConfig(16, **_B),  # DINO / DeiT-B
    "vit_tiny_test_patch14": BackboneConfig(14, **_TINY, layer_scale=1e-5),
    "vit_tiny_test_patch14_reg4": BackboneConfig(14, **_TINY, reg_tokens=4, layer_scale=1e-5),
    "vit_tiny_test_patch16": BackboneConfig(16, **_TINY),
}


def backbone_config(name: str) -> BackboneConfig:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, found '{name}'") from None


def create_vit(name: str, norm: str, input_size: tuple[int, int]) -> VisionTransformer:
    """A randomly initialised timm ViT for ``name`` with ``norm`` as every norm layer, sized for ``input_size``."""
    cfg = backbone_config(name)
    for side in input_size:
        if side % cfg.patch_size:
            raise ConfigError(f"input size {input_size} must be a multiple of the patch size {cfg.patch_size} "
                              f"of {name}")
    kwargs: dict[str, Any] = dict(
        img_size=tuple(input_size),
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        init_values=cfg.layer_scale,
        reg_tokens=cfg.reg_tokens,
        # DINOv2 with registers: the class token's position is folded into the token itself on load, so
        # position embeddings cover the patches only.
        no_embed_class=cfg.reg_tokens > 0,
        norm_layer=norm_layer(norm),
        attn_layer=ChunkedAttention,  # exports high-resolution attention in query slices (models/attention.py)
        num_classes=0,
        global_pool="",
    )
    return VisionTransformer(**kwargs)


class Backbone(nn.Module):
    """A ViT that returns the token sequences ``(N, T, C)`` after each tapped block (0-based indices).

    Blocks after the deepest tap are removed. With ``tap_norm`` the ViT's final norm is applied to each tap
    (as published FBFT does); otherwise the raw block outputs are returned (as Dinomaly does).
    """

    def __init__(self, vit: VisionTransformer, taps: tuple[int, ...], tap_norm: bool = False) -> None:
        super().__init__()
        if not taps:
            raise ConfigError("a backbone needs at least one tapped block")
        depth = len(vit.blocks)
        if min(taps) < 0 or max(taps) >= depth:
            raise ConfigError(f"tapped blocks must be in 0..{depth - 1}, found {list(taps)}")
        self.taps = tuple(sorted(set(taps)))
        self.tap_norm = tap_norm
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.no_embed_class = vit.no_embed_class
        self.norm_pre = vit.norm_pre
        self.blocks = nn.ModuleList(list(vit.blocks)[: max(self.taps) + 1])
        self.norm = vit.norm if tap_norm else nn.Identity()
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.embed_dim = vit.embed_dim
        self.dims = (vit.embed_dim,) * len(self.taps)
        self.grid_size = tuple(vit.patch_embed.grid_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x.flatten(1, 2) if x.ndim == 4 else x
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.norm_pre(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.taps:
                out.append(self.norm(x))
        return out

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop class/register tokens: ``(N, T, C) -> (N, h*w, C)``."""
        return tokens[:, self.num_prefix_tokens :]
