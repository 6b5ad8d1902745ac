"""``edgead bench``: engines x precisions x batch sizes of a checkpoint or an export folder, end to end through
``Runner.predict``.

The pieces live in their own modules: the result schema and JSON document (``schema``), the machine description
(``machine``), the timing loop and memory sampling (``timing``), artifact discovery (``discovery``) and the table
(``report``). This module runs the matrix and is the entry point of the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgead import registry
from edgead.bench.discovery import find_runner
from edgead.bench.machine import machine_info
from edgead.bench.report import render_table
from edgead.bench.schema import SCHEMA_VERSION, BenchResult, bench_document, write_json
from edgead.bench.timing import DEFAULT_BATCHES, RssSampler, bench_runner
from edgead.errors import EdgeadError

__all__ = ["DEFAULT_BATCHES", "SCHEMA_VERSION", "BenchResult", "bench_document", "bench_runner", "bench_target",
           "machine_info", "render_table", "run_bench", "with_peak_shares", "write_json"]


def bench_target(
    target: str | Path,
    engine: str | Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 20,
    warmup: int = 3,
    progress: Any = None,
) -> list[BenchResult]:
    """Benchmark a checkpoint (torch) or an export folder (every engine/precision sub-artifact it holds).

    ``engine`` None means every engine; ``precisions`` None means every precision of each engine. Combinations
    that cannot run here come back as skipped results with a one-line reason.
    """
    target = Path(target)
    if not target.exists():
        raise EdgeadError(f"expected a checkpoint or export folder, found nothing at {target}")
    is_checkpoint = registry.is_checkpoint(target)
    ref = registry.reference()
    if engine is None:  # every engine, the reference first
        rows = [ref] if is_checkpoint else sorted(registry.ENGINES.values(), key=lambda e: not e.checkpoint)
    else:
        rows = [registry.get(e) for e in ([engine] if isinstance(engine, str) else engine)]
    results: list[BenchResult] = []
    for row in rows:
        eng = row.name
        for prec in precisions or row.precisions:
            label = f"{eng} {prec}"
            if prec not in row.precisions:
                results += [
                    BenchResult.skip(
                        eng,
                        prec,
                        b,
                        f"{eng} has no {prec} path (it runs {', '.join(row.precisions)})",
                        label,
                    )
                    for b in batches
                ]
                continue
            if is_checkpoint and not row.checkpoint:
                results += [
                    BenchResult.skip(eng, prec, b, f"a checkpoint runs on {ref.name} only; export it first", label)
                    for b in batches
                ]
                continue
            with RssSampler() as load_mem:
                runner, path, reason = find_runner(target, eng, prec)
            if runner is None:
                results += [BenchResult.skip(eng, prec, b, reason, label, path) for b in batches]
                continue
            if progress is not None:
                progress(f"{label}: batches {', '.join(map(str, batches))}, {iters} iterations")
            with runner:
                rows = bench_runner(runner, batches, iters, warmup, label)
            results += [replace(r, peak_rss_mb=max(r.peak_rss_mb or 0.0, load_mem.peak_mb)) for r in rows]
    return results


def with_peak_shares(results: Sequence[BenchResult], target: str | Path, progress: Any = None) -> list[BenchResult]:
    """``results`` with each row's share of this machine's measured peak (``bench.roofline``) for the precision it
    executed: the export's FLOPs (``export.flops.onnx_flops``, the same network for every engine) over its p50.

    Rows stay without a share when the target has no ONNX export to count (a bare checkpoint) or the peak of
    that precision cannot be measured here."""
    from edgead.bench.roofline import achieved_rates, measure_peaks

    model = Path(target) / "model.onnx"
    if not model.is_file():
        return list(results)
    from edgead.export.flops import onnx_flops

    if progress is not None:
        progress("measuring this machine's peak matmul rates for the share-of-peak column")
    peaks = measure_peaks()
    counts: dict[int, int] = {}

    def flops(batch: int) -> int:
        if batch not in counts:
            counts[batch] = onnx_flops(model, batch).total
        return counts[batch]

    shares = {(a.engine, a.precision, a.batch): a for a in achieved_rates(results, flops, peaks)}
    return [replace(r, share_of_peak=a.share, peak_precision=a.peak_precision)
            if (a := shares.get((r.engine, r.precision, r.batch))) is not None else r for r in results]


def run_bench(
    target: str | Path,
    engine: str | Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 20,
    json_path: str | Path | None = None,
    console: Any = None,
    warmup: int = 3,
    table: bool = True,
    peak: bool = False,
) -> list[BenchResult]:
    """``edgead bench``: benchmark ``target``, print the table (unless ``table`` is False), write JSON when
    ``json_path`` is given."""
    from edgead.term import make_console

    console = console or make_console()
    results = bench_target(
        target,
        engine,
        precisions,
        batches,
        iters,
        warmup,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]"),
    )
    if peak:
        results = with_peak_shares(results, target, progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    if table:
        console.print(render_table(results, f"edgead bench {target}"))
    if json_path is not None:
        write_json(json_path, results, str(target))
        console.print(f"wrote {json_path}")
    return results
