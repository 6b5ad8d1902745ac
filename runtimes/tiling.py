"""Frames larger than the model input: cut into tiles, tile maps stitched back, the image score taken over the
stitched map. The one implementation of ``edgead.spec.TilePlan``; ``runtimes/c/edgead_tiling.c`` is its C twin
and is checked against it. Imports no torch (and no OpenCV).

Cutting: along each axis tiles start every ``tile - overlap`` pixels from 0, and the last tile is aligned to the
frame's edge (it may overlap its neighbour by more than ``overlap``); a frame exactly one tile long is one tile.
Nothing is padded or rescaled, so a tile is a plain view of the frame's pixels.

Stitching: along an axis, over the pixels two neighbouring tiles share, the earlier tile's weight falls linearly
from 1 to 0 and the later one's rises (``(i + 0.5) / shared`` at the i-th shared pixel); away from any neighbour a
tile's weight is 1. Each axis' weights are divided by their sum over the tiles covering that pixel, and a tile's 2-D
weight is the product of its y and x weights, so the weights of every frame pixel sum to exactly 1 (a constant map
stitches to the same constant) and the stitched map is a convex blend of the tile maps.

Score: the mean of the ``k`` largest stitched pixels, ``k = round(score_fraction * H * W)`` clipped to
``[1, TOPK_LIMIT]``, the graph's rule for its own map (``edgead.spec.top_k_for``); a NaN anywhere makes it NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgead.errors import InputError
from edgead.spec import TOPK_LIMIT, TilePlan


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one frame size lie: ``ys`` x ``xs`` tile origins (row-major order) and the normalised
    1-D blend weights ``wy[i]`` (tile row i, ``tile_h`` values) and ``wx[j]``."""

    frame: tuple[int, int]
    tile: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    wy: np.ndarray  # (len(ys), tile_h) float64
    wx: np.ndarray  # (len(xs), tile_w) float64

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def origins(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, in the order ``cut`` returns them."""
        return [(y, x) for y in self.ys for x in self.xs]


def tile_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Starts of the tiles along one axis of ``length`` pixels; the last one ends at the frame's edge."""
    if length < tile:
        raise InputError(f"expected a frame of at least one tile ({tile} px) along each axis, found {length} px")
    stride = tile - overlap
    n = -(-(length - tile) // stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(n))


def axis_weights(origins: tuple[int, ...], tile: int, length: int) -> np.ndarray:
    """Normalised 1-D blend weights ``(len(origins), tile)``: linear cross-fades over each shared span."""
    n = len(origins)
    raw = np.ones((n, tile), np.float64)
    ramp_pos = np.arange(tile, dtype=np.float64) + 0.5
    for i in range(1, n):
        shared = origins[i - 1] + tile - origins[i]
        if shared <= 0:
            continue
        rise = np.minimum(1.0, ramp_pos / shared)  # the later tile rises from its left edge
        raw[i] = np.minimum(raw[i], rise)
        raw[i - 1] = np.minimum(raw[i - 1], rise[::-1])  # the earlier one falls towards its right edge
    total = np.zeros(length, np.float64)
    for o, w in zip(origins, raw, strict=True):
        total[o : o + tile] += w
    return np.stack([w / total[o : o + tile] for o, w in zip(origins, raw, strict=True)])


def tile_grid(frame_size: tuple[int, int], plan: TilePlan) -> TileGrid:
    """The tiles and blend weights of a ``(H, W)`` frame under ``plan``."""
    h, w = int(frame_size[0]), int(frame_size[1])
    th, tw = plan.tile
    if h < th or w < tw:
        raise InputError(f"expected a frame of at least one tile ({th}x{tw}) for this tiled artifact, found {h}x{w}; "
                         f"use the full-frame path (edgead.imageio.prepare) for smaller frames")
    ys, xs = tile_origins(h, th, plan.overlap), tile_origins(w, tw, plan.overlap)
    return TileGrid((h, w), (th, tw), ys, xs, axis_weights(ys, th, h), axis_weights(xs, tw, w))


def cut(frames: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Tiles of a uint8 ``(N, H, W, 3)`` batch: ``(N * len(grid), th, tw, 3)``, frame by frame, row-major."""
    th, tw = grid.tile
    out = np.empty((frames.shape[0] * len(grid), th, tw, frames.shape[3]), frames.dtype)
    k = 0
    for f in frames:
        for y, x in grid.origins():
            out[k] = f[y : y + th, x : x + tw]
            k += 1
    return out


def stitch(tile_maps: np.ndarray, grid: TileGrid) -> np.ndarray:
    """One frame's ``(len(grid), th, tw)`` tile maps blended into its ``(H, W)`` float32 map."""
    if tile_maps.shape != (len(grid), *grid.tile):
        raise InputError(f"expected {len(grid)} tile maps of {grid.tile}, found {tile_maps.shape}")
    th, tw = grid.tile
    acc = np.zeros(grid.frame, np.float64)
    k = 0
    for i, y in enumerate(grid.ys):
        for j, x in enumerate(grid.xs):
            acc[y : y + th, x : x + tw] += (grid.wy[i][:, None] * grid.wx[j][None, :]) * tile_maps[k]
            k += 1
    return acc.astype(np.float32)


def frame_top_k(frame_size: tuple[int, int], score_fraction: float) -> int:
    """k of the stitched map's image score: the graph's rule, clipped to ``TOPK_LIMIT``."""
    return min(TOPK_LIMIT, max(1, int(round(score_fraction * frame_size[0] * frame_size[1]))))


def top_k_mean(amap: np.ndarray, k: int) -> float:
    """Mean of the ``k`` largest values (float64 sum); NaN when the map holds a NaN."""
    flat = np.asarray(amap, np.float32).reshape(-1)
    if np.isnan(flat).any():
        return float("nan")
    return float(np.partition(flat, flat.size - k)[flat.size - k :].astype(np.float64).mean())


def stitch_frames(tile_maps: np.ndarray, grid: TileGrid, score_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(N,)`` and maps ``(N, H, W)`` of N frames from their tiles' maps ``(N * len(grid), th, tw)``."""
    n = tile_maps.shape[0] // len(grid)
    maps = np.stack([stitch(tile_maps[i * len(grid) : (i + 1) * len(grid)], grid) for i in range(n)])
    k = frame_top_k(grid.frame, score_fraction)
    scores = np.array([top_k_mean(m, k) for m in maps], np.float32)
    return scores, maps
