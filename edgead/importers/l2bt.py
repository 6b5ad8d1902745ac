"""L2BT / FBFT (alex-costanzino/L2BT) student checkpoints + a DINOv2 teacher -> edgead FBFT detectors.

Layout: two files ``forward_net_*.pth`` and ``backward_net_*.pth``, each a ``FeatureProjectionMLP`` with
``input``, ``projection`` and ``output`` linear layers (GELU between; hidden width ``(in + out) // 2``); or one
file holding both under ``forward_net.`` / ``backward_net.``. The teacher is DINOv2 ViT-B/14 with registers
(torch hub ``dinov2_vitb14_reg``, not in the student files: pass its weights) tapped with
``get_intermediate_layers(x, [7, 11])``: blocks 7 and 11 (0-based), final norm applied, prefix tokens removed.

Honoured: the published inference (``B_infer_VisA.py``), which feeds block 7's features to ``backward_net`` and
block 11's to ``forward_net`` (the reverse of how training pairs them) and multiplies the two L2 distances of
normalised features; bilinear upsampling to the frame's long side, five 5x5 and three 7x7 box filters with zero
padding, a center crop to the frame and score = mean of the top ``int(0.1 % of the frame's pixels)``. With
``as_trained=True`` the nets are used the way training pairs them instead. Square padding (edge mode) and the
bicubic resize of the frame happen before the network, outside the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgead.errors import ArtifactError, InputError
from edgead.importers.common import (
    backbone_tensors,
    dinov2_to_timm,
    encoder_shape,
    load_strict,
    match_backbone,
    rename,
    strip_prefix,
    sub_dict,
)
from edgead.importers.detect import check_format, normalise, sniff
from edgead.models.build import build_detector, detector_spec
from edgead.models.detector import Detector
from edgead.models.weights import read_state_dict
from edgead.spec import PostSpec

FORMAT = "l2bt"
LAYERS = (7, 11)
_MLP = {"input": "0", "projection": "2", "output": "4"}


def _student(sd: dict[str, torch.Tensor], target: str, what: str) -> dict[str, torch.Tensor]:
    mapping = {f"{src}.{p}": f"head.{target}.{dst}.{p}" for src, dst in _MLP.items() for p in ("weight", "bias")}
    missing = [k for k in mapping if k not in sd]
    if missing:
        raise ArtifactError(f"{what}: the L2BT student lacks {', '.join(missing)}")
    return rename(sd, mapping, what)


def _students(sd: dict[str, torch.Tensor], backward: str | Path | None, what: str) -> tuple[dict, dict]:
    if any(k.startswith("forward_net.") for k in sd):
        return sub_dict(sd, "forward_net."), sub_dict(sd, "backward_net.")
    if backward is None:
        raise InputError(f"{what} holds one L2BT student; pass the other with --backward BACKWARD_NET.pth")
    other = check_format(read_state_dict(backward), FORMAT, Path(backward).name)
    return sd, other


def convert(sd: dict[str, torch.Tensor], what: str, *, weights: str | Path | None = None,
            backward: str | Path | None = None, backbone: str | None = None, input_size: int = 1036,
            frame: tuple[int, int] | None = None, as_trained: bool = False, **_: Any) -> Detector:
    """``sd`` is ``forward_net`` (or both nets); ``weights`` the DINOv2 teacher; ``frame`` the original (H, W)."""
    if weights is None:
        raise InputError("L2BT checkpoints hold only the students; pass the DINOv2 teacher weights with --weights "
                         "(dinov2_vitb14_reg4_pretrain.pth)")
    teacher = normalise(read_state_dict(weights))
    if sniff(teacher) != "timm":
        raise ArtifactError(f"{Path(weights).name}: expected DINOv2 teacher weights, found a different layout")
    teacher = strip_prefix(teacher, "encoder.")
    fwd, bwd = _students(sd, backward, what)
    shape = encoder_shape(teacher, Path(weights).name)
    name = match_backbone(shape, Path(weights).name, backbone)
    h, w = frame or (input_size, input_size)
    side = max(h, w)
    post = PostSpec(smooth="box", pad="zeros", cascade=((5, 5), (7, 3)), align_corners=False,
                    score_fraction=0.001, upsample=(side, side), crop=(h, w) if (h, w) != (side, side) else None)
    hidden = int(fwd["input.weight"].shape[0]) if "input.weight" in fwd else shape["dim"]
    try:
        spec = detector_spec("fbft", name, "layernorm", input_size=input_size, layers=LAYERS, post=post,
                             top_k=max(1, int(h * w * 0.001)), head=dict(tap_norm=True, hidden=hidden))
        detector = build_detector(spec)
    except ValueError as exc:
        raise ArtifactError(f"{what}: {exc}") from exc
    enc_timm = dinov2_to_timm(teacher, detector.backbone.grid_size, bool(detector.backbone.no_embed_class))
    tensors = backbone_tensors(detector, enc_timm, Path(weights).name)
    # edgead's forward student maps block 7 -> 11 and its backward student 11 -> 7.
    to_7_11, to_11_7 = (fwd, bwd) if as_trained else (bwd, fwd)
    tensors.update(_student(to_7_11, "forward_student", what))
    tensors.update(_student(to_11_7, "backward_student", what))
    return load_strict(detector, tensors, what)
