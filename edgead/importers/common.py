"""Helpers shared by the importers: DINOv2 encoders in timm layout, backbone matching, strict loading."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgead.errors import ArtifactError
from edgead.models.backbone import BACKBONES
from edgead.models.detector import Detector
from edgead.models.weights import rename_dinov2_keys


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from every key when all keys carry it."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def sub_dict(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with it removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def unchunk_blocks(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 with ``block_chunks > 0`` names blocks ``blocks.<chunk>.<i>.``; flatten to ``blocks.<i>.``."""
    chunked = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
    if not any(chunked.match(k) for k in sd):
        return sd
    return {chunked.sub(r"blocks.\2.", k): v for k, v in sd.items()}


def encoder_shape(enc: dict[str, torch.Tensor], what: str) -> dict[str, int]:
    """Patch size, width, depth and register tokens of a DINOv2/timm encoder state dict."""
    need = ("patch_embed.proj.weight", "cls_token", "pos_embed")
    missing = [k for k in need if k not in enc]
    if missing:
        raise ArtifactError(f"{what}: the encoder lacks {', '.join(missing)}; is the file complete?")
    proj = enc["patch_embed.proj.weight"]
    depth = 1 + max(int(m.group(1)) for k in enc if (m := re.match(r"blocks\.(\d+)\.", k)))
    reg = enc.get("register_tokens", enc.get("reg_token"))
    return {"patch": int(proj.shape[-1]), "dim": int(proj.shape[0]), "depth": depth,
            "reg": int(reg.shape[1]) if reg is not None else 0,
            "layer_scale": int(any(k.endswith("ls1.gamma") for k in enc))}


def match_backbone(shape: dict[str, int], what: str, name: str | None = None) -> str:
    """The edgead backbone with ``shape`` (or check ``name`` against it)."""
    def fits(cfg: Any) -> bool:
        return (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.reg_tokens, int(cfg.layer_scale is not None)) == (
            shape["patch"], shape["dim"], shape["depth"], shape["reg"], shape["layer_scale"])

    if name is not None:
        if name not in BACKBONES:
            raise ArtifactError(f"backbone must be one of {', '.join(BACKBONES)}, found '{name}'")
        if not fits(BACKBONES[name]):
            raise ArtifactError(f"{what}: the encoder (patch {shape['patch']}, width {shape['dim']}, depth "
                                f"{shape['depth']}, {shape['reg']} register tokens) does not fit backbone '{name}'")
        return name
    for key, cfg in BACKBONES.items():
        if fits(cfg):
            return key
    raise ArtifactError(f"{what}: no edgead backbone has patch {shape['patch']}, width {shape['dim']}, depth "
                        f"{shape['depth']} and {shape['reg']} register tokens; pass --backbone")


#: How an original resizes its stored position table to the grid of its input, by name (recorded in the spec as
#: ``pos_interp``). Each is computed once at import for the detector's fixed grid, so the exported graph holds the
#: table exactly as the original computes it at run time.
POS_RULES = {
    # DINOv2's own code with interpolate_offset=0.1, interpolate_antialias=False (hub models without registers,
    # and the copy vendored by the original Dinomaly for every encoder): bicubic by scale (g + 0.1) / M.
    "dinov2-offset": "bicubic, scale factor (grid + 0.1) / M, no antialiasing",
    # DINOv2 hub models with registers (dinov2_vit*14_reg: interpolate_offset=0, interpolate_antialias=True),
    # the teacher L2BT loads: bicubic to size (g, g) with antialiasing.
    "dinov2-size-aa": "bicubic to the grid size, antialiased",
    # timm with dynamic_img_size=True as anomalib runs it (resample_abs_pos_embed with antialias patched off).
    "timm-size": "bicubic to the grid size, no antialiasing",
}


def resize_pos_table(patch: torch.Tensor, grid: tuple[int, int], rule: str) -> torch.Tensor:
    """Patch position embeddings ``(1, M*M, C)`` resized to ``grid`` by ``rule`` (one of ``POS_RULES``).

    Every rule returns the table unchanged when it already has the grid's (square) size, as DINOv2 and timm do.
    Returns ``(1, gh*gw, C)`` float32.
    """
    if rule not in POS_RULES:
        raise ArtifactError(f"position interpolation must be one of {', '.join(POS_RULES)}, found '{rule}'")
    patch = patch.float()
    n, dim = patch.shape[1], patch.shape[2]
    side = int(math.sqrt(n))
    if side * side != n:
        raise ArtifactError(f"expected a square table of patch position embeddings, found {n} positions")
    gh, gw = grid
    if n == gh * gw and gh == gw:
        return patch
    table = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule == "dinov2-offset":
        # DINOv2 names dim 2 of the image "w", so its (w0, h0) factors apply to (dim 2, dim 3) = (gh, gw).
        out = F.interpolate(table, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic",
                            antialias=False)
    else:
        out = F.interpolate(table, size=(gh, gw), mode="bicubic", antialias=rule == "dinov2-size-aa")
    if tuple(out.shape[-2:]) != (gh, gw):
        raise ArtifactError(f"position interpolation gave a {tuple(out.shape[-2:])} grid, expected {grid}")
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)


