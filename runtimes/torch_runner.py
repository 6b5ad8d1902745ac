"""PyTorch runner: the FP32 reference. Runs a training checkpoint or an in-memory detector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import require
from edgead.registry import TORCH
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import Manifest


class TorchRunner(Runner):
    """Eager PyTorch on the CPU. Thread safe: inference mode, no shared mutable state in the module."""

    engine = "torch"
    thread_safe = True

    def __init__(self, folder: Path, manifest: Manifest, detector: Any = None, threads: int | None = None) -> None:
        super().__init__(folder, manifest)
        self.torch = require("torch", "torch", "the PyTorch reference runner")
        if threads:
            self.torch.set_num_threads(int(threads))
        self.detector = detector.eval()

    @classmethod
    def from_detector(cls, detector: Any, folder: str | Path = ".") -> TorchRunner:
        m = Manifest(TORCH.manifest_name, "fp32", "detector.safetensors", detector.spec, {})
        return cls(Path(folder), m, detector=detector)

    @classmethod
    def from_checkpoint(cls, path: str | Path, threads: int | None = None) -> TorchRunner:
        require("torch", "torch", "running a training checkpoint")
        from edgead.models.checkpoint import load_checkpoint

        runner = cls.from_detector(load_checkpoint(path), path)
        if threads:
            runner.torch.set_num_threads(int(threads))
        return runner

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            scores, maps = self.detector(self.torch.from_numpy(images))
        return scores.numpy(), maps.numpy()


RUNNER = TorchRunner
