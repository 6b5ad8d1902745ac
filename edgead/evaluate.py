"""Evaluate any runner (checkpoint or compiled artifact) on a labelled MVTec-layout folder. Imports no torch.

Pixel metrics are computed at each ground truth's own resolution: the masks are read as they are on disk and
never resized; each anomaly map is brought back onto its frame by ``edgead.geometry.map_to_frame`` (the inverse
of ``prepare``'s resize and centre crop). Besides pixel AUROC and AUPRO, the AUPRO per cumulative quartile of
defect area and the robustness score (``edgead.metrics.pixel_metrics``, docs/metrics.md) are reported.

An artifact with a tiling plan is evaluated the way it runs on the line: each test image read whole and scored by
``Runner.predict_frames`` (tiles at the frame's resolution, stitched), its frame-size map met with the mask as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgead.data import TestItem, read_masks, test_items
from edgead.geometry import map_to_frame
from edgead.imageio import load_batch
from edgead.metrics import AuproBySize, Metrics, auroc, f1_max, pixel_metrics
from edgead.runtimes.base import Runner
from edgead.spec import DetectorSpec


@dataclass(frozen=True)
class Evaluation:
    """``maps`` as the runner returned them: (N, h, w) at the model's map size, or for a tiled runner one (H_i, W_i)
    stitched map per image; ``masks`` one (H_i, W_i) array per image at its own resolution, which is where
    ``metrics`` and ``by_size`` were measured."""

    metrics: Metrics
    items: list[TestItem]
    scores: np.ndarray
    maps: np.ndarray | list[np.ndarray]
    masks: list[np.ndarray]
    by_size: AuproBySize | None = None


def run_on_items(runner: Runner, items: list[TestItem], batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for i in range(0, len(items), batch):
        p = runner.predict(load_batch([it.path for it in items[i : i + batch]], runner.spec))
        scores.append(p.scores)
        maps.append(p.maps)
    return np.concatenate(scores), np.concatenate(maps)


def frame_maps(maps: np.ndarray, masks: list[np.ndarray], spec: DetectorSpec) -> list[np.ndarray]:
    """Each model-size map brought onto the frame of its mask (same order, same (H_i, W_i))."""
    return [map_to_frame(amap, mask.shape, spec) for amap, mask in zip(maps, masks, strict=True)]


def run_frames_on_items(runner: Runner, items: list[TestItem]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and frame-size maps of a tiled runner, each image read whole and cut by the runner's plan."""
    from edgead.imageio import read_image

    preds = [runner.predict_frames(read_image(it.path)) for it in items]
    return np.concatenate([p.scores for p in preds]), [p.maps[0] for p in preds]


def evaluate_runner(runner: Runner, data: str | Path, batch: int = 8) -> Evaluation:
    items = test_items(data)
    masks = read_masks(items)
    if getattr(runner, "tiling", None) is not None:  # the line's path: whole frames, tiled and stitched
        scores, stitched = run_frames_on_items(runner, items)
        metrics, by_size = frame_metrics(items, scores, stitched, masks)
        return Evaluation(metrics, items, scores, stitched, masks, by_size)
    scores, maps = run_on_items(runner, items, batch)
    metrics, by_size = metrics_of(items, scores, maps, masks, runner.spec)
    return Evaluation(metrics, items, scores, maps, masks, by_size)


def metrics_of(items: list[TestItem], scores: np.ndarray, maps: np.ndarray, masks: list,
               spec: DetectorSpec) -> tuple[Metrics, AuproBySize]:
    """Image and pixel metrics of model-size ``maps`` against ``masks`` at their own resolution (maps brought onto
    each frame first); (metrics, AUPRO by defect size)."""
    return frame_metrics(items, scores, frame_maps(maps, masks, spec), masks)


def frame_metrics(items: list[TestItem], scores: np.ndarray, maps: list[np.ndarray],
                  masks: list) -> tuple[Metrics, AuproBySize]:
    """Image and pixel metrics of maps already at their frames' size (one per mask, same shapes)."""
    labels = np.array([it.label for it in items])
    image = auroc(labels, scores), f1_max(labels, scores)
    pixel, by_size = pixel_metrics(masks, maps)  # Q4 at 30 % FPR is the plain AUPRO
    return Metrics(*image, pixel, by_size.at(4, 0.3)), by_size
