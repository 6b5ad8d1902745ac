"""What a user gets without edgead: the strongest plain-PyTorch rows of a benchmark.

Two rows, both on the training checkpoint behind the benchmarked export:

- ``eager``: the PyTorch reference as it is (fp32, ``inference_mode``);
- ``compile``: ``torch.compile(detector)`` run under ``torch.autocast("cpu", torch.bfloat16)`` where the CPU has
  bf16 instructions (AVX512_BF16 or AMX-BF16, read from ``machine_info``'s flags), else ``torch.compile`` in fp32.
  That is two lines of PyTorch, the fastest thing a user would try before reaching for an export toolkit.

Each row is a ``Runner`` so the benchmark times it exactly like an artifact (uint8 in, scores and maps out). The
benchmark divides every row's time by the faster of the two (``strongest``): the ``vs PyTorch`` column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgead import precisions
from edgead.runtimes.torch_runner import TorchRunner


@dataclass(frozen=True)
class BaselineMode:
    """One plain-PyTorch way of running the detector."""

    mode: str  # "eager" | "compile"
    autocast_bf16: bool = False

    @property
    def label(self) -> str:
        if self.mode == "eager":
            return "torch eager fp32"
        return "torch.compile + bf16 autocast" if self.autocast_bf16 else "torch.compile fp32"

    @property
    def executed(self) -> str:
        return "bf16 autocast" if self.autocast_bf16 else "f32"


def baseline_modes(flags: dict[str, bool]) -> list[BaselineMode]:
    """The plain-PyTorch rows for a CPU with ``flags``: eager fp32, and torch.compile (bf16 autocast with bf16)."""
    return [BaselineMode("eager"), BaselineMode("compile", precisions.BF16.native_on(flags))]


class TorchBaselineRunner(TorchRunner):
    """The checkpoint run as a user would without edgead: eager, or ``torch.compile`` (+ bf16 autocast)."""

    def __init__(self, folder: Path, manifest: Any, detector: Any, mode: BaselineMode,
                 backend: str = "inductor") -> None:
        super().__init__(folder, manifest, detector=detector)
        self.mode = mode
        torch = self.torch
        # dynamic=False: one graph per batch size, as a user timing batch 1 and batch 8 would get
        self.module = torch.compile(self.detector, backend=backend, dynamic=False) if mode.mode == "compile" \
            else self.detector

    @classmethod
    def from_checkpoint_mode(cls, path: str | Path, mode: BaselineMode, backend: str = "inductor"
                             ) -> TorchBaselineRunner:
        from edgead.models.checkpoint import load_checkpoint
        from edgead.registry import TORCH
        from edgead.runtimes.manifest import Manifest

        det = load_checkpoint(path)
        m = Manifest(TORCH.manifest_name, precisions.full().name, "detector.safetensors", det.spec, {})
        return cls(Path(path), m, det, mode, backend)

    def executed_precision(self) -> str:
        return self.mode.executed

    def describe(self) -> str:
        return f"{self.mode.label} ({self.folder})"

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode.autocast_bf16):
            scores, maps = self.module(torch.from_numpy(images))
        return scores.float().numpy(), maps.float().numpy()


def strongest(rows: Sequence[Any]) -> dict[int, Any]:
    """Per batch size, the fastest plain-PyTorch row (by its median over rounds) among ``rows``."""
    best: dict[int, Any] = {}
    for r in rows:
        if r.skipped or r.mode not in ("eager", "compile") or r.median_ms_per_image is None:
            continue
        if r.batch not in best or r.median_ms_per_image < best[r.batch].median_ms_per_image:
            best[r.batch] = r
    return best


def baseline_runners(checkpoint: Path | None, flags: dict[str, bool], have_eager: bool, backend: str = "inductor"
                     ) -> tuple[list[tuple[Any, str, str]], list[str]]:
    """``(runner, label, mode)`` rows for the plain-PyTorch baseline of ``checkpoint`` (the eager one left out when
    the benchmark already times the torch engine), or the one-line reasons they cannot run here."""
    from edgead.registry import TORCH

    missing = TORCH.missing()
    if missing:
        return [], [missing]
    if checkpoint is None:
        return [], ["no checkpoint: the export's manifest names none (export with a checkpoint source)"]
    rows = []
    for mode in baseline_modes(flags):
        if mode.mode == "eager" and have_eager:
            continue
        rows.append((TorchBaselineRunner.from_checkpoint_mode(checkpoint, mode, backend), mode.label, mode.mode))
    return rows, []


def with_vs_baseline(results: Sequence[Any]) -> list[Any]:
    """``results`` with ``vs_baseline``: the strongest plain-PyTorch row's ms/image at the same batch over each
    row's (2.0: twice as fast as the best a user gets from PyTorch alone), taken round by round, since the rows
    of one interleaved round saw the same machine, and reported as the median with the min and max."""
    from dataclasses import replace

    best = strongest(results)
    out = []
    for r in results:
        b = best.get(r.batch)
        if b is None or r.skipped or not r.median_ms_per_image:
            out.append(r)
            continue
        pairs = list(zip(b.round_ms_per_image, r.round_ms_per_image, strict=False))
        ratios = [x / y for x, y in pairs] if pairs and len(pairs) == len(r.round_ms_per_image) \
            else [b.median_ms_per_image / r.median_ms_per_image]
        out.append(replace(r, vs_baseline=float(np.median(ratios)), vs_baseline_min=min(ratios),
                           vs_baseline_max=max(ratios), baseline=b.label))
    return out
