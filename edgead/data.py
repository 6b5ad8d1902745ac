"""Data sets on disk: plain image folders and the MVTec AD category layout.

A category folder looks like ``train/good/*.png``, ``test/<type>/*.png`` and
``ground_truth/<type>/<stem>_mask.png``; a plain folder of images is accepted for training too. This module
finds the files, pairs test images with their masks and splits a hold-out set; it imports no torch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgead.errors import InputError
from edgead.imageio import IMAGE_SUFFIXES, image_size, list_images, prepare

if TYPE_CHECKING:
    from edgead.spec import DetectorSpec

GOOD = "good"


@dataclass(frozen=True)
class TestItem:
    """One test image: ``label`` is 0 for good, 1 for a defect; ``mask`` is None for good images."""

    __test__ = False  # not a pytest test class despite the name

    path: Path
    label: int
    defect: str
    mask: Path | None


def _existing_dir(data: str | Path) -> Path:
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"expected a data folder, found no folder at {root}")
    return root


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def _looks_like_mvtec(folder: Path) -> bool:
    return (folder / "test").is_dir() or (folder / "ground_truth").is_dir() or (folder / "train").is_dir()


def find_train_images(data: str | Path) -> list[Path]:
    """Normal training images: ``train/good/`` of an MVTec category, else the images directly in ``data``."""
    root = _existing_dir(data)
    good = root / "train" / GOOD
    if good.is_dir():
        return list_images(good)
    if _has_images(root):
        return list_images(root)
    if _looks_like_mvtec(root):
        raise InputError(
            f"expected an MVTec category with train/good/ of normal images, found no train/good in {root}"
        )
    suffixes = ", ".join(IMAGE_SUFFIXES)
    raise InputError(f"expected image files ({suffixes}) or train/good/ in {root}, found none")


def _mask_for(root: Path, defect: str, image: Path) -> Path:
    folder = root / "ground_truth" / defect
    for suffix in (".png", image.suffix):
        candidate = folder / f"{image.stem}_mask{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(
        f"expected a mask for defect image {image} at {folder / (image.stem + '_mask.png')}, found none"
    )


def test_items(data: str | Path) -> list[TestItem]:
    """Test images of an MVTec category with labels and masks, sorted by defect type then file name."""
    root = _existing_dir(data)
    test = root / "test"
    if not test.is_dir():
        raise InputError(f"expected an MVTec category with a test/ folder, found no test/ in {root}")
    items: list[TestItem] = []
    for sub in sorted(p for p in test.iterdir() if p.is_dir()):
        for image in list_images(sub):
            if sub.name == GOOD:
                items.append(TestItem(image, 0, GOOD, None))
            else:
                items.append(TestItem(image, 1, sub.name, _mask_for(root, sub.name, image)))
    if not items:
        raise InputError(f"expected test/<type>/ folders of images in {root}, found none")
    return items


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) uint8 in {0, 1}: any nonzero pixel is defect."""
    p = Path(path)
    data = np.fromfile(str(p), dtype=np.uint8) if p.is_file() else np.empty(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if img is None:
        raise InputError(f"expected a readable mask image, found a missing, empty or corrupt file: {p}")
    return (img > 0).astype(np.uint8)


def _checked_mask(path: Path, image: Path) -> np.ndarray:
    """The mask at ``path``, refused unless it has the size of its ``image``."""
    mask = read_mask(path)
    size = image_size(image)
    if mask.shape[:2] != size:
        raise InputError(f"expected the mask {path} to have its image's size {size[0]}x{size[1]}, found "
                         f"{mask.shape[0]}x{mask.shape[1]}; a stretched mask would score the wrong pixels")
    return mask


def read_masks(items: list[TestItem]) -> list[np.ndarray]:
    """Masks of ``items`` at their images' own resolution, never resized: (H_i, W_i) uint8 in {0, 1} each.

    A good image gets an all-zero mask of its own size (read from the file header). ``edgead eval`` scores these
    against anomaly maps brought onto each frame (``edgead.geometry.map_to_frame``).
    """
    return [np.zeros(image_size(it.path), np.uint8) if it.mask is None else _checked_mask(it.mask, it.path)
            for it in items]


def load_masks(items: list[TestItem], spec: DetectorSpec) -> np.ndarray:
    """Masks of ``items`` shrunk to the detector input like the images: (N, H, W) uint8 in {0, 1}.

    Nearest-neighbour resize and centre crop (``prepare``): a defect thinner than the resize step can vanish, so
    pixel metrics should use ``read_masks`` instead; this stays for callers that compare engines at the model's
    resolution.
    """
    h, w = spec.input_size
    out = np.zeros((len(items), h, w), dtype=np.uint8)
    for i, item in enumerate(items):
        if item.mask is not None:
            out[i] = prepare(_checked_mask(item.mask, item.path), spec, nearest=True)
    return out


def split_holdout(
    paths: list[Path], fraction: float = 0.2, min_holdout: int = 2, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into (train, holdout), deterministic for a seed; both keep the input order.

    The hold-out gets ``round(fraction * n)`` items, at least ``min_holdout``; training keeps at least one.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"expected a hold-out fraction in [0, 1), found {fraction}")
    n = len(paths)
    k = max(min_holdout, int(round(fraction * n)))
    if n - k < 1:
        raise InputError(f"expected more than {k} images to keep {k} for hold-out, found {n}")
    chosen = set(random.Random(seed).sample(range(n), k))
    train = [p for i, p in enumerate(paths) if i not in chosen]
    holdout = [p for i, p in enumerate(paths) if i in chosen]
    return train, holdout
