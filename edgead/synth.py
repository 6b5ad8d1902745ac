"""Synthetic anomaly data in the MVTec AD layout, for tests, demos and smoke runs without a download.

Two categories: ``texture`` (a woven pattern whose orientation and frequency are fixed per seed, with
per-image phase, tilt and fibre noise) and ``object`` (a rounded plate with a hole on a plain background,
jittered in position, rotation and brightness). Four defect types are painted on a clean render: ``scratch``
(thin bright curve), ``spot`` (dark or bright blob), ``crack`` (dark jagged polyline) and ``missing`` (a chunk
replaced by background). Pixels are painted without anti-aliasing, so each mask covers exactly the pixels the
defect changed, and every changed pixel differs from the clean render by at least ``MIN_CONTRAST`` grey levels
before tinting. Everything is deterministic for a seed; numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgead.errors import InputError
from edgead.fsutil import atomic_dir

CATEGORIES = ("texture", "object")
DEFECTS = ("scratch", "spot", "crack", "missing")
#: Smallest grey-level change a defect makes to any pixel it covers (before the colour tint).
MIN_CONTRAST = 60.0
#: Smallest share of the image a defect covers.
MIN_AREA = 0.001
_TINT = {"texture": (1.0, 0.92, 0.78), "object": (0.95, 0.97, 1.0)}
_BACKGROUND = 45.0  # object background grey level
_HOLE = 20.0  # what shows through a missing chunk of the texture

Paint = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Render:
    """A clean grey-level render (H, W) float32 and the pixels defects may be painted on."""

    gray: np.ndarray
    footprint: np.ndarray  # bool (H, W)
    category: str


def _texture_style(seed: int) -> tuple[float, float]:
    """Orientation (radians) and period (fraction of the image) shared by every image of one data set."""
    rng = np.random.default_rng([seed, 7])
    return float(rng.uniform(0.0, np.pi)), float(rng.uniform(0.045, 0.07))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def render_texture(size: int, rng: np.random.Generator, seed: int = 0) -> Render:
    """A woven texture in grey levels [~90, ~190]: two crossed gratings plus fibre noise."""
    theta, period = _texture_style(seed)
    theta += rng.normal(0.0, 0.03)
    freq = 2.0 * np.pi / (period * size * rng.uniform(0.97, 1.03))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    phase_u, phase_v = rng.uniform(0.0, 2.0 * np.pi, 2)
    weave = np.sin(freq * u + phase_u) * np.sin(freq * v + phase_v)
    fibres = _smooth_noise(rng, size, 1.2) * 0.25 + _smooth_noise(rng, size, 6.0) * 0.15
    gray = 140.0 + 38.0 * weave + 30.0 * fibres + rng.normal(0.0, 1.5, (size, size))
    gray = np.clip(gray, 90.0, 190.0).astype(np.float32)
    return Render(gray, np.ones((size, size), dtype=bool), "texture")


def _plate_polygon(size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float], float]:
    """Corners of a rounded square plate, jittered in position and rotation."""
    centre = (size / 2 + rng.uniform(-0.03, 0.03) * size, size / 2 + rng.uniform(-0.03, 0.03) * size)
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    half, radius = 0.30 * size, 0.08 * size
    t = np.linspace(0.0, np.pi / 2, 12)
    pts = []
    for k, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
        a = t + k * np.pi / 2
        cx, cy = sx * (half - radius), sy * (half - radius)
        pts.append(np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], axis=1))
    poly = np.concatenate(pts)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    poly = poly @ rot.T + np.array(centre)
    return np.round(poly).astype(np.int32), centre, angle


def render_object(size: int, rng: np.random.Generator) -> Render:
    """A brushed-metal plate with a central hole on a dark background; plate grey levels in [150, 195]."""
    poly, centre, angle = _plate_polygon(size, rng)
    plate = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(plate, [poly], 1, lineType=cv2.LINE_8)
    hole_centre = (int(round(centre[0])), int(round(centre[1])))
    cv2.circle(plate, hole_centre, int(0.09 * size), 0, -1, lineType=cv2.LINE_8)
    footprint = plate.astype(bool)
    grain = rng.standard_normal((size, size)).astype(np.float32)
    brushed = cv2.GaussianBlur(grain, (0, 0), sigmaX=4.0, sigmaY=0.6)
    brushed /= brushed.std() + 1e-6
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    shade = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    body = 172.0 * rng.uniform(0.96, 1.04) + 10.0 * shade / size + 5.0 * brushed
    body = np.clip(body, 150.0, 195.0)
    background = _BACKGROUND + rng.normal(0.0, 1.0, (size, size))
    gray = np.where(footprint, body, background).astype(np.float32)
    return Render(gray, footprint, "object")


def render_normal(category: str, size: int, rng: np.random.Generator, seed: int = 0) -> Render:
    """A clean image of ``category`` (see ``CATEGORIES``)."""
    if category == "texture":
        return render_texture(size, rng, seed)
    if category == "object":
        return render_object(size, rng)
    raise InputError(f"expected a synthetic category in {', '.join(CATEGORIES)}, found '{category}'")


def _anchor(render: Render, rng: np.random.Generator, margin: int) -> np.ndarray:
    """A random point on the paintable area, at least ``margin`` pixels inside it."""
    area = render.footprint.astype(np.uint8)
    inner = cv2.erode(area, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8), borderValue=0)
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        ys, xs = np.nonzero(area)
    i = rng.integers(len(ys))
    return np.array([xs[i], ys[i]], dtype=np.float64)


def _inward(size: int, rng: np.random.Generator, start: np.ndarray) -> float:
    """A heading from ``start`` roughly towards the image centre, so strokes stay mostly inside."""
    to_centre = np.array([size / 2, size / 2]) - start
    return float(np.arctan2(to_centre[1], to_centre[0]) + rng.uniform(-1.0, 1.0))


def _scratch_stroke(size: int, rng: np.random.Generator, start: np.ndarray) -> tuple[np.ndarray, int]:
    """A gently curved stroke (quadratic Bezier) of 25-45% of the image width."""
    length = rng.uniform(0.25, 0.45) * size
    direction = _inward(size, rng, start)
    end = start + length * np.array([np.cos(direction), np.sin(direction)])
    normal = np.array([-np.sin(direction), np.cos(direction)])
    control = (start + end) / 2 + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0.0, 1.0, 40)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    return np.round(curve).astype(np.int32), max(2, round(size / 112))


def _crack_stroke(size: int, rng: np.random.Generator, start: np.ndarray) -> tuple[np.ndarray, int]:
    """A jagged polyline: steps of a few pixels with a wandering heading."""
    heading = _inward(size, rng, start)
    points = [start]
    for _ in range(int(rng.integers(8, 13))):
        heading += rng.uniform(-0.6, 0.6)
        step = rng.uniform(0.025, 0.045) * size
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    return np.round(np.array(points)).astype(np.int32), max(2, round(size / 80))


def _stroke_mask(size: int, points: np.ndarray, thickness: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.polylines(mask, [points], False, 1, thickness=thickness, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _spot_mask(size: int, rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    axes = (int(rng.uniform(0.025, 0.05) * size), int(rng.uniform(0.02, 0.04) * size))
    mask = np.zeros((size, size), dtype=np.uint8)
    c = (int(centre[0]), int(centre[1]))
    cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _chunk_mask(render: Render, rng: np.random.Generator) -> np.ndarray:
    """A chunk to remove: a bite out of the plate's edge for objects, a ragged patch for textures."""
    size = render.gray.shape[0]
    mask = np.zeros((size, size), dtype=np.uint8)
    if render.category == "object":
        inner = cv2.erode(render.footprint.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        y, x = np.mgrid[0:size, 0:size]
        outer = np.hypot(x - size / 2, y - size / 2) > 0.18 * size  # the plate's rim, not the hole's
        edge = render.footprint & ~inner & outer
        ys, xs = np.nonzero(edge)
        i = rng.integers(len(ys))
        cv2.circle(mask, (int(xs[i]), int(ys[i])), int(rng.uniform(0.06, 0.09) * size), 1, -1, cv2.LINE_8)
    else:
        centre = _anchor(render, rng, int(0.1 * size))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, 9))
        radii = rng.uniform(0.04, 0.075, 9) * size
        pts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _darken(gray: np.ndarray) -> np.ndarray:
    return gray * 0.3