def dinov2_pos_embed(pos: torch.Tensor, grid: tuple[int, int], rule: str = "dinov2-offset") -> torch.Tensor:
    """DINOv2 ``pos_embed`` ``(1, 1 + M*M, C)`` (class position first) -> patch positions for ``grid``."""
    return resize_pos_table(pos[:, 1:], grid, rule)


def dinov2_to_timm(
    enc: dict[str, torch.Tensor], grid: tuple[int, int], no_embed_class: bool, rule: str = "dinov2-offset"
) -> dict[str, torch.Tensor]:
    """An original DINOv2 encoder state dict in timm's layout for a fixed ``grid`` (position table precomputed)."""
    enc = rename_dinov2_keys(unchunk_blocks(dict(enc)))
    pos = enc["pos_embed"]
    patch_pos = dinov2_pos_embed(pos, grid, rule)
    if no_embed_class:
        # timm adds positions to patches only; the class position is folded into the class token once.
        enc["cls_token"] = enc["cls_token"] + pos[:, :1]
        enc["pos_embed"] = patch_pos
    else:
        enc["pos_embed"] = torch.cat([pos[:, :1].float(), patch_pos], dim=1)
    return enc


def timm_to_detector(
    enc: dict[str, torch.Tensor], grid: tuple[int, int], no_embed_class: bool, rule: str
) -> dict[str, torch.Tensor]:
    """A timm ViT encoder state dict for a fixed ``grid``: the position table resized by ``rule`` once, and the
    class position (if the table has one) placed the way edgead's backbone adds it."""
    enc = rename_dinov2_keys(dict(enc))
    pos = enc["pos_embed"]
    n = pos.shape[1]
    side = int(math.sqrt(n))
    prefix = 0 if side * side == n else 1
    patch_pos = resize_pos_table(pos[:, prefix:], grid, rule)
    cls_pos = pos[:, :1].float() if prefix else torch.zeros_like(pos[:, :1], dtype=torch.float32)
    if no_embed_class:
        if prefix:
            enc["cls_token"] = enc["cls_token"] + cls_pos
        enc["pos_embed"] = patch_pos
    else:
        enc["pos_embed"] = torch.cat([cls_pos, patch_pos], dim=1)
    return enc


def load_strict(detector: Detector, tensors: dict[str, torch.Tensor], what: str) -> Detector:
    """Load ``tensors`` (detector keys) into ``detector``; every tensor must be there with the right shape."""
    own = detector.state_dict()
    missing = [k for k in own if k not in tensors]
    if missing:
        raise ArtifactError(f"{what}: missing {len(missing)} tensors the detector needs (first: "
                            f"{', '.join(missing[:3])}); is the checkpoint truncated or for another layout?")
    for key, value in tensors.items():
        if key not in own:
            raise ArtifactError(f"{what}: tensor '{key}' has no place in the detector")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ArtifactError(f"{what}: tensor '{key}' has shape {tuple(value.shape)}, the detector expects "
                                f"{tuple(own[key].shape)}; does the checkpoint fit the chosen backbone and size?")
    detector.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return detector.eval()


def backbone_tensors(detector: Detector, enc_timm: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Detector ``backbone.*`` tensors taken from a timm-layout encoder (blocks past the deepest tap dropped)."""
    out = {}
    for key in detector.backbone.state_dict():
        if key not in enc_timm:
            raise ArtifactError(f"{what}: the encoder lacks '{key}'")
        out[f"backbone.{key}"] = enc_timm[key]
    return out


def rename(sd: dict[str, torch.Tensor], mapping: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    """Apply ``{source: target}``; every source tensor must be mapped (an unknown tensor is refused)."""
    unknown = sorted(set(sd) - set(mapping))
    if unknown:
        raise ArtifactError(f"{what}: {len(unknown)} tensors edgead does not know how to use (first: "
                            f"{', '.join(unknown[:3])}); the checkpoint has parts this importer does not reproduce")
    return {mapping[k]: v for k, v in sd.items()}


def file_name(path: str | Path) -> str:
    return Path(path).name
