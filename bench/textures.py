"""Real texture photographs with synthetic defects, offline: an MVTec-layout set from scikit-image's photographs.

scikit-image ships a few real photographs inside its wheel (``skimage.data``: brick, grass and gravel are
512x512 grey-level texture photographs; nothing is downloaded). Each becomes a category: training and test
tiles are cut from disjoint bands of the photograph (top 60 % for ``train/good``, bottom 40 % for ``test``),
with random position, flips and quarter turns, and defects are painted on test tiles with edgead's own
generator (``edgead.synth.paint_defect``: scratch, spot, crack, missing, exact masks). This is the held-out
set of real textures that INT8 collapse was measured on (docs/int8.md). Needs ``pip install scikit-image``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgead.errors import InputError, require
from edgead.fsutil import atomic_dir
from edgead.synth import DEFECTS, paint_defect

PHOTOS = ("brick", "grass", "gravel")
TRAIN_BAND = 0.6


def _photo(name: str) -> np.ndarray:
    if name not in PHOTOS:
        raise InputError(f"expected a texture photograph in {', '.join(PHOTOS)}, found '{name}'")
    data = require("skimage.data", "dev", "the real-texture benchmark set")
    img = np.asarray(getattr(data, name)())
    return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)


def _tile(band: np.ndarray, tile: int, size: int, rng: np.random.Generator) -> np.ndarray:
    y = int(rng.integers(0, band.shape[0] - tile + 1))
    x = int(rng.integers(0, band.shape[1] - tile + 1))
    t = band[y : y + tile, x : x + tile]
    t = np.rot90(t, int(rng.integers(4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    return cv2.resize(np.ascontiguousarray(t), (size, size), interpolation=cv2.INTER_AREA)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(img[:, :, ::-1] if img.ndim == 3 else img)):
        raise InputError(f"could not write {path}")


def _write_test(root: Path, band: np.ndarray, tile: int, size: int, n_good: int, n_defect: int,
                seed: tuple[int, ...]) -> None:
    rng = np.random.default_rng([*seed, 1])
    for i in range(n_good):
        _write(root / "test" / "good" / f"{i:03d}.png", _tile(band, tile, size, rng))
    for d, defect in enumerate(DEFECTS):
        rng = np.random.default_rng([*seed, 2 + d])
        for i in range(n_defect):
            bad, mask = paint_defect(_tile(band, tile, size, rng), defect, rng)
            _write(root / "test" / defect / f"{i:03d}.png", bad)
            _write(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def make_textures(out: str | Path, photos: tuple[str, ...] = PHOTOS, size: int = 224, tile: int = 192,
                  n_train: int = 40, n_test_good: int = 20, n_test_defect: int = 5, seed: int = 0,
                  n_val_good: int = 0, n_val_defect: int = 0) -> Path:
    """Write ``out/<photo>/{train/good, test/good, test/<defect>, ground_truth/<defect>}``; returns ``out``.

    With ``n_val_good`` > 0 a labelled validation category ``out/<photo>_val`` (test/ and ground_truth/ only)
    is written too, for ``edgead compile --val``: the test band is then split in two halves side by side, the
    left one for validation and the right one for the test split, so no pixel is in both.
    """
    out = Path(out)
    for k, name in enumerate(photos):
        img = _photo(name)
        cut = int(TRAIN_BAND * img.shape[0])
        train_band, test_band = img[:cut], img[cut:]
        val_band = None
        if n_val_good > 0:
            half = test_band.shape[1] // 2
            val_band, test_band = test_band[:, :half], test_band[:, half:]
        if min(test_band.shape[:2]) < tile:
            raise InputError(f"expected tiles of at most {min(test_band.shape[:2])} px for {name}, found {tile}")
        with atomic_dir(out / name) as tmp:
            rng = np.random.default_rng([seed, k, 0])
            for i in range(n_train):
                _write(tmp / "train" / "good" / f"{i:03d}.png", _tile(train_band, tile, size, rng))
            _write_test(tmp, test_band, tile, size, n_test_good, n_test_defect, (seed, k))
        if val_band is not None:
            with atomic_dir(out / f"{name}_val") as tmp:
                _write_test(tmp, val_band, tile, size, n_val_good, n_val_defect, (seed, k, 7))
    return out
