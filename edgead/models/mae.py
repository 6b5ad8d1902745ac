"""The DyT masked-autoencoder detector (family ``mae``): pixel reconstruction, trained from scratch.

- Patch embedding with a **fixed 2-D sinusoidal position embedding** (a buffer, never trained).
- An **asymmetric encoder-decoder**: a deep ViT encoder (16 blocks in the published configuration) and a shallow
  decoder (2 blocks) whose blocks self-attend over the patch grid and **cross-attend to a feature pyramid** of
  encoder blocks (``spec.layers``), then predict each patch's pixels.
- **Block masking during training only**: ``mask_ratio`` of the patches, masked in contiguous ``mask_block`` x
  ``mask_block`` blocks; the encoder sees the visible patches only and the decoder fills the rest from a learnt
  mask token. At inference the whole image is encoded and no randomness is left in the graph.
- Anomaly map = ``mse_weight * squared error + ssim_weight * (1 - local SSIM)`` between the image and its
  reconstruction (both in [0, 1]; channel means), smoothed; image score = mean of the top-k pixels. The SSIM map is
  kornia's (``kornia.metrics.ssim``), traced into the exported graph like everything else.

Every norm (encoder, decoder, pyramid) is LayerNorm or DyT, chosen at construction by ``spec.norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from edgead.errors import ConfigError, EdgeadError
from edgead.models.norms import norm_layer
from edgead.models.postprocess import PostProcess
from edgead.spec import DetectorSpec


@dataclass(frozen=True)
class MAEConfig:
    """Widths and depths of one MAE configuration; ``spec.head`` may override any field by name."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0


#: Named configurations (``spec.backbone``). ``mae_patch16`` is the seed's: depth 16 / 2 at 256x256, with widths
#: chosen so that its FLOPs match the seed's ~2.94 G (see ``edgead bench norms --family mae`` and docs/mae.md).
MAE_CONFIGS: dict[str, MAEConfig] = {
    "mae_patch16": MAEConfig(16, 120, 16, 4, 132, 2, 4),
    "mae_small_patch16": MAEConfig(16, 96, 8, 4, 96, 2, 4),
    "mae_tiny_test_patch16": MAEConfig(16, 32, 4, 2, 32, 1, 2),
}

#: ``spec.head`` keys with their defaults (width overrides are the MAEConfig field names); ``mask_block`` 0 means a
#: quarter of the shorter grid side (4 patches at 256x256 / patch 16).
HEAD_DEFAULTS: dict[str, Any] = dict(
    mask_ratio=0.75, mask_block=0, ssim_window=11, loss_ssim_weight=1.0, map_mse_weight=1.0, map_ssim_weight=1.0,
)


def mae_config(spec_or_name: DetectorSpec | str) -> MAEConfig:
    """The configuration named by ``spec.backbone`` with ``spec.head``'s width overrides applied."""
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.backbone
    if name not in MAE_CONFIGS:
        raise ConfigError(f"MAE configuration must be one of {', '.join(MAE_CONFIGS)}, found '{name}'")
    cfg = MAE_CONFIGS[name]
    if isinstance(spec_or_name, DetectorSpec):
        fields = {k: v for k, v in spec_or_name.head.items() if k in MAEConfig.__dataclass_fields__}
        cfg = replace(cfg, **fields)
    return cfg


