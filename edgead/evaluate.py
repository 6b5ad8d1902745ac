"""Evaluate any runner (checkpoint or compiled artifact) on a labelled MVTec-layout folder. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgead.data import TestItem, load_masks, test_items
from edgead.imageio import load_batch
from edgead.metrics import Metrics, evaluate
from edgead.runtimes.base import Runner


@dataclass(frozen=True)
class Evaluation:
    metrics: Metrics
    items: list[TestItem]
    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray


def run_on_items(runner: Runner, items: list[TestItem], batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for i in range(0, len(items), batch):
        p = runner.predict(load_batch([it.path for it in items[i : i + batch]], runner.spec))
        scores.append(p.scores)
        maps.append(p.maps)
    return np.concatenate(scores), np.concatenate(maps)


def evaluate_runner(runner: Runner, data: str | Path, batch: int = 8) -> Evaluation:
    items = test_items(data)
    scores, maps = run_on_items(runner, items, batch)
    masks = load_masks(items, runner.spec)
    labels = np.array([it.label for it in items])
    return Evaluation(evaluate(labels, scores, masks, maps), items, scores, maps, masks)
