"""Loading backbone weights from local files: timm layout or the original DINOv2 layout.

Files are safetensors or torch pickles read with ``weights_only=True`` (no code execution). The original DINOv2
layout (``register_tokens``, ``mask_token``, class position inside ``pos_embed``) is mapped onto timm's, position
embeddings are resampled to the model's grid, and any remaining mismatch names the tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from edgead.errors import ArtifactError, InputError

_WRAPPERS = ("state_dict", "model", "teacher", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "teacher.backbone.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or torch file, unwrapped from common ``{'model': ...}`` containers.

    The file is opened once, its decompressed size checked against the importers' cap (``EDGEAD_IMPORT_MAX_BYTES``)
    before anything is inflated, and the tensors are read from that same open file.
    """
    from edgead.importers.ckpt import open_checked  # importers build on this module: import when called

    p = Path(path)
    if not p.is_file():
        raise InputError(f"expected a weights file, found nothing at {p}")
    with open_checked(p) as (p, f):
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load

                sd = load(f.read())
            else:
                sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, unsupported pickle content
            raise ArtifactError(f"expected a safetensors or torch weights file, could not read {p}: "
                                f"{str(exc).splitlines()[0][:200]}") from exc
    for key in _WRAPPERS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtifactError(f"expected a dictionary of tensors in {p}, found {type(sd).__name__}")
    return sd


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def rename_dinov2_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop what a backbone does not use (mask token, classifier head) and name registers as timm does."""
    sd = {k: v for k, v in sd.items() if k != "mask_token" and not k.startswith(("head.", "fc_norm."))}
    if "register_tokens" in sd:
        sd["reg_token"] = sd.pop("register_tokens")
    return sd


def to_timm_layout(sd: dict[str, torch.Tensor], vit: VisionTransformer) -> dict[str, torch.Tensor]:
    """Map a DINOv2 (original) or timm state dict onto ``vit``'s keys and grid."""
    sd = rename_dinov2_keys(_strip_prefixes(dict(sd)))
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3 and vit.pos_embed is not None:
        src_prefix = pos.shape[1] - _square_tokens(pos.shape[1])
        dst_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        if src_prefix == 1 and dst_prefix == 0 and "cls_token" in sd:
            # Original DINOv2: the class token's position lives in pos_embed; fold it into the token.
            sd["cls_token"] = sd["cls_token"] + pos[:, :1]
            pos = pos[:, 1:]
            src_prefix = 0
        n_src = pos.shape[1] - src_prefix
        n_dst = vit.pos_embed.shape[1] - dst_prefix
        if n_src != n_dst or src_prefix != dst_prefix:
            side = int(round(n_src**0.5))
            pos = resample_abs_pos_embed(pos, new_size=list(vit.patch_embed.grid_size), old_size=[side, side],
                                         num_prefix_tokens=src_prefix)
            if src_prefix > dst_prefix:
                pos = pos[:, src_prefix - dst_prefix:]
        sd["pos_embed"] = pos
    return sd


def _square_tokens(n: int) -> int:
    """The largest square count of patch tokens in a sequence of ``n`` (the rest are prefix tokens)."""
    for prefix in range(0, 6):
        side = int(round((n - prefix) ** 0.5))
        if side * side == n - prefix:
            return n - prefix
    return n


def load_backbone_weights(vit: VisionTransformer, path: str | Path, name: str = "backbone") -> None:
    """Load ``path`` into ``vit`` strictly: every backbone tensor must be present with the right shape.

    DyT's ``alpha`` may be absent (a LayerNorm checkpoint loads into a DyT model; alpha keeps its init).
    """
    sd = to_timm_layout(read_state_dict(path), vit)
    own = vit.state_dict()
    for key, tensor in sd.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise ArtifactError(
                f"weights file {Path(path).name}: tensor '{key}' has shape {tuple(tensor.shape)}, the {name} "
                f"backbone expects {tuple(own[key].shape)}; is the file for another architecture?"
            )
    missing = [k for k in own if k not in sd and not k.endswith(".alpha")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors (first: {', '.join(unexpected[:3])})")
        raise ArtifactError(f"weights file {Path(path).name} does not fit the {name} backbone: {'; '.join(parts)}")
    vit.load_state_dict(sd, strict=False)
