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
    hp = _section(ckpt, "hyper_parameters", what)
    for flag in ("remove_class_token", "use_context_recentering"):
        if _flag(hp, flag, what, "hyper_parameters", False):
            raise ArtifactError(f"{what}: expected an anomalib Dinomaly trained with {flag}=False, found True; "
                                "edgead does not reproduce that variant")
    layers = hp.get("target_layers")
    if layers is not None and not _indices(layers):
        raise _malformed(what, "hyper_parameters.target_layers", "a list of block indices", layers)
    groups = {}
    for key in ("fuse_layer_encoder", "fuse_layer_decoder"):
        value = hp.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and value and all(map(_indices, value))):
            raise _malformed(what, f"hyper_parameters.{key}", "a list of lists of indices", value)
        groups[key] = [list(g) for g in value or GROUPS]
    if groups["fuse_layer_decoder"] != groups["fuse_layer_encoder"]:
        raise ArtifactError(f"{what}: expected the same encoder and decoder fusion groups, found "
                            f"{groups['fuse_layer_encoder']} and {groups['fuse_layer_decoder']}")
    ck_resize, ck_crop = pre_processor_sizes(ckpt, what)
    return build(sd, what, anomalib=True, input_size=input_size or ck_crop, resize=resize or ck_resize or 448,
                 layers=tuple(layers or LAYERS), groups=groups["fuse_layer_encoder"],
                 threshold=raw_threshold(ckpt, what), **opts)


# -- the Lightning metadata, read with its types checked ----------------------------------------------------------
def _malformed(what: str, where: str, expected: str, value: object) -> ArtifactError:
    return ArtifactError(f"{what}: malformed Lightning metadata: expected {where} to be {expected}, found "
                         f"{type(value).__name__}")


def _section(d: dict[str, Any], key: str, what: str, parent: str = "") -> dict[str, Any]:
    """``d[key]`` as a dict ({} when absent or None)."""
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(what, f"{parent}.{key}" if parent else key, "a dict", value)
    return value


def _flag(d: dict[str, Any], key: str, what: str, parent: str, default: bool) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _malformed(what, f"{parent}.{key}", "a bool", value)
    return value


def _indices(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


def _side(size: object) -> int | None | bool:
    """A square side from a torchvision ``size`` (None when not square or unset); False when malformed."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return size if size > 0 else False
    if _indices(size) and len(size) <= 2 and min(size) > 0:
        return size[0] if size[0] == size[-1] else None
    return False


def pre_processor_sizes(ckpt: dict[str, Any], what: str = "checkpoint") -> tuple[int | None, int | None]:
    """(resize side, crop side) from anomalib's stored pre-processor config (Resize then CenterCrop)."""
    cfg = "anomalib_pre_processor_config"
    transform = _section(_section(ckpt, cfg, what), "transform", what, cfg)
    transforms = _section(transform, "init_args", what, f"{cfg}.transform").get("transforms") or []
    where = f"{cfg}.transform.init_args.transforms"
    if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, dict) for t in transforms):
        raise _malformed(what, where, "a list of dicts", transforms)
    resize = crop = None
    for i, t in enumerate(transforms):
        kind = t.get("class_path", "")
        if not isinstance(kind, str):
            raise _malformed(what, f"{where}[{i}].class_path", "a string", kind)
        if not kind.endswith((".Resize", ".CenterCrop")):
            continue
        size = _section(t, "init_args", what, f"{where}[{i}]").get("size")
        side = _side(size)
        if side is False:
            raise _malformed(what, f"{where}[{i}].init_args.size", "a side or a list of sides", size)
        if kind.endswith(".Resize"):
            resize = side
        else:
            crop = side
    return resize, crop


def raw_threshold(ckpt: dict[str, Any], what: str = "checkpoint") -> float | None:
    """anomalib's image decision as a threshold on the raw score (None when the file has none)."""
    state = ckpt.get("state_dict")
    state = state if isinstance(state, dict) else {}

    def value(name: str) -> float:
        t = state.get(f"post_processor.{name}")
        return float(t) if isinstance(t, torch.Tensor) and t.numel() == 1 else math.nan

    where = "anomalib_post_processor_config"
    cfg = _section(ckpt, where, what)
    if not _flag(cfg, "enable_thresholding", what, where, True):
        return None
    thr = value("_image_threshold")
    if math.isnan(thr) and _flag(cfg, "enable_threshold_matching", what, where, True):
        thr = value("_pixel_threshold")
    if math.isnan(thr):
        return None
    lo, hi = value("image_min"), value("image_max")
    sensitivity = cfg.get("image_sensitivity")
    sensitivity = 0.5 if sensitivity is None else sensitivity
    if not (isinstance(sensitivity, (int, float)) and not isinstance(sensitivity, bool) and 0 <= sensitivity <= 1):
        raise _malformed(what, f"{where}.image_sensitivity", "a number in [0, 1]", sensitivity)
    if _flag(cfg, "enable_normalization", what, where, True) and not math.isnan(lo) and not math.isnan(hi) and hi > lo:
        return thr + (0.5 - sensitivity) * (hi - lo)
    return thr