def pyramid_layers(depth: int) -> tuple[int, ...]:
    """Default pyramid taps: the ends of the encoder's four quarters (0-based), e.g. 3, 7, 11, 15 for depth 16."""
    return tuple(sorted({max(0, (depth * q) // 4 - 1) for q in (1, 2, 3, 4)}))


def check_geometry(input_size: tuple[int, int], patch: int, mask_ratio: float) -> tuple[int, int]:
    """The patch grid for ``input_size``; refuses sizes that are not whole patch grids and bad mask ratios."""
    h, w = input_size
    if h < patch or w < patch:
        raise EdgeadError(f"MAE input size must be at least one {patch}x{patch} patch, found {h}x{w}")
    if h % patch or w % patch:
        raise EdgeadError(f"MAE input size must be a multiple of the patch size {patch}, found {h}x{w} "
                          f"(try {max(patch, h // patch * patch)}x{max(patch, w // patch * patch)})")
    if not 0.0 < mask_ratio < 1.0:
        raise EdgeadError(f"mask ratio must be in (0, 1), found {mask_ratio}")
    grid = (h // patch, w // patch)
    masked = round(mask_ratio * grid[0] * grid[1])
    if masked < 1 or masked >= grid[0] * grid[1]:
        raise EdgeadError(f"a {grid[0]}x{grid[1]} patch grid at mask ratio {mask_ratio} masks {masked} of "
                          f"{grid[0] * grid[1]} patches; training needs at least one masked and one visible patch")
    return grid


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(1, h*w, dim)``: half the channels encode the row, half the
    column, each as sines and cosines of geometric frequencies (base 10000)."""
    if dim % 4:
        raise EdgeadError(f"the sinusoidal position embedding needs a width divisible by 4, found {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1)[None].to(torch.float32)


def block_mask(batch: int, grid: tuple[int, int], ratio: float, block: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Boolean ``(batch, h*w)`` masks (True = masked) with exactly ``round(ratio * h*w)`` masked patches each.

    The grid is tiled by ``block`` x ``block`` squares (smaller at the right and bottom edges); whole squares are
    masked in random order while they fit, and the last one is masked in part (row-major) to hit the count.
    """
    h, w = grid
    target = round(ratio * h * w)
    tiles = [(r, c) for r in range(0, h, block) for c in range(0, w, block)]
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        count = 0
        for t in torch.randperm(len(tiles), generator=generator).tolist():
            r, c = tiles[t]
            cells = [(i, j) for i in range(r, min(r + block, h)) for j in range(c, min(c + block, w))]
            for i, j in cells[: target - count]:
                masks[b, i, j] = True
            count = min(target, count + len(cells))
            if count == target:
                break
    return masks.reshape(batch, h * w)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (queries) over ``memory`` (keys and values)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise EdgeadError(f"decoder width {dim} must be divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        hd = c // self.num_heads
        q = self.q(x).reshape(n, t, self.num_heads, hd).transpose(1, 2)
        k, v = self.kv(memory).reshape(n, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class DecoderBlock(nn.Module):
    """Self-attention over the patch grid, cross-attention to the encoder pyramid, MLP; pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm: Any) -> None:
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
        self.norm_cross = norm(dim)
        self.cross = CrossAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.block.attn(self.block.norm1(x))
        x = x + self.cross(self.norm_cross(x), memory)
        return x + self.block.mlp(self.block.norm2(x))


class ReconstructionScore(nn.Module):
    """Image and reconstruction -> ``(scores, maps)``: squared error and 1 - local SSIM, smoothed, top-k score.

    A module of its own (named ``post`` in the detector) so that INT8 quantisers keep it in float, as they keep
    every family's postprocessing.
    """

    def __init__(self, post: PostProcess, ssim_window: int, mse_weight: float, ssim_weight: float) -> None:
        super().__init__()
        self.post, self.ssim_window = post, ssim_window
        self.mse_weight, self.ssim_weight = mse_weight, ssim_weight

    def pixel_map(self, rec: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
        """Unsmoothed per-pixel anomaly map ``(N, 1, H, W)``; both images ``(N, 3, H, W)`` in [0, 1]."""
        rec = rec.clamp(0.0, 1.0)
        err = ((rec - x01) ** 2).mean(1, keepdim=True)
        dissim = 1.0 - kornia_ssim(rec, x01, self.ssim_window).mean(1, keepdim=True)
        return self.mse_weight * err + self.ssim_weight * dissim

    def forward(self, rec: torch.Tensor, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.post.smooth(self.pixel_map(rec, x01))
        return self.post.image_score(m), m[:, 0]


class MAEDetector(nn.Module):
    """uint8 ``(N, H, W, 3)`` RGB -> ``scores (N,)``, ``maps (N, H, W)``; trains end to end (no frozen part).

    ``loss(images, phase)`` is the training objective with a fresh block mask; ``forward`` is the unmasked
    inference graph that is exported.
    """

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        head = {**HEAD_DEFAULTS, **spec.head}
        cfg = mae_config(spec)
        self.spec, self.cfg = spec, cfg
        self.grid = check_geometry(spec.input_size, cfg.patch_size, float(head["mask_ratio"]))
        self.mask_ratio = float(head["mask_ratio"])
        self.mask_block = int(head["mask_block"]) or max(1, min(self.grid) // 4)
        self.ssim_window = int(head["ssim_window"])
        self.loss_ssim_weight = float(head["loss_ssim_weight"])
        if min(spec.layers) < 0 or max(spec.layers) >= cfg.depth:
            raise ConfigError(f"MAE pyramid layers must be in 0..{cfg.depth - 1}, found {list(spec.layers)}")
        self.layers = tuple(sorted(set(spec.layers)))
        norm = norm_layer(spec.norm)
        d, dd, p = cfg.embed_dim, cfg.decoder_dim, cfg.patch_size

        self.patch_embed = PatchEmbed(spec.input_size, p, 3, d)
        self.register_buffer("pos_embed", sincos_pos_embed(d, self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(cfg.depth))
        self.norm = norm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(dd, self.grid), persistent=False)
        self.pyramid_norms = nn.ModuleList(norm(d) for _ in self.layers)
        self.pyramid_proj = nn.ModuleList(nn.Linear(d, dd) for _ in self.layers)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(dd, cfg.decoder_heads, cfg.mlp_ratio, norm)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, p * p * 3)
        self.post = ReconstructionScore(PostProcess(spec.post, spec.map_size, spec.top_k), int(head["ssim_window"]),
                                        float(head["map_mse_weight"]), float(head["map_ssim_weight"]))
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("in_shift", mean, persistent=False)
        self.register_buffer("in_scale", 1.0 / std, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # --- the network -------------------------------------------------------------------------------------------
    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float32 NCHW in [0, 1] (the reconstruction target)."""
        return images.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)

    def encode(self, x01: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the patches (only the ``keep`` indices ``(N, V)`` when given); returns final tokens, pyramid."""
        t = self.patch_embed((x01 - self.in_shift) * self.in_scale) + self.pos_embed
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        feats = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in self.layers:
                feats.append(t)
        return self.norm(t), feats

    def decode(self, tokens: torch.Tensor, feats: list[torch.Tensor], keep: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Decoder tokens for the whole grid -> patch pixels ``(N, h*w, p*p*3)``."""
        x = self.decoder_embed(tokens)
        if keep is not None:
            n, dd = x.shape[0], x.shape[-1]
            full = self.mask_token.expand(n, self.grid[0] * self.grid[1], dd).clone()
            x = full.scatter(1, keep[..., None].expand(-1, -1, dd), x)
        x = x + self.decoder_pos_embed
        levels = zip(self.pyramid_norms, self.pyramid_proj, feats, strict=True)
        memory = torch.cat([proj(nrm(f)) for nrm, proj, f in levels], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x, memory)
        return self.decoder_pred(self.decoder_norm(x))

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, h*w, p*p*3)`` -> ``(N, 3, H, W)``."""
        p, (h, w) = self.cfg.patch_size, self.grid
        x = patches.reshape(patches.shape[0], h, w, p, p, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], 3, h * p, w * p)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, h*w, p*p*3)`` (the inverse of ``unpatchify``)."""
        p, (h, w) = self.cfg.patch_size, self.grid
        x = x.reshape(x.shape[0], 3, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(x.shape[0], h * w, p * p * 3)

    def reconstruct(self, x01: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructed image ``(N, 3, H, W)`` from the whole image, or from its visible patches (``mask``)."""
        keep = None
        if mask is not None:
            keep = torch.nonzero(~mask)[:, 1].reshape(mask.shape[0], -1)
        tokens, feats = self.encode(x01, keep)
        return self.unpatchify(self.decode(tokens, feats, keep))

    # --- training ----------------------------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, phase: str = "pretrain", generator: torch.Generator | None = None
             ) -> torch.Tensor:
        """MSE on the masked patches; in phase ``pretrain`` plus ``loss_ssim_weight * (1 - SSIM)`` of the whole
        reconstruction (context); in phase ``finetune`` the MSE only."""
        x01 = self.pixels(images)
        mask = block_mask(x01.shape[0], self.grid, self.mask_ratio, self.mask_block, generator).to(x01.device)
        rec = self.reconstruct(x01, mask)
        per_patch = ((self.patchify(rec) - self.patchify(x01)) ** 2).mean(-1)
        loss = (per_patch * mask).sum() / mask.sum()
        if phase == "pretrain" and self.loss_ssim_weight > 0:
            loss = loss + self.loss_ssim_weight * (1.0 - kornia_ssim(rec, x01, self.ssim_window).mean())
        elif phase not in ("pretrain", "finetune"):
            raise ValueError(f"training phase must be 'pretrain' or 'finetune', found '{phase}'")
        return loss

    # --- inference ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x01 = self.pixels(images)
        return self.post(self.reconstruct(x01), x01)


def flops_estimate(cfg: MAEConfig, grid: tuple[int, int], layers: int) -> float:
    """Matrix-product FLOPs (2 per multiply-add) of the unmasked network: a quick guide for choosing widths."""
    t, d, dd = grid[0] * grid[1], cfg.embed_dim, cfg.decoder_dim
    p3 = cfg.patch_size**2 * 3
    enc = cfg.depth * (12 * t * d * d + 2 * t * t * d) + t * p3 * d
    mem = layers * t
    dec = cfg.decoder_depth * (12 * t * dd * dd + 2 * t * t * dd + 2 * t * dd * dd + 2 * mem * dd * dd
                               + 2 * t * mem * dd) + t * d * dd + layers * t * d * dd + t * dd * p3
    return 2.0 * math.fsum([enc, dec])
