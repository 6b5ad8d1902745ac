"""Reading camera frames and fitting them to a detector's input: the one shared, tested function.

Resize and center-crop of a raw frame stay outside the exported graph; every runtime, the calibration readers
and ``fit`` call ``prepare`` so the pixels a model sees are the same everywhere. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgead.errors import InputError

if TYPE_CHECKING:
    from edgead.spec import DetectorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3).

    Grayscale is replicated to three channels, RGBA drops alpha, 16-bit is scaled to 8 bits. A file that is not
    a readable image raises ``InputError`` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"expected an image file, found nothing at {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise InputError(f"expected an image, found an empty file: {p}")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"expected a readable image (png, jpg, bmp, tif), found a corrupt or unknown file: {p}")
    return to_rgb8(img, str(p), bgr=True)


def to_rgb8(img: np.ndarray, name: str = "image", bgr: bool = False) -> np.ndarray:
    """Convert an array of any common layout (gray, gray+alpha, BGR/RGB, BGRA/RGBA; 8/16-bit, float) to RGB uint8."""
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
        img = img.astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if img.size and (np.nanmin(img) < 0.0 or np.nanmax(img) > 1.0):
            raise InputError(f"expected a float image with values in [0, 1], found range "
                             f"[{np.nanmin(img):.3g}, {np.nanmax(img):.3g}] in {name}")
        img = np.round(np.nan_to_num(img) * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"expected an 8- or 16-bit image, found dtype {img.dtype} in {name}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise InputError(f"expected an image of shape (H, W) or (H, W, C), found {img.shape} in {name}")
    c = img.shape[2]
    if c == 1:
        out = np.repeat(img, 3, axis=2)
    elif c == 2:  # gray + alpha
        out = np.repeat(img[:, :, :1], 3, axis=2)
    elif c in (3, 4):
        out = img[:, :, :3]
        if bgr:
            out = out[:, :, ::-1]
    else:
        raise InputError(f"expected 1, 3 or 4 channels, found {c} in {name}")
    return np.ascontiguousarray(out)


def resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize to (H, W): area averaging when shrinking, bilinear when enlarging, nearest for masks."""
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    elif h <= img.shape[0] and w <= img.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    out = cv2.resize(img, (w, h), interpolation=interp)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    top = (img.shape[0] - h) // 2
    left = (img.shape[1] - w) // 2
    return img[top : top + h, left : left + w]


def prepare(img: np.ndarray, spec: DetectorSpec, nearest: bool = False) -> np.ndarray:
    """Fit one frame (or mask) to the detector input: resize to ``spec.resize`` (or the input size), center-crop."""
    target = spec.resize or spec.input_size
    out = center_crop(resize(img, target, nearest=nearest), spec.input_size)
    return np.ascontiguousarray(out)


def load_batch(paths: list[str | Path] | list[Path], spec: DetectorSpec) -> np.ndarray:
    """Read and prepare images into one uint8 (N, H, W, 3) batch."""
    h, w = spec.input_size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = prepare(read_image(p), spec)
    return out


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; an empty or missing folder is an ``InputError``."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"expected a folder of images, found no folder at {d}")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"expected image files ({', '.join(IMAGE_SUFFIXES)}) in {d}, found none")
    return files


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG/JPG by suffix)."""
    ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]) if rgb.ndim == 3 else rgb)
    if not ok:
        raise InputError(f"could not write image to {path}")