def _brighten(gray: np.ndarray) -> np.ndarray:
    return np.minimum(gray + 90.0, 255.0)


def _background(gray: np.ndarray) -> np.ndarray:
    return np.full_like(gray, _BACKGROUND)


def _hole(gray: np.ndarray) -> np.ndarray:
    return np.full_like(gray, _HOLE)


def _defect_region(render: Render, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, Paint]:
    size = render.gray.shape[0]
    margin = int(0.06 * size)
    if defect == "scratch":
        return _stroke_mask(size, *_scratch_stroke(size, rng, _anchor(render, rng, margin))), _brighten
    if defect == "crack":
        return _stroke_mask(size, *_crack_stroke(size, rng, _anchor(render, rng, margin))), _darken
    if defect == "spot":
        paint = _darken if rng.random() < 0.5 else _brighten
        return _spot_mask(size, rng, _anchor(render, rng, margin)), paint
    if defect == "missing":
        return _chunk_mask(render, rng), _background if render.category == "object" else _hole
    raise InputError(f"expected a defect type in {', '.join(DEFECTS)}, found '{defect}'")


def add_defect(render: Render, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one ``defect`` on a clean render: (grey image, mask), the mask being exactly the changed pixels.

    A defect clipped by the image border or the object's outline to fewer than ``MIN_AREA`` of the pixels is
    drawn again (deterministically, from the same generator).
    """
    min_pixels = MIN_AREA * render.gray.size
    for _ in range(50):
        region, paint = _defect_region(render, defect, rng)
        mask = region & render.footprint
        if mask.sum() >= min_pixels:
            break
    gray = render.gray.copy()
    gray[mask] = paint(gray[mask])
    return gray, mask


def _extent(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` (N, 2)."""
    return max(float(np.max(np.linalg.norm(points[:, None] - points[None], axis=2))), 1e-6)


def _sized_region(render: Render, defect: str, diameter: int, rng: np.random.Generator) -> tuple[np.ndarray, Paint]:
    """A defect whose largest extent is about ``diameter`` pixels (3 px: a speck, 300 px: a gash)."""
    h, w = render.gray.shape
    centre = _anchor(render, rng, diameter // 2 + 2)
    mask = np.zeros((h, w), dtype=np.uint8)
    span = max(diameter - 1, 1)  # pixel centres at both ends of a span of d - 1 give an extent of d pixels
    if defect == "spot":
        a = max(1, round(span / 2))
        b = max(1, round(a * rng.uniform(0.55, 1.0)))
        c = (int(centre[0]), int(centre[1]))
        cv2.ellipse(mask, c, (a, b), float(rng.uniform(0, 180)), 0, 360, 1, -1, lineType=cv2.LINE_8)
        return mask.astype(bool), _darken if rng.random() < 0.5 else _brighten
    if defect in ("scratch", "crack"):
        steps = 2 if defect == "scratch" else int(rng.integers(4, 9))
        heading = rng.uniform(0.0, 2.0 * np.pi)
        turn = 0.15 if defect == "scratch" else 0.7
        angles = heading + np.cumsum(np.r_[0.0, rng.uniform(-turn, turn, steps - 1)])
        path = np.cumsum(np.column_stack([np.cos(angles), np.sin(angles)]), axis=0)
        path = np.vstack([np.zeros(2), path])
        path = path * (span / _extent(path))
        points = np.round(centre + path - path.mean(axis=0)).astype(np.int32)
        thickness = max(1, round(diameter / (40 if defect == "scratch" else 60)))
        cv2.polylines(mask, [points], False, 1, thickness=thickness, lineType=cv2.LINE_8)
        return mask.astype(bool), _brighten if defect == "scratch" else _darken
    if defect == "missing":
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, 9))
        radii = rng.uniform(0.6, 1.0, 9)
        outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        pts = centre + outline * (span / _extent(outline))
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
        return mask.astype(bool), _background if render.category == "object" else _hole
    raise InputError(f"expected a defect type in {', '.join(DEFECTS)}, found '{defect}'")


