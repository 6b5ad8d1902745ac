"""Build detectors from a spec: family defaults, backbone, head. The only place family names are mapped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgead.errors import ConfigError
from edgead.models import mae
from edgead.models.backbone import Backbone, backbone_config, create_vit
from edgead.models.detector import Detector
from edgead.models.dinomaly import DinomalyHead
from edgead.models.fbft import FBFTHead
from edgead.models.flow import FLOW_STEPS_CNN, FLOW_STEPS_TRANSFORMER
from edgead.models.hierarchical import HIERARCHICAL, HierarchicalBackbone, is_hierarchical
from edgead.models.norms import norm_layer
from edgead.models.vitad import ViTADHead
from edgead.spec import IMAGENET_MEAN, IMAGENET_STD, DetectorSpec, PostSpec

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # FBFT: teacher blocks 8 and 12 (0-based 7, 11), final norm on the taps, top 0.1 % score.
    "fbft": dict(layers=(7, 11), post=PostSpec(smooth="gaussian", ksize=5, sigma=4.0, score_fraction=0.001),
                 head=dict(tap_norm=True)),
    # Dinomaly: encoder blocks 2..9 in two groups, decoder of 8 blocks, top 1 % score.
    "dinomaly": dict(layers=tuple(range(2, 10)),
                     post=PostSpec(smooth="gaussian", ksize=5, sigma=4.0, score_fraction=0.01),
                     head=dict(groups=[[0, 1, 2, 3], [4, 5, 6, 7]], decoder_depth=8, dropout=0.2,
                               decoder_eps=1e-8, tap_norm=False)),
    # ViTAD: DINO ViT-S/16 at 256; teacher blocks 3, 6, 9 and neck 12 (0-based 2, 5, 8, 11), a 9-block student
    # tapped at its blocks 3, 6, 9 (0-based 2, 5, 8); Gaussian sigma 4 (+-4 sigma); max of a 16x16 average pool.
    "vitad": dict(layers=(2, 5, 8, 11), input_size=256,
                  post=PostSpec(smooth="gaussian", ksize=33, sigma=4.0, align_corners=True, score="avgpool_max",
                                pool=16),
                  head=dict(levels=3, necks=1, student_depth=9, student_taps=[2, 5, 8], tap_norm=False)),
    # NF (FastFlow-style flow): the 7th ViT block (0-based 6) with the final norm; 20 coupling steps on
    # transformer backbones, 8 on ResNet (set per backbone in detector_spec), hidden ratio 0.16, clamp 2.
    "nf": dict(layers=(6,), post=PostSpec(smooth="gaussian", ksize=5, sigma=4.0, score_fraction=0.01),
               head=dict(tap_norm=True, hidden_ratio=0.16, clamp=2.0)),
    # GMM mixture density head: K = 100 Gaussians over 16 whitened principal components of the 7th block.
    "gmm": dict(layers=(6,), post=PostSpec(smooth="gaussian", ksize=5, sigma=4.0, score_fraction=0.01),
                head=dict(tap_norm=True, components=100, proj_dim=16, hidden=128, pos_dim=8)),
    # MAE: trained from scratch at 256, patch 16; pyramid taps at the ends of the encoder's quarters (None: from
    # the depth); map smoothed by a Gaussian of sigma 4 (+-2 sigma), top 1 % score.
    "mae": dict(layers=None, input_size=256, backbone="mae_patch16",
                post=PostSpec(smooth="gaussian", ksize=17, sigma=4.0, score_fraction=0.01),
                head=dict(mae.HEAD_DEFAULTS)),
}
#: Families whose head is built for ViT token sequences (class/register tokens, one width, attention heads).
VIT_ONLY = ("dinomaly", "vitad")

#: families whose whole network is built from the spec (no timm backbone, no frozen part)
_WHOLE_MODELS: dict[str, Callable[[DetectorSpec], nn.Module]] = {"mae": mae.MAEDetector}


def default_backbone(family: str) -> str:
    """The backbone (or, for ``mae``, the configuration) a family uses when none is named."""
    return str(FAMILY_DEFAULTS.get(family, {}).get("backbone", "vit_small_patch14_dinov2"))


def detector_spec(
    family: str,
    backbone: str,
    norm: str = "layernorm",
    input_size: int | tuple[int, int] | None = None,
    layers: tuple[int, ...] | None = None,
    **overrides: Any,
) -> DetectorSpec:
    """A spec with the family's published defaults; keyword ``overrides`` replace any spec field.

    ``input_size`` defaults to the family's published size (224, ViTAD 256).
    """
    if family not in FAMILY_DEFAULTS:
        raise ConfigError(f"model family must be one of {', '.join(FAMILY_DEFAULTS)}, found '{family}'")
    d = FAMILY_DEFAULTS[family]
    head = dict(d["head"])
    if family == "mae":  # trained from scratch; the input is still normalised with ImageNet statistics
        default_layers = mae.pyramid_layers(mae.mae_config(backbone).depth)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif is_hierarchical(backbone):
        if family in VIT_ONLY:
            raise ConfigError(f"{family} needs a ViT backbone, found the hierarchical '{backbone}'")
        default_layers = HIERARCHICAL[backbone].taps
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        cfg = backbone_config(backbone)
        default_layers, mean, std = d["layers"], cfg.mean, cfg.std
    if family == "nf":
        cnn = is_hierarchical(backbone) and HIERARCHICAL[backbone].builder == "resnet"
        head["steps"] = FLOW_STEPS_CNN if cnn else FLOW_STEPS_TRANSFORMER
    head.update(overrides.pop("head", {}))
    fields: dict[str, Any] = dict(
        family=family, backbone=backbone, norm=norm, layers=layers or default_layers,
        input_size=d.get("input_size", 224) if input_size is None else input_size,
        mean=mean, std=std, post=d["post"], head=head,
    )
    fields.update(overrides)
    return DetectorSpec(**fields)


def _fbft_head(spec: DetectorSpec, bb: Backbone, norm: Callable[..., nn.Module]) -> nn.Module:
    if len(spec.layers) != 2:
        raise ConfigError(f"FBFT needs exactly two tapped blocks (shallow, deep), found {list(spec.layers)}")
    hidden = int(spec.head.get("hidden", bb.embed_dim))
    return FBFTHead(bb.dims[0], hidden, bb.num_prefix_tokens, bb.grid_size, deep_dim=bb.dims[1])


def _dinomaly_head(spec: DetectorSpec, bb: Backbone, norm: Callable[..., nn.Module]) -> nn.Module:
    groups = tuple(tuple(g) for g in spec.head["groups"])
    used = sorted(i for g in groups for i in g)
    if used != list(range(len(spec.layers))):
        raise ConfigError(f"Dinomaly groups {spec.head['groups']} must cover the {len(spec.layers)} taps once")
    dec_norm = norm_layer(spec.norm, eps=float(spec.head.get("decoder_eps", 1e-8)))
    num_heads = backbone_config(spec.backbone).num_heads
    return DinomalyHead(bb.embed_dim, num_heads, bb.num_prefix_tokens, bb.grid_size, dec_norm, groups,
                        int(spec.head["decoder_depth"]), float(spec.head["dropout"]),
                        bottleneck_bias=bool(spec.head.get("bottleneck_bias", True)),
                        decoder_mlp_bias=bool(spec.head.get("decoder_mlp_bias", True)))


def _vitad_head(spec: DetectorSpec, bb: Backbone, norm: Callable[..., nn.Module]) -> nn.Module:
    levels, necks = int(spec.head.get("levels", 3)), int(spec.head.get("necks", 1))
    if len(spec.layers) != levels + necks:
        raise ConfigError(f"ViTAD needs {levels} level taps and {necks} neck tap(s), found layers {list(spec.layers)}")
    if list(spec.layers) != sorted(set(spec.layers)):
        raise ConfigError(f"ViTAD layers must be increasing (levels, then neck), found {list(spec.layers)}")
    num_heads = backbone_config(spec.backbone).num_heads
    return ViTADHead(bb.embed_dim, num_heads, bb.num_prefix_tokens, bb.grid_size, norm, levels, necks,
                     int(spec.head.get("student_depth", 9)), tuple(spec.head.get("student_taps", (2, 5, 8))))


def _nf_head(spec: DetectorSpec, bb: Backbone, norm: Callable[..., nn.Module]) -> nn.Module:
    from edgead.models.flow import NFHead

    return NFHead(bb.dims, bb.num_prefix_tokens, bb.grid_size, int(spec.head["steps"]),
                  float(spec.head.get("hidden_ratio", 0.16)), float(spec.head.get("clamp", 2.0)))


def _gmm_head(spec: DetectorSpec, bb: Backbone, norm: Callable[..., nn.Module]) -> nn.Module:
    from edgead.models.gmm import GMMHead

    h = spec.head
    return GMMHead(bb.dims, bb.num_prefix_tokens, bb.grid_size, int(h.get("components", 100)),
                   int(h.get("proj_dim", 16)), int(h.get("hidden", 128)), int(h.get("pos_dim", 8)),
                   float(h.get("nll_lo", 0.0)), float(h.get("nll_hi", 1.0)))


_HEADS: dict[str, Callable[[DetectorSpec, Backbone, Callable[..., nn.Module]], nn.Module]] = {
    "fbft": _fbft_head,
    "dinomaly": _dinomaly_head,
    "vitad": _vitad_head,
    "nf": _nf_head,
    "gmm": _gmm_head,
}


def build_detector(spec: DetectorSpec, backbone_weights: str | Path | None = None) -> Detector:
    """A detector for ``spec``; the backbone is random unless ``backbone_weights`` names a local file."""
    if spec.family in _WHOLE_MODELS:
        if backbone_weights is not None:
            raise ConfigError(f"the {spec.family} family trains from scratch and takes no backbone weights")
        return _WHOLE_MODELS[spec.family](spec).eval()  # type: ignore[return-value]
    if spec.family not in _HEADS:
        raise ConfigError(f"no head for family '{spec.family}'")
    bb = build_backbone(spec, backbone_weights)
    head = _HEADS[spec.family](spec, bb, norm_layer(spec.norm))
    return Detector(spec, bb, head).eval()


def build_backbone(spec: DetectorSpec, weights: str | Path | None = None) -> Backbone:
    """The tapped, truncated backbone for ``spec``: a ViT, or a hierarchical model (same token interface)."""
    tap_norm = bool(spec.head.get("tap_norm", False))
    if is_hierarchical(spec.backbone):
        return HierarchicalBackbone(spec.backbone, spec.norm, spec.input_size, spec.layers, tap_norm,
                                    weights)  # type: ignore[return-value]
    vit = create_vit(spec.backbone, spec.norm, spec.input_size)
    if weights is not None:
        from edgead.models.weights import load_backbone_weights

        load_backbone_weights(vit, weights, spec.backbone)
    return Backbone(vit, spec.layers, tap_norm=tap_norm)
