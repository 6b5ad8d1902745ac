"""``edgead bench --frame HxW``: whole camera frames through ``Runner.predict_frames``, tiled and full-frame.

For every engine and precision an export holds (``discovery.find_runner``), one synthetic uint8 frame of the asked
size is timed end to end, twice when the artifact carries a tiling plan:

- ``tiled``: the plan's path: cut into tiles of the input size, every tile through the engine, maps stitched back
  to the frame and the score taken over the stitched map (``edgead.runtimes.tiling``);
- ``full-frame``: resize and centre-crop the frame to the input, one inference, the map brought back onto the
  frame (``edgead.geometry.map_to_frame``).

An untiled artifact exported at a high resolution (say 1036 px) gives only the full-frame row, so a table of both
artifacts benchmarked at the same ``--frame`` compares tiling against full-frame inference. Rows are per frame
(batch 1): median, p90 and the min/max of the timed calls, and the peak resident memory while they ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgead import registry
from edgead.bench.discovery import find_runner
from edgead.bench.machine import machine_info
from edgead.bench.timing import RssSampler, timed_calls
from edgead.errors import EdgeadError
from edgead.runtimes.base import Runner


@dataclass(frozen=True)
class FrameTiming:
    """One engine x precision x path on frames of ``frame`` = (H, W); ``tiles`` is 1 on the full-frame path."""

    engine: str
    precision: str
    executed_precision: str
    path: str  # "tiled" | "full-frame"
    frame: tuple[int, int]
    input_size: tuple[int, int]
    tiles: int
    overlap: int | None
    iters: int
    p50_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    artifact: str


def bench_frames(runner: Runner, frame: tuple[int, int], iters: int = 5, warmup: int = 1,
                 seed: int = 0) -> list[FrameTiming]:
    """Time ``runner.predict_frames`` on one random frame of ``frame`` = (H, W): tiled (when the runner has a plan)
    and full-frame. The runner's own choice (``runner.tiling``) is restored afterwards."""
    if iters < 1 or warmup < 0:
        raise EdgeadError(f"expected iters >= 1 and warmup >= 0, found iters={iters}, warmup={warmup}")
    h, w = int(frame[0]), int(frame[1])
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    plan = runner.tiling
    paths: list[tuple[str, Any, int]] = [("full-frame", None, 1)]
    if plan is not None:
        from edgead.runtimes.tiling import tile_grid

        paths.insert(0, ("tiled", plan, len(tile_grid((h, w), plan))))
    out = []
    try:
        for name, how, tiles in paths:
            runner.tiling = how
            with RssSampler() as mem:
                p, times = timed_calls(partial(runner.predict_frames, image), iters, warmup)
            if p.maps.shape != (1, h, w):
                raise EdgeadError(f"{runner.describe()} returned a map of {p.maps.shape[1:]} for a {h}x{w} frame")
            ms = np.asarray(times) * 1e3
            out.append(FrameTiming(
                runner.engine, runner.manifest.precision, runner.executed_precision(), name, (h, w),
                tuple(runner.spec.input_size), tiles, None if how is None else how.overlap, iters,
                float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()), float(ms.max()), mem.peak_mb,
                str(runner.folder)))
    finally:
        runner.tiling = plan
    return out


def bench_frames_target(target: str | Path, frame: tuple[int, int], engines: Sequence[str] | None = None,
                        precisions: Sequence[str] | None = None, iters: int = 5, warmup: int = 1,
                        progress: Any = None) -> tuple[list[FrameTiming], list[str]]:
    """``bench_frames`` over the engines and precisions of a checkpoint or export folder; (rows, skipped reasons)."""
    target = Path(target)
    if not target.exists():
        raise EdgeadError(f"expected a checkpoint or export folder, found nothing at {target}")
    is_checkpoint = registry.is_checkpoint(target)
    rows = ([registry.get(e) for e in engines] if engines else
            [registry.reference()] if is_checkpoint else
            sorted(registry.ENGINES.values(), key=lambda e: not e.checkpoint))
    timings: list[FrameTiming] = []
    skipped: list[str] = []
    for row in rows:
        for prec in precisions or row.precisions:
            if prec not in row.precisions or (is_checkpoint and not row.checkpoint):
                continue
            runner, _path, reason = find_runner(target, row.name, prec)
            if runner is None:
                skipped.append(f"{row.name} {prec}: {reason}")
                continue
            if progress is not None:
                progress(f"{row.name} {prec}: {frame[0]}x{frame[1]} frames, {iters} iterations")
            with runner:
                timings += bench_frames(runner, frame, iters, warmup)
    return timings, skipped


def frames_document(timings: Sequence[FrameTiming], skipped: Sequence[str], target: str | Path) -> dict:
    """The JSON of a frame benchmark: the machine (CPU flags included), the rows and what was skipped."""
    return {"kind": "edgead.bench.frames", "target": str(target), "machine": machine_info(),
            "results": [asdict(t) for t in timings], "skipped": list(skipped)}


def render_frames(timings: Sequence[FrameTiming], title: str) -> Any:
    """A rich table: one row per engine x precision x path."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("engine", "precision", "path", "frame", "input", "tiles", "p50 ms", "p90 ms", "min-max ms", "RSS MB"):
        table.add_column(col, justify="right" if col not in ("engine", "precision", "path") else "left")
    for t in timings:
        path = t.path if t.overlap is None else f"{t.path} (overlap {t.overlap})"
        table.add_row(t.engine, f"{t.precision} ({t.executed_precision})", path, f"{t.frame[0]}x{t.frame[1]}",
                      f"{t.input_size[0]}x{t.input_size[1]}", str(t.tiles), f"{t.p50_ms:.1f}", f"{t.p90_ms:.1f}",
                      f"{t.min_ms:.1f}-{t.max_ms:.1f}", f"{t.peak_rss_mb:.0f}")
    return table
