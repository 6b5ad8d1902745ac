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


def dinov2_pos_embed(pos: torch.Tensor, grid: tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """Patch position embeddings resized as DINOv2's ``interpolate_pos_encoding`` does at run time.

    ``pos`` is ``(1, 1 + M*M, C)`` with the class position first. DINOv2 passes ``scale_factor=(g + offset) / M``
    (not a size) to bicubic interpolation without antialiasing, so the sample positions follow that factor; the
    table is returned unchanged when the grid already matches. Returns ``(1, gh*gw, C)``.
    """
    patch = pos[:, 1:].float()
    n, dim = patch.shape[1], patch.shape[2]
    side = int(math.sqrt(n))
    if side * side != n:
        raise ArtifactError(f"expected a square table of patch position embeddings, found {n} positions")
    gh, gw = grid
    if n == gh * gw and gh == gw:
        return patch
    table = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # DINOv2 names dim 2 of the image "w", so its (w0, h0) factors apply to (dim 2, dim 3) = (gh, gw).
    scale = ((gh + offset) / side, (gw + offset) / side)
    out = F.interpolate(table, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (gh, gw):
        raise ArtifactError(f"DINOv2 position interpolation gave a {tuple(out.shape[-2:])} grid, expected {grid}")
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)


def dinov2_to_timm(
    enc: dict[str, torch.Tensor], grid: tuple[int, int], no_embed_class: bool
) -> dict[str, torch.Tensor]:
    """An original DINOv2 encoder state dict in timm's layout for a fixed ``grid`` (position table precomputed)."""
    enc = rename_dinov2_keys(unchunk_blocks(dict(enc)))
    pos = enc["pos_embed"]
    patch_pos = dinov2_pos_embed(pos, grid)
    if no_embed_class:
        # timm adds positions to patches only; the class position is folded into the class token once.
        enc["cls_token"] = enc["cls_token"] + pos[:, :1]
        enc["pos_embed"] = patch_pos
    else:
        enc["pos_embed"] = torch.cat([pos[:, :1].float(), patch_pos], dim=1)
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
