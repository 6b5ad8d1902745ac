"""Pictures for people: anomaly maps as JET heat-map overlays and side-by-side verdict panels (PNG).

``vmin``/``vmax`` are explicit so that the same colour means the same anomaly value in every image of a run.
Numpy and OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgead.errors import InputError
from edgead.fsutil import atomic_file

_TEXT_BAR = 26  # pixels
_CONTOUR_RGB = (255, 255, 255)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an RGB uint8 image (H, W, 3), found {image.dtype} {image.shape}")
    return image


def _fit_map(amap: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    amap = np.asarray(amap, dtype=np.float32)
    amap = np.squeeze(amap)
    if amap.ndim != 2:
        raise InputError(f"expected a 2-D anomaly map or mask, found shape {amap.shape}")
    if amap.shape != shape:
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        amap = cv2.resize(amap, (shape[1], shape[0]), interpolation=interp)
    return amap


def panel_vmax(amap: np.ndarray, threshold: float | None) -> float:
    """The top of the colour scale for one map: twice the decision threshold when there is a positive finite one
    (the same colour means the same value across a run), else the map's largest finite value; 1.0 when that is
    not positive (an all-zero, all-NaN or negative map still gets a picture instead of an error)."""
    if threshold is not None and np.isfinite(threshold) and threshold > 0:
        return float(2.0 * threshold)
    finite = np.asarray(amap, np.float64)
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values in [vmin, vmax] to JET colours, RGB uint8 (H, W, 3); values outside are clipped."""
    if not vmax > vmin:
        raise InputError(f"expected vmax > vmin for the heat map, found vmin={vmin}, vmax={vmax}")
    scaled = np.clip((np.nan_to_num(amap) - vmin) / (vmax - vmin), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def heatmap_overlay(
    image_rgb_uint8: np.ndarray, amap_float: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend the JET-coloured map over the image: ``(1 - alpha) * image + alpha * heat``, RGB uint8."""
    image = _check_image(image_rgb_uint8)
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"expected an overlay alpha in [0, 1], found {alpha}")
    heat = colorize(_fit_map(amap_float, image.shape[:2]), vmin, vmax)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def _draw_mask_contour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    binary = (_fit_map(mask, image.shape[:2], nearest=True) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = image.copy()
    cv2.drawContours(out, contours, -1, _CONTOUR_RGB, 1, lineType=cv2.LINE_8)
    return out


def is_anomalous(score: float, threshold: float | None) -> bool:
    """The decision every runner's ``labels`` use: strictly above the threshold, or not a number (a NaN score
    says the engine failed on that image, which must never pass as normal)."""
    return threshold is not None and not score <= threshold


def verdict_text(score: float, threshold: float | None) -> str:
    if threshold is None:
        return f"score {score:.3f}"
    verdict = "ANOMALY" if is_anomalous(score, threshold) else "OK"
    return f"score {score:.3f} / thr {threshold:.3f} {verdict}"


def _text_bar(width: int, text: str, anomalous: bool) -> np.ndarray:
    bar = np.zeros((_TEXT_BAR, width, 3), dtype=np.uint8)
    colour = (255, 80, 80) if anomalous else (220, 220, 220)
    cv2.putText(bar, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return bar


def render_panel(
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    score: float,
    threshold: float | None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The panel ``save_panel`` writes, RGB uint8: [image | overlay] above a line with score and verdict."""
    image = _check_image(image)
    overlay = heatmap_overlay(image, amap, vmin, vmax)
    if mask is not None:
        overlay = _draw_mask_contour(overlay, mask)
    row = np.hstack([image, overlay])
    bar = _text_bar(row.shape[1], verdict_text(score, threshold), is_anomalous(score, threshold))
    return np.vstack([row, bar])


def save_panel(
    path: str | Path,
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    score: float,
    threshold: float | None,
    mask: np.ndarray | None = None,
) -> Path:
    """Write the image, its heat-map overlay (with the mask's contour if given) and the verdict as one PNG."""
    panel = render_panel(image, amap, vmin, vmax, score, threshold, mask)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(panel[:, :, ::-1]))
    if not ok:
        raise InputError(f"could not encode the panel for {path} as PNG")
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path
