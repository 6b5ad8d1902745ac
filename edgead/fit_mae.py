"""Training the MAE family from scratch, in two phases, on uint8 images held in memory.

1. ``pretrain``: block-masked reconstruction, loss = MSE on the masked patches + ``loss_ssim_weight`` *
   (1 - SSIM) of the whole reconstruction (the context term);
2. ``finetune``: the same masking, loss = MSE on the masked patches only, at a tenth of the learning rate.

Both phases use AdamW with a short linear warm-up and a cosine decay; the block masks come from a seeded
generator, so a fit is reproducible for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgead.errors import InputError
from edgead.imageio import prepare, read_image
from edgead.models.mae import MAEDetector
from edgead.spec import DetectorSpec

Progress = Callable[[str, int, int], None]

DEFAULT_PRETRAIN_EPOCHS = 100
DEFAULT_FINETUNE_EPOCHS = 20
DEFAULT_LR = 1e-3


def load_training_images(paths: list[Path], spec: DetectorSpec, patch: int) -> np.ndarray:
    """Read and prepare the images; one smaller than a single patch cannot be reconstructed patch-wise."""
    h, w = spec.input_size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        img = read_image(p)
        if img.shape[0] < patch or img.shape[1] < patch:
            raise InputError(f"expected training images of at least one {patch}x{patch} patch, found "
                             f"{img.shape[1]}x{img.shape[0]} in {p}")
        out[i] = prepare(img, spec)
    return out


def _phase(detector: MAEDetector, images: torch.Tensor, phase: str, epochs: int, lr: float, batch: int,
           gen: torch.Generator, progress: Progress | None) -> float:
    if epochs <= 0:
        return float("nan")
    opt = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=lr, weight_decay=0.05,
                            betas=(0.9, 0.95))
    per_epoch = math.ceil(len(images) / batch)
    steps, warm = epochs * per_epoch, max(1, min(epochs * per_epoch // 10, 5 * per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    detector.train()
    last = float("nan")
    for epoch in range(epochs):
        total = 0.0
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch):
            loss = detector.loss(images[order[i : i + batch]], phase, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
        last = total / per_epoch
        if progress:
            progress(phase, epoch + 1, epochs)
    detector.eval()
    return last


def train_mae(detector: MAEDetector, images: np.ndarray, pretrain_epochs: int, finetune_epochs: int,
              lr: float = DEFAULT_LR, batch: int = 8, seed: int = 0, progress: Progress | None = None
              ) -> dict[str, float]:
    """Both phases on ``images`` (uint8 NHWC); returns each phase's last epoch loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images)
    pre = _phase(detector, x, "pretrain", pretrain_epochs, lr, batch, gen, progress)
    fine = _phase(detector, x, "finetune", finetune_epochs, lr * 0.1, batch, gen, progress)
    return {"pretrain_loss": pre, "finetune_loss": fine}
