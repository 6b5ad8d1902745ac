"""Seeded weights for golden fixtures: one tensor per key, a function of (seed, key, shape) only.

Used by ``make_golden.py`` (in a side venv, on the originals' own modules) and by the tests (to regenerate the
real-size checkpoints, too big to commit, from ``keys.json``). Pure torch, no edgead import. Values have a
realistic scale so every layer matters: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1), norm weights and layer
scales around 1, tokens and position tables ~ N(0, 0.5).
"""

from __future__ import annotations

import zlib

import torch


def seeded_tensor(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "gamma" or (len(shape) == 1 and "norm" in key and leaf == "weight"):
        return 1.0 + 0.2 * x
    if len(shape) == 1:
        return 0.1 * x
    if leaf in ("pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token"):
        return 0.5 * x
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return x / fan_in**0.5


def seeded_state(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: seeded_tensor(seed, k, tuple(s)) for k, s in shapes.items()}
