"""``edgead fit``: train a detector's head on normal images (CPU), set its threshold, write a checkpoint.

The backbone is frozen, so its taps are computed once per image and cached; the head then trains for several
epochs on the cached taps. A share of the normal images is held back and the decision threshold is set from
their scores: ``mean + 3 * std`` of the hold-out scores (the max of them if that is higher).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgead.data import find_train_images, split_holdout
from edgead.errors import ConfigError
from edgead.fidelity import threshold_rule
from edgead.imageio import load_inputs, read_image
from edgead.models.build import build_detector, default_backbone, detector_spec
from edgead.models.checkpoint import save_checkpoint
from edgead.models.detector import Detector
from edgead.models.norms import convert_to_dyt
from edgead.spec import TilePlan

Progress = Callable[[str, int, int], None]  # (stage, done, total)

DEFAULT_EPOCHS = {"fbft": 60, "dinomaly": 30, "vitad": 30, "nf": 40, "gmm": 60}
DEFAULT_LR = {"fbft": 1e-3, "dinomaly": 1e-3, "vitad": 1e-4, "nf": 1e-3, "gmm": 1e-3}


@dataclass(frozen=True)
class FitResult:
    checkpoint: Path
    train_images: int
    holdout_images: int
    threshold: float
    holdout_scores: tuple[float, ...]
    final_loss: float
    seconds: float


def _taps(detector: Detector, images: np.ndarray, batch: int, progress: Progress | None) -> list[list[torch.Tensor]]:
    cached = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            taps = detector.taps(torch.from_numpy(images[i : i + batch]))
            cached.append(list(taps))  # fresh tensors made under no_grad: nothing to copy
            if progress:
                progress("features", min(i + batch, len(images)), len(images))
    return cached


def train_head(detector: Detector, cached: list[list[torch.Tensor]], epochs: int, lr: float, seed: int,
               progress: Progress | None = None) -> float:
    """AdamW with a cosine schedule over ``epochs`` passes of the cached taps; returns the last epoch's loss."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in detector.head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * len(cached))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    detector.train()
    last = float("nan")
    for epoch in range(epochs):
        total = 0.0
        for j in torch.randperm(len(cached), generator=g).tolist():
            loss = detector.head.loss(cached[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        last = total / len(cached)
        if progress:
            progress("train", epoch + 1, epochs)
    detector.eval()
    return last


def _frame_scores(detector: Detector, frames: list[Path]) -> np.ndarray:
    """Stitched image scores of whole frames under the detector's tiling plan, as every runtime computes them."""
    from edgead.runtimes.torch_runner import TorchRunner

    runner = TorchRunner.from_detector(detector)
    return np.concatenate([runner.predict_frames(read_image(p)).scores for p in frames])


def fit(
    data: str | Path,
    out: str | Path,
    family: str = "fbft",
    backbone: str | None = None,
    norm: str = "layernorm",
    size: int | tuple[int, int] | None = None,
    weights: str | Path | None = None,
    convert_dyt: bool = False,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 8,
    holdout: float = 0.2,
    max_images: int = 400,
    seed: int = 0,
    progress: Progress | None = None,
    layers: tuple[int, ...] | None = None,
    finetune_epochs: int | None = None,
    mask_ratio: float | None = None,
    tiling: TilePlan | None = None,
) -> FitResult:
    """Fit on the normal images of ``data`` (image folder or MVTec category) and write the checkpoint ``out``.

    ``backbone`` and ``size`` default to the family's. ``convert_dyt`` loads LayerNorm ``weights`` and converts
    the backbone's norms to DyT (for DyT fine-tuning experiments; the spec then says ``dyt``). ``layers``
    overrides the family's tapped blocks (or stages). The ``mae`` family trains its whole network from scratch
    (``edgead.fit_mae``): ``epochs`` is its pre-training phase, ``finetune_epochs`` its fine-tuning phase,
    ``mask_ratio`` the share of patches masked in training.

    Heads may define two optional steps: ``prepare(cached_taps)`` before training (the GMM head's projection)
    and ``calibrate(holdout_taps) -> dict`` after it (the GMM head's normalisation), whose fields are stored in
    the spec's ``head``.

    ``tiling`` fits a tiled detector: the plan goes into the spec, the head trains on the tiles the plan cuts from
    each training frame (``edgead.imageio.model_inputs``, the runtimes' cutter), and the threshold is set from the
    hold-out frames' stitched scores (``Runner.predict_frames``), the scores the artifact will give.
    """
    if size is not None and min((size, size) if isinstance(size, int) else size) < 1:
        raise ConfigError(f"input size must be a positive number of pixels, found {size}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be at least 1 (or None for the family's default), found {epochs}")
    t0 = time.perf_counter()
    backbone = backbone or default_backbone(family)
    if family == "mae":
        if weights is not None or convert_dyt:
            raise ConfigError("the mae family trains from scratch: it takes no --weights and no --convert-dyt")
        return _fit_mae(data, out, backbone, norm, size, epochs, finetune_epochs, mask_ratio, lr, batch_size,
                        holdout, max_images, seed, progress, t0)
    paths = find_train_images(data)[:max_images]
    train, hold = split_holdout(paths, holdout, seed=seed)
    torch.manual_seed(seed)
    size = size or 224  # the head families keep 224 as the fit default (ViTAD included)
    spec = detector_spec(family, backbone, "layernorm" if convert_dyt else norm, input_size=size, layers=layers)
    detector = build_detector(spec, weights)
    if convert_dyt:
        convert_to_dyt(detector)
        spec = detector_spec(family, backbone, "dyt", input_size=size, layers=layers)
    spec = replace(spec, tiling=tiling)
    detector.spec = spec
    cached = _taps(detector, load_inputs(train, spec), batch_size, progress)
    if hasattr(detector.head, "prepare"):
        detector.head.prepare(cached)
    loss = train_head(detector, cached, DEFAULT_EPOCHS[family] if epochs is None else epochs,
                      lr or DEFAULT_LR[family], seed, progress)
    hold_images = torch.from_numpy(load_inputs(hold, spec))
    with torch.no_grad():
        if hasattr(detector.head, "calibrate"):
            updates = detector.head.calibrate(detector.taps(hold_images))
            spec = replace(spec, head={**spec.head, **updates})
            detector.spec = spec
        hold_scores = detector(hold_images)[0].numpy() if tiling is None else _frame_scores(detector, hold)
    thr = threshold_rule(hold_scores)
    detector.spec = spec.with_threshold(thr)
    seconds = time.perf_counter() - t0
    info = {"train_images": len(train), "holdout_images": len(hold), "holdout_scores": hold_scores.tolist(),
            "threshold_rule": "max(mean + 3 std, max) of hold-out normal scores", "final_loss": loss,
            "seconds": seconds, "data": str(data), "weights": str(weights) if weights else None}
    path = save_checkpoint(detector, out, extra=info)
    return FitResult(path, len(train), len(hold), thr, tuple(float(s) for s in hold_scores), loss, seconds)


def _fit_mae(data: str | Path, out: str | Path, backbone: str, norm: str, size: int | tuple[int, int] | None,
             epochs: int | None, finetune_epochs: int | None, mask_ratio: float | None, lr: float | None,
             batch_size: int, holdout: float, max_images: int, seed: int, progress: Progress | None, t0: float
             ) -> FitResult:
    from edgead.fit_mae import (
        DEFAULT_FINETUNE_EPOCHS,
        DEFAULT_LR,
        DEFAULT_PRETRAIN_EPOCHS,
        load_training_images,
        train_mae,
    )
    from edgead.models.mae import HEAD_DEFAULTS, check_geometry, mae_config

    head = {"mask_ratio": float(mask_ratio)} if mask_ratio is not None else {}
    spec = detector_spec("mae", backbone, norm, input_size=size, head=head)
    cfg = mae_config(spec)
    check_geometry(spec.input_size, cfg.patch_size, float(spec.head.get("mask_ratio", HEAD_DEFAULTS["mask_ratio"])))
    paths = find_train_images(data)[:max_images]
    train, hold = split_holdout(paths, holdout, seed=seed)
    train_images = load_training_images(train, spec, cfg.patch_size)
    hold_images = load_training_images(hold, spec, cfg.patch_size)
    torch.manual_seed(seed)
    detector = build_detector(spec)
    pre = DEFAULT_PRETRAIN_EPOCHS if epochs is None else epochs
    fine = DEFAULT_FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs
    losses = train_mae(detector, train_images, pre, fine, lr or DEFAULT_LR, batch_size, seed, progress)
    with torch.no_grad():
        hold_scores = detector(torch.from_numpy(hold_images))[0].numpy()
    thr = threshold_rule(hold_scores)
    detector.spec = spec.with_threshold(thr)
    seconds = time.perf_counter() - t0
    loss = losses["finetune_loss"] if fine > 0 else losses["pretrain_loss"]
    info = {"train_images": len(train), "holdout_images": len(hold), "holdout_scores": hold_scores.tolist(),
            "threshold_rule": "max(mean + 3 std, max) of hold-out normal scores", "final_loss": loss,
            "pretrain_epochs": pre, "finetune_epochs": fine, **losses, "seconds": seconds, "data": str(data),
            "weights": None}
    path = save_checkpoint(detector, out, extra=info)
    return FitResult(path, len(train), len(hold), thr, tuple(float(s) for s in hold_scores), loss, seconds)