def add_sized_defect(render: Render, defect: str, diameter: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one ``defect`` about ``diameter`` pixels across: (grey image, mask of exactly the changed pixels).

    Placed at least half its diameter inside the paintable area where there is room; on an object whose rim is
    narrower than the defect, the defect is clipped to the plate.
    """
    region, paint = _sized_region(render, defect, diameter, rng)
    mask = region & render.footprint
    gray = render.gray.copy()
    gray[mask] = paint(gray[mask])
    return gray, mask


def paint_defect(rgb: np.ndarray, defect: str, rng: np.random.Generator,
                 diameter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint one ``defect`` on a real RGB uint8 image: (RGB image, mask of exactly the changed pixels).

    The same strokes, spots and chunks as the synthetic set, placed anywhere on the image; each channel is
    darkened, brightened or replaced like the grey level of a render. Used to make labelled proxy data from
    normal images (the compile-time gate, the texture benchmark). Without ``diameter`` the image must be square
    and the defect scales with it; with ``diameter`` (pixels across, see ``add_sized_defect``) any frame shape
    works, so proxy sets can hold tiny defects for the small-defect (Q1) AUPRO.
    """
    square = rgb.ndim == 3 and rgb.shape[0] == rgb.shape[1]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or (diameter is None and not square):
        raise InputError(f"expected a square RGB image (S, S, 3), or any (H, W, 3) with a diameter, found shape "
                         f"{rgb.shape}")
    gray = rgb.astype(np.float32).mean(axis=2)
    render = Render(gray, np.ones(gray.shape, dtype=bool), "texture")
    mask = np.zeros(gray.shape, dtype=bool)
    paint: Paint = _darken
    if diameter is not None:
        mask, paint = _sized_region(render, defect, diameter, rng)
    else:
        for _ in range(50):
            mask, paint = _defect_region(render, defect, rng)
            if mask.sum() >= MIN_AREA * gray.size:
                break
    out = rgb.astype(np.float32)
    out[mask] = paint(out[mask])
    changed = np.abs(np.round(out) - rgb).max(axis=2) > 0
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask & changed


def to_rgb(gray: np.ndarray, category: str) -> np.ndarray:
    """Tint a grey-level image into RGB uint8."""
    tint = np.asarray(_TINT[category], dtype=np.float32)
    return np.clip(np.round(gray[:, :, None] * tint), 0, 255).astype(np.uint8)


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    keys = [seed, CATEGORIES.index(category), (("train", "good") + DEFECTS).index(split), index]
    return np.random.default_rng(keys)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array[:, :, ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(image)):
        raise InputError(f"could not write synthetic image to {path}")


@dataclass(frozen=True)
class Frames:
    """How synthetic frames are drawn: ``size`` px squares, or ``frame`` (H, W) cut from the centre of a square
    render of the longer side; defects scaled to the frame, or ``defect_px`` (smallest, largest) diameters."""

    size: int = 224
    frame: tuple[int, int] | None = None
    defect_px: tuple[int, int] | None = None

    @property
    def side(self) -> int:
        return max(self.frame) if self.frame else self.size

    def diameters(self, n_per_type: int) -> dict[tuple[str, int], int]:
        """Diameter of the defect in image ``i`` of each type: log-spaced from the smallest to the largest over
        all defect images, interleaved so each type spans the range."""
        lo, hi = self.defect_px or (0, 0)
        n = n_per_type * len(DEFECTS)
        out = {}
        for i in range(n_per_type):
            for t, defect in enumerate(DEFECTS):
                k = i * len(DEFECTS) + t
                out[defect, i] = round(lo * (hi / lo) ** (k / (n - 1))) if n > 1 else lo
        return out


def _window(render: Render, frame: tuple[int, int] | None) -> tuple[Render, tuple[slice, slice]]:
    """Limit where defects go to the centre ``frame`` of a square render; the slices cut that frame out."""
    side = render.gray.shape[0]
    h, w = frame or (side, side)
    top, left = (side - h) // 2, (side - w) // 2
    cut = (slice(top, top + h), slice(left, left + w))
    if (h, w) == (side, side):
        return render, cut
    inside = np.zeros_like(render.footprint)
    inside[cut] = True
    return Render(render.gray, render.footprint & inside, render.category), cut


def _write_category(
    folder: Path, category: str, frames: Frames, n_train: int, n_test_good: int, n_test_defect: int, seed: int
) -> None:
    side = frames.side
    for split, count, sub in (("train", n_train, "train/good"), ("good", n_test_good, "test/good")):
        for i in range(count):
            render, cut = _window(render_normal(category, side, _rng(seed, category, split, i), seed), frames.frame)
            _write_png(folder / sub / f"{i:03d}.png", to_rgb(render.gray[cut], category))
    diameters = frames.diameters(n_test_defect) if frames.defect_px else {}
    for defect in DEFECTS:
        for i in range(n_test_defect):
            rng = _rng(seed, category, defect, i)
            render, cut = _window(render_normal(category, side, rng, seed), frames.frame)
            if diameters:
                gray, mask = add_sized_defect(render, defect, diameters[defect, i], rng)
            else:
                gray, mask = add_defect(render, defect, rng)
            _write_png(folder / "test" / defect / f"{i:03d}.png", to_rgb(gray[cut], category))
            _write_png(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask[cut].astype(np.uint8) * 255)


def make_synthetic(
    out: str | Path,
    categories: tuple[str, ...] = CATEGORIES,
    size: int = 224,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 5,
    seed: int = 0,
    frame: tuple[int, int] | None = None,
    defect_px: tuple[int, int] | None = None,
) -> Path:
    """Write ``out/<category>/{train/good, test/<type>, ground_truth/<type>}``; returns ``out``.

    ``n_test_defect`` images are made per defect type. ``frame`` (H, W) replaces the ``size`` square with a
    camera-shaped frame (e.g. (2048, 2448)); ``defect_px`` (smallest, largest) draws each defect image's defect
    with a diameter log-spaced over that range (e.g. (3, 300)) instead of scaling defects to the image, so the
    defect-size quartiles of ``edgead eval`` span tiny to large. Each category folder is written atomically and
    replaces any previous one.
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        known = ", ".join(CATEGORIES)
        raise InputError(f"expected synthetic categories from {known}, found {', '.join(unknown)}")
    frames = Frames(size, tuple(frame) if frame else None, tuple(defect_px) if defect_px else None)  # type: ignore[arg-type]
    if min(frames.frame or (size,)) < 32:
        found = f"{frames.frame[0]}x{frames.frame[1]}" if frames.frame else str(size)
        raise InputError(f"expected a synthetic image size of at least 32 pixels, found {found}")
    if frames.defect_px is not None:
        lo, hi = frames.defect_px
        if not 1 <= lo <= hi <= min(frames.frame or (size,)) * 3 // 4:
            raise InputError(f"expected defect diameters 1 <= smallest <= largest <= 3/4 of the shorter image side "
                             f"({min(frames.frame or (size,)) * 3 // 4} px), found {lo}-{hi}")
    out = Path(out)
    for category in categories:
        with atomic_dir(out / category) as tmp:
            _write_category(tmp, category, frames, n_train, n_test_good, n_test_defect, seed)
    return out
