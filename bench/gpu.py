"""GPU latency with PyTorch on CUDA: eager, CUDA-graph replay and ``torch.compile``, where each works.

``edgead bench CKPT --engine torch --device cuda`` and ``edgead bench norms --device cuda`` (the DyT vs
LayerNorm study's GPU column) land here. Timing uses CUDA events around each batch after warm-up; the batch is
resident on the GPU (the copy in is not timed, as in the TensorRT runner's device-side figure). A mode that
fails on this machine (no Triton for ``torch.compile``, a capture error) is reported as skipped with its reason,
never as a number. Without a CUDA device the whole run is skipped with one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgead.errors import require

MODES = ("eager", "cuda-graph", "compile")


@dataclass(frozen=True)
class GpuResult:
    name: str  # which detector (checkpoint path, or "dyt" / "layernorm" in the study)
    mode: str
    batch: int
    ms_p50: float | None
    ms_p90: float | None
    ms_per_image: float | None
    device: str
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cuda_unavailable() -> str | None:
    """None when torch sees a CUDA device, else the one line saying why the GPU column is skipped."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "skipped --device cuda: PyTorch is not installed (pip install 'edgead[torch]' with a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        return f"skipped --device cuda: torch {torch.__version__} sees no CUDA device (CUDA build: {build})"
    return None


def _time(fn: Callable[[], Any], torch: Any, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _runner(detector: Any, mode: str, x: Any, torch: Any) -> Callable[[], Any]:
    if mode == "eager":
        return lambda: detector(x)
    if mode == "compile":
        compiled = torch.compile(detector, mode="max-autotune-no-cudagraphs")
        return lambda: compiled(x)
    static_in = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream before capture, as CUDA graphs require
        for _ in range(3):
            detector(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        detector(static_in)
    return graph.replay


def bench_detector(detector: Any, name: str, batches: Sequence[int] = (1, 8), iters: int = 20, warmup: int = 5,
                   modes: Sequence[str] = MODES) -> list[GpuResult]:
    """Latency of ``detector`` (an edgead ``Detector``) on CUDA device 0 in each mode and batch size."""
    torch = require("torch", "torch", "GPU benchmarks")
    dev = torch.device("cuda", 0)
    gpu = torch.cuda.get_device_name(dev)
    detector = detector.eval().to(dev)
    h, w = detector.spec.input_size
    out: list[GpuResult] = []
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for b in batches:
            x = torch.from_numpy(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)).to(dev)
            for mode in modes:
                try:
                    t = np.array(_time(_runner(detector, mode, x, torch), torch, iters, warmup))
                except Exception as exc:  # a mode this machine cannot run is reported, not timed
                    out.append(GpuResult(name, mode, b, None, None, None, gpu, f"{type(exc).__name__}: "
                                         f"{' '.join(str(exc).split())[:200]}"))
                    continue
                p50 = float(np.percentile(t, 50))
                out.append(GpuResult(name, mode, b, p50, float(np.percentile(t, 90)), p50 / b, gpu))
    return out


def norms_study_gpu(backbone: str = "vit_small_patch14_dinov2", size: int = 224, family: str = "fbft",
                    batches: Sequence[int] = (1, 8), iters: int = 20) -> list[GpuResult]:
    """The DyT vs LayerNorm study's GPU column: both norms of one detector, each mode and batch size."""
    require("torch", "torch", "GPU benchmarks")
    from edgead.models import build_detector, detector_spec

    results = []
    for norm in ("dyt", "layernorm"):
        det = build_detector(detector_spec(family, backbone, norm, input_size=size))
        results += bench_detector(det, norm, batches, iters)
    return results
