"""L2BT / FBFT (alex-costanzino/L2BT) student checkpoints + a DINOv2 teacher -> edgead FBFT detectors.

Layout: two files ``forward_net_*.pth`` and ``backward_net_*.pth``, each a ``FeatureProjectionMLP`` with
``input``, ``projection`` and ``output`` linear layers (GELU between; hidden width ``(in + out) // 2``); or one
file holding both under ``forward_net.`` / ``backward_net.``. The teacher is DINOv2 ViT-B/14 with registers
(torch hub ``dinov2_vitb14_reg``, not in the student files: pass its weights) tapped with
``get_intermediate_layers(x, [7, 11])``: blocks 7 and 11 (0-based), final norm applied, prefix tokens removed.

Honoured (checked against L2BT commit 13ab1f1 run with the DINOv2 hub code, see docs/import.md): the published
inference (``B_infer_VisA.py`` since "fixed layers order") reads ``middle_patch, last_patch = fe(rgb)`` = blocks
7, 11 and pairs them as training does: ``forward_net`` predicts block 11 from block 7, ``backward_net`` block 7
from block 11 (``pairing="trained"``, the default; ``pairing="reversed"`` reproduces the inference script before
that commit, which swapped them); the map multiplies the two L2 distances of normalised features. The hub teacher
``dinov2_vitb14_reg`` resizes its position table to the grid's size with antialiasing (``interpolate_offset=0``,
``interpolate_antialias=True``: rule ``dinov2-size-aa``; teachers without registers use the ``+0.1`` scale rule).
Then bilinear upsampling to the frame's long side, five 5x5 and three 7x7 box filters with zero padding, a center
crop to the frame and score = mean of the top ``int(0.1 % of the frame's pixels)``. Square padding (edge mode)
and the bicubic resize of the frame happen before the network, outside the graph.
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
PAIRINGS = ("trained", "reversed")
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
            frame: tuple[int, int] | None = None, pairing: str = "trained", pos_interp: str | None = None,
            **_: Any) -> Detector:
    """``sd`` is ``forward_net`` (or both nets); ``weights`` the DINOv2 teacher; ``frame`` the original (H, W).

    ``pairing``: ``trained`` (block 7 -> ``forward_net`` -> block 11, as L2BT trains and infers since its "fixed
    layers order" commit) or ``reversed`` (the older inference script's swap). ``pos_interp``: the teacher's
    position rule, by default that of the torch-hub model the weights belong to.
    """
    if pairing not in PAIRINGS:
        raise InputError(f"L2BT pairing must be one of {', '.join(PAIRINGS)}, found '{pairing}'")
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
    # torch hub: dinov2_vit*14_reg sets interpolate_offset=0 and antialias, the models without registers do not.
    rule = pos_interp or ("dinov2-size-aa" if shape["reg"] else "dinov2-offset")
    h, w = frame or (input_size, input_size)
    side = max(h, w)
    post = PostSpec(smooth="box", pad="zeros", cascade=((5, 5), (7, 3)), align_corners=False,
                    score_fraction=0.001, upsample=(side, side), crop=(h, w) if (h, w) != (side, side) else None)
    hidden = int(fwd["input.weight"].shape[0]) if "input.weight" in fwd else shape["dim"]
    try:
        spec = detector_spec("fbft", name, "layernorm", input_size=input_size, layers=LAYERS, post=post,
                             top_k=max(1, int(h * w * 0.001)), head=dict(tap_norm=True, hidden=hidden),
                             pos_interp=rule)
        detector = build_detector(spec)
    except ValueError as exc:
        raise ArtifactError(f"{what}: {exc}") from exc
    enc_timm = dinov2_to_timm(teacher, detector.backbone.grid_size, bool(detector.backbone.no_embed_class), rule)
    tensors = backbone_tensors(detector, enc_timm, Path(weights).name)
    # edgead's forward student maps block 7 -> 11 and its backward student 11 -> 7.
    to_7_11, to_11_7 = (fwd, bwd) if pairing == "trained" else (bwd, fwd)
    tensors.update(_student(to_7_11, "forward_student", what))
    tensors.update(_student(to_11_7, "backward_student", what))
    return load_strict(detector, tensors, what)
