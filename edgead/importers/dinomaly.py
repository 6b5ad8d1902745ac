"""Original Dinomaly (guojiajeremy/Dinomaly ``ViTill``) checkpoints -> edgead Dinomaly detectors.

Layout: ``encoder.*`` (DINOv2, optionally with ``register_tokens``), ``bottleneck.0.fc{1,2}.{weight,bias}``
(``bMlp``) and ``decoder.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`` (ViT blocks with linear
attention, LayerNorm eps 1e-8). Honoured: DINOv2's position interpolation (scale factor ``(grid + 0.1) / M``,
bicubic, no antialiasing), class and register tokens through bottleneck and decoder, maps upsampled with aligned
corners to the crop, resized to 256, 5x5 Gaussian (sigma 4) with zero padding, score = mean of the top 1 % of
the 256 px map (``int`` truncation), frames resized to 448 and center-cropped to 392.
"""

from __future__ import annotations

from typing import Any

import torch

from edgead.errors import ArtifactError
from edgead.importers.common import (
    backbone_tensors,
    dinov2_to_timm,
    encoder_shape,
    load_strict,
    match_backbone,
    rename,
    sub_dict,
    timm_to_detector,
)
from edgead.models.build import build_detector, detector_spec
from edgead.models.detector import Detector
from edgead.spec import PostSpec

FORMAT = "dinomaly"
LAYERS = tuple(range(2, 10))
GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]
_BLOCK = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
          "norm2.weight", "norm2.bias"}
_MLP = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}


def head_mapping(sd: dict[str, torch.Tensor], depth: int) -> dict[str, str]:
    """Source key -> detector key for bottleneck and decoder tensors present in ``sd``."""
    mapping = {}
    for fc in ("fc1", "fc2"):
        for p in ("weight", "bias"):
            mapping[f"bottleneck.0.{fc}.{p}"] = f"head.bottleneck.{fc}.{p}"
    for i in range(depth):
        for name in _BLOCK:
            mapping[f"decoder.{i}.{name}"] = f"head.decoder.{i}.{name}"
        for src, dst in _MLP.items():
            for p in ("weight", "bias"):
                mapping[f"decoder.{i}.{src}.{p}"] = f"head.decoder.{i}.{dst}.{p}"
    return {k: v for k, v in mapping.items() if k in sd}


def decoder_depth(sd: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder."))


def build(sd: dict[str, torch.Tensor], what: str, *, anomalib: bool, backbone: str | None = None,
          input_size: int | None = None, resize: int | None = 448, score_size: int = 256,
          layers: tuple[int, ...] = LAYERS, groups: list[list[int]] | None = None,
          threshold: float | None = None) -> Detector:
    """A detector reproducing a Dinomaly checkpoint (original or anomalib's, whose conventions differ).

    The encoder is either in DINOv2's layout under ``encoder.`` (the original, older anomalib) whose position
    table DINOv2 resizes by its ``+0.1`` scale rule, or in timm's layout under ``encoder.feature_extractor.``
    (anomalib 2.x runs timm with ``dynamic_img_size=True`` and antialiasing off: rule ``timm-size``).
    """
    input_size = input_size or 392
    enc = sub_dict(sd, "encoder.")
    timm_layout = any(k.startswith("feature_extractor.") for k in enc)
    if timm_layout:
        enc = sub_dict(enc, "feature_extractor.")
    rule = "timm-size" if timm_layout else "dinov2-offset"
    shape = encoder_shape(enc, what)
    name = match_backbone(shape, what, backbone)
    head_sd = {k: v for k, v in sd.items() if not k.startswith(("encoder.", "gaussian_blur."))}
    depth = decoder_depth(head_sd)
    pixels = score_size * score_size
    post = PostSpec(smooth="gaussian", ksize=5, sigma=4.0, pad="reflect" if anomalib else "zeros",
                    align_corners=True, score_fraction=0.01, resize=(score_size, score_size),
                    output="upsampled" if anomalib else "smoothed")
    head = dict(groups=groups or GROUPS, decoder_depth=depth, dropout=0.2, decoder_eps=1e-8, tap_norm=False,
                bottleneck_bias="bottleneck.0.fc1.bias" in head_sd,
                decoder_mlp_bias="decoder.0.mlp.fc1.bias" in head_sd)
    try:
        spec = detector_spec("dinomaly", name, "layernorm", input_size=input_size, layers=tuple(layers), head=head,
                             post=post, top_k=int(pixels * 0.01),
                             resize=(resize, resize) if resize else None, pos_interp=rule, threshold=threshold)
        detector = build_detector(spec)
    except ValueError as exc:
        raise ArtifactError(f"{what}: {exc}") from exc
    if "gaussian_blur.kernel" in sd:
        check_blur(sd["gaussian_blur.kernel"], detector, what)
    grid, no_cls_pos = detector.backbone.grid_size, bool(detector.backbone.no_embed_class)
    enc_timm = (timm_to_detector(enc, grid, no_cls_pos, rule) if timm_layout
                else dinov2_to_timm(enc, grid, no_cls_pos, rule))
    tensors = backbone_tensors(detector, enc_timm, what)
    tensors.update(rename(head_sd, head_mapping(head_sd, depth), what))
    return load_strict(detector, tensors, what)


def check_blur(kernel: torch.Tensor, detector: Detector, what: str) -> None:
    """The checkpoint's own Gaussian kernel must be the one the detector applies."""
    ours = detector.post.kernel.reshape(-1)
    theirs = kernel.float().reshape(-1)
    if theirs.shape != ours.shape or float((theirs - ours).abs().max()) > 1e-6:
        raise ArtifactError(f"{what}: the checkpoint's Gaussian blur kernel ({tuple(kernel.shape)}) is not the 5x5 "
                            "sigma-4 kernel Dinomaly uses; this importer does not reproduce it")


def convert(sd: dict[str, torch.Tensor], what: str, **opts: Any) -> Detector:
    if "bottleneck.0.fc1.bias" not in sd:
        raise ArtifactError(f"{what}: expected an original Dinomaly checkpoint, found bias-free MLPs (anomalib)")
    return build(sd, what, anomalib=False, **opts)
