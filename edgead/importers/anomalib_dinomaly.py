"""anomalib's Dinomaly (``anomalib.models.image.dinomaly``) checkpoints -> edgead Dinomaly detectors.

The file is the ``model.ckpt`` anomalib's ``Engine`` writes (a Lightning checkpoint, read without running code,
see ``edgead.importers.ckpt``) or a plain ``state_dict``. anomalib 2.x keeps the encoder in timm's layout under
``model.encoder.feature_extractor.`` (``reg_token``, a position table without a class position) and runs it with
``dynamic_img_size=True`` and antialiasing off, so the table is resized to the grid by timm's rule (``timm-size``),
not DINOv2's; older anomalib files with a DINOv2-layout ``model.encoder.`` are read as the original's. Other
differences from the original Dinomaly: MLPs without biases, a 5x5 Gaussian with reflection padding (the file's
``gaussian_blur.kernel`` is checked), and the returned map is the crop-size map before the 256 px resize and blur
(the score still comes from the blurred 256 px map).

From the Lightning checkpoint the importer also takes: ``hyper_parameters`` (target layers, fusion groups;
``remove_class_token`` and ``use_context_recentering`` are refused), the pre-processor's resize and crop, and the
post-processor's image threshold, converted to the raw score (anomalib labels ``normalised > 1 - sensitivity``,
which is ``raw > threshold + (0.5 - sensitivity) * (max - min)``) and stored as the spec's threshold. anomalib's
min-max normalisation of scores and maps is not applied: edgead returns raw scores and maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from edgead.errors import ArtifactError
from edgead.importers.dinomaly import GROUPS, LAYERS, build
from edgead.models.detector import Detector

FORMAT = "anomalib-dinomaly"


def convert(sd: dict[str, torch.Tensor], what: str, checkpoint: dict[str, Any] | None = None,
            input_size: int | None = None, resize: int | None = None, **opts: Any) -> Detector:
    ckpt = checkpoint or {}
    hp = ckpt.get("hyper_parameters") or {}
    for flag in ("remove_class_token", "use_context_recentering"):
        if hp.get(flag):
            raise ArtifactError(f"{what}: expected an anomalib Dinomaly trained with {flag}=False, found True; "
                                "edgead does not reproduce that variant")
    layers = tuple(hp.get("target_layers") or LAYERS)
    groups = hp.get("fuse_layer_encoder") or GROUPS
    if (hp.get("fuse_layer_decoder") or GROUPS) != groups:
        raise ArtifactError(f"{what}: expected the same encoder and decoder fusion groups, found "
                            f"{groups} and {hp.get('fuse_layer_decoder')}")
    ck_resize, ck_crop = pre_processor_sizes(ckpt)
    return build(sd, what, anomalib=True, input_size=input_size or ck_crop, resize=resize or ck_resize or 448,
                 layers=layers, groups=[list(g) for g in groups], threshold=raw_threshold(ckpt), **opts)


def pre_processor_sizes(ckpt: dict[str, Any]) -> tuple[int | None, int | None]:
    """(resize side, crop side) from anomalib's stored pre-processor config (Resize then CenterCrop)."""
    cfg = (ckpt.get("anomalib_pre_processor_config") or {}).get("transform") or {}
    resize = crop = None
    for t in (cfg.get("init_args") or {}).get("transforms") or []:
        kind, args = str(t.get("class_path", "")), t.get("init_args") or {}
        size = args.get("size")
        side = size if isinstance(size, int) else (size[0] if size and size[0] == size[-1] else None)
        if kind.endswith(".Resize"):
            resize = side
        elif kind.endswith(".CenterCrop"):
            crop = side
    return resize, crop


def raw_threshold(ckpt: dict[str, Any]) -> float | None:
    """anomalib's image decision as a threshold on the raw score (None when the file has none)."""
    state = ckpt.get("state_dict") or {}

    def value(name: str) -> float:
        t = state.get(f"post_processor.{name}")
        return float(t) if isinstance(t, torch.Tensor) and t.numel() == 1 else math.nan

    cfg = ckpt.get("anomalib_post_processor_config") or {}
    if cfg.get("enable_thresholding") is False:
        return None
    thr = value("_image_threshold")
    if math.isnan(thr) and cfg.get("enable_threshold_matching", True):
        thr = value("_pixel_threshold")
    if math.isnan(thr):
        return None
    lo, hi = value("image_min"), value("image_max")
    sensitivity = float(cfg.get("image_sensitivity", 0.5))
    if cfg.get("enable_normalization", True) and not math.isnan(lo) and not math.isnan(hi) and hi > lo:
        return thr + (0.5 - sensitivity) * (hi - lo)
    return thr
