"""Reading camera frames and fitting them to a detector's input: the one shared, tested function.

Resize and center-crop of a raw frame stay outside the exported graph; every runtime, the calibration readers
and ``fit`` call ``prepare`` so the pixels a model sees are the same everywhere. Imports no torch.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgead import MAX_PIXELS
from edgead.errors import InputError

if TYPE_CHECKING:
    from edgead.spec import DetectorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3) through ``decode_image`` (its checks, its conversions).

    A file that is missing, empty or not a readable image raises ``InputError`` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"expected an image file, found nothing at {p}")
    return decode_image(p.read_bytes(), str(p))


def decode_image(
    data: bytes, name: str = "image", max_pixels: int | None = None, cap_option: str = "EDGEAD_MAX_PIXELS"
) -> np.ndarray:
    """Decode an encoded image (a file's bytes, an upload) as uint8 RGB (H, W, 3): the one checked decode path.

    Refuses, naming ``name``: an empty buffer; a header declaring more than ``max_pixels`` (before decoding; for a
    format whose header edgead does not parse, right after); a truncated JPEG or one with impossible markers in its
    scan data; anything OpenCV cannot decode. Grayscale is replicated to three channels, RGBA drops alpha, 16-bit is
    scaled to 8 bits. ``max_pixels`` defaults to ``MAX_PIXELS``; ``cap_option`` is what a refusal says to raise.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise InputError(f"expected an image, found an empty file: {name}")
    check_header(data[: 1 << 20], name, max_pixels, cap_option)
    if data[:2] == b"\xff\xd8":
        check_jpeg_structure(data, name)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's message names its own source files; the caller gets one line about the input
        img = None
    if img is None:
        raise InputError(f"expected a readable image (png, jpg, bmp, tif, webp), found a corrupt or unknown file: "
                         f"{name}")
    _check_pixels(img.shape[1], img.shape[0], name, max_pixels, cap_option)
    return to_rgb8(img, name, bgr=True)


def declared_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG, JPEG, BMP, WebP or TIFF header declares, read without decoding; None if unknown."""
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"BM":
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            kind = head[12:16]
            if kind == b"VP8X":
                return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
            if kind == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", head[26:30])
                return w & 0x3FFF, h & 0x3FFF
        if head[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(head):
                if head[i] != 0xFF:
                    return None
                marker = head[i + 1]
                if marker == 0xFF:
                    i += 1
                    continue
                seg = int.from_bytes(head[i + 2 : i + 4], "big")
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                    return w, h
                i += 2 + seg
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            e = "<" if head[:2] == b"II" else ">"
            ifd = struct.unpack(e + "I", head[4:8])[0]
            (n,) = struct.unpack(e + "H", head[ifd : ifd + 2])
            dims = {}
            for k in range(n):
                tag, typ, _count, value = struct.unpack(e + "HHI4s", head[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
                if tag in (256, 257):
                    dims[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4])[0]
            if len(dims) == 2:
                return dims[256], dims[257]
    except (struct.error, IndexError, ValueError):
        return None
    return None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header when edgead can parse it, else by decoding it."""
    with open(path, "rb") as f:
        size = declared_size(f.read(1 << 16))
    return (size[1], size[0]) if size is not None else read_image(path).shape[:2]


def check_header(
    head: bytes, name: str, max_pixels: int | None = None, cap_option: str = "EDGEAD_MAX_PIXELS"
) -> None:
    """Refuse a frame whose header declares more than ``max_pixels`` (default ``MAX_PIXELS``), before decoding."""
    size = declared_size(head)
    if size is not None:
        _check_pixels(size[0], size[1], name, MAX_PIXELS if max_pixels is None else max_pixels, cap_option)


def _check_pixels(w: int, h: int, name: str, max_pixels: int, cap_option: str) -> None:
    if w * h > max_pixels:
        raise InputError(f"expected an image of at most {max_pixels / 1e6:.1f} Mpx, found {name} declaring {w}x{h} "
                         f"({w * h / 1e6:.1f} Mpx; a decompression bomb?); raise {cap_option} to allow it")


#: Markers that may follow 0xFF in JPEG entropy-coded data: byte stuffing and restarts; the end of image; and
#: segments between the scans of a progressive or multi-scan file (their payload is skipped by length).
_JPEG_IN_SCAN = {0x00, *range(0xD0, 0xD8)}
_JPEG_SEGMENTS = {0xDA, 0xC4, 0xDB, 0xDD, 0xCC, 0xFE, *range(0xE0, 0xF0)}


def check_jpeg_structure(data: bytes, name: str) -> None:
    """Refuse a truncated JPEG (no end-of-image marker) or one whose scan data holds impossible markers.

    OpenCV only warns on stderr and returns a grey-filled or garbled frame for both. JPEG has no checksum, so a
    flipped bit inside Huffman-coded data can still decode to wrong pixels; no reader can detect that case.
    """
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise InputError(f"expected a complete JPEG, found a truncated file without its end marker: {name}")
    start = data.find(b"\xff\xda")
    if start < 0:
        raise InputError(f"expected a JPEG with image data, found no scan: {name}")
    arr = np.frombuffer(data, dtype=np.uint8)
    ffs = np.flatnonzero(arr[:-1] == 0xFF)
    skip_to = start
    for i in ffs[ffs >= start].tolist():
        if i < skip_to:
            continue
        marker = data[i + 1]
        if marker in _JPEG_IN_SCAN or marker == 0xFF:
            continue
        if marker == 0xD9:
            return
        if marker in _JPEG_SEGMENTS and i + 4 <= len(data):
            skip_to = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            continue
        raise InputError(f"expected valid JPEG scan data, found a corrupt marker 0xFF{marker:02X} at byte {i}: "
                         f"{name}")


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


def model_inputs(img: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    """What the network sees of one frame, uint8 ``(n, H, W, 3)``: the tiles of ``spec.tiling``
    (``edgead.runtimes.tiling``, the cutter every runtime uses) or, without a plan, the one ``prepare``d image.
    Fitting and calibration read frames through this, so they see exactly what inference sees."""
    if spec.tiling is None:
        return prepare(img, spec)[None]
    from edgead.runtimes.tiling import cut, tile_grid

    return cut(np.ascontiguousarray(img)[None], tile_grid(img.shape[:2], spec.tiling))


def load_inputs(paths: list[str | Path] | list[Path], spec: DetectorSpec) -> np.ndarray:
    """``model_inputs`` of every image, concatenated: ``load_batch`` for an untiled spec, all tiles for a tiled one."""
    if spec.tiling is None:
        return load_batch(paths, spec)
    return np.concatenate([model_inputs(read_image(p), spec) for p in paths])


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
