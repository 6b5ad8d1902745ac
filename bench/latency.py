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
from edgead.bench.baseline import baseline_runners, with_vs_baseline
from edgead.bench.discovery import find_runner
from edgead.bench.machine import machine_info
from edgead.bench.report import render_table
from edgead.bench.schema import SCHEMA_VERSION, BenchResult, bench_document, write_json
from edgead.bench.timing import DEFAULT_BATCHES, RssSampler, bench_interleaved, bench_runner
from edgead.errors import EdgeadError
from edgead.precisions import full as full_precision

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
    rounds: int = 3,
    baseline: bool = False,
    baseline_backend: str = "inductor",
    before_round: Any = None,
) -> list[BenchResult]:
    """Benchmark a checkpoint (torch) or an export folder (every engine/precision sub-artifact it holds).

    ``engine`` None means every engine; ``precisions`` None means every precision of each engine. Combinations
    that cannot run here come back as skipped results with a one-line reason. Every runner is loaded first and
    all are timed in ``rounds`` interleaved rounds (``timing.bench_interleaved``; ``before_round`` runs at the
    start of each). ``baseline`` adds the plain-PyTorch rows (``bench.baseline``: eager fp32 and torch.compile,
    with bf16 autocast where the CPU has bf16) and each row's ``vs_baseline`` ratio.
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
    results: list[BenchResult | int] = []  # an int: the index of a loaded runner, timed below
    loaded: list[tuple[Any, str, str]] = []
    load_mb: list[float] = []
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
            results.append(len(loaded))
            loaded.append((runner, label, "eager" if row.checkpoint else ""))
            load_mb.append(load_mem.peak_mb)
    if baseline:
        results = _baseline_rows(target, loaded, load_mb, batches, baseline_backend) + results
    try:
        timed = bench_interleaved(loaded, batches, iters, warmup, rounds, before_round, progress=progress)
    finally:
        for runner, _, _ in loaded:
            runner.close()
    out: list[BenchResult] = []
    for slot in results:
        if isinstance(slot, int):
            rows_i = timed[slot * len(batches):(slot + 1) * len(batches)]
            out += [replace(r, peak_rss_mb=max(r.peak_rss_mb or 0.0, load_mb[slot])) for r in rows_i]
        else:
            out.append(slot)
    return with_vs_baseline(out) if baseline else out


def _baseline_rows(target: Path, loaded: list, load_mb: list[float], batches: Sequence[int], backend: str
                   ) -> list[BenchResult | int]:
    """Load the plain-PyTorch rows into ``loaded``; their slots (or skipped rows with the reason) come back."""
    from edgead.bench.discovery import _reference_source

    with RssSampler() as mem:
        extra, reasons = baseline_runners(_reference_source(target), machine_info()["flags"],
                                          any(mode == "eager" for _, _, mode in loaded), backend)
    ref, full = registry.reference().name, full_precision().name
    slots: list[BenchResult | int] = [BenchResult.skip(ref, full, b, why, "plain-PyTorch baseline")
                                      for why in reasons for b in batches]
    for row in extra:
        slots.append(len(loaded))
        loaded.append(row)
        load_mb.append(mem.peak_mb)
    return slots


def with_peak_shares(results: Sequence[BenchResult], target: str | Path, progress: Any = None,
                     peaks: dict[str, Any] | None = None) -> list[BenchResult]:
    """``results`` with each row's share of this machine's measured peak (``bench.roofline``) for the precision it
    executed: the export's FLOPs (``export.flops.onnx_flops``, the same network for every engine) over its time.

    With ``peaks`` sampled once per interleaved round (``roofline.PeakSampler``), each round's median is divided
    by the same round's peak, and the row carries the median share and its min/max; without, the peaks are
    measured now and divide the p50. Rows stay without a share when the target has no ONNX export to count (a
    bare checkpoint) or the peak of that precision cannot be measured here."""
    from edgead.bench.roofline import achieved_rates, measure_peaks, round_shares

    model = Path(target) / registry.exporter().model_file
    if not model.is_file():
        return list(results)
    from edgead.export.flops import onnx_flops

    if peaks is None:
        if progress is not None:
            progress("measuring this machine's peak matmul rates for the share-of-peak column")
        peaks = measure_peaks()
    counts: dict[int, int] = {}

    def flops(batch: int) -> int:
        if batch not in counts:
            counts[batch] = onnx_flops(model, batch).total
        return counts[batch]

    shares = {(a.engine, a.precision, a.batch, a.label): a for a in achieved_rates(results, flops, peaks)}
    out = []
    for r in results:
        a = shares.get((r.engine, r.precision, r.batch, r.label))
        if a is None:
            out.append(r)
            continue
        rs = round_shares(r, flops(r.batch), peaks.get(a.peak_precision))
        out.append(replace(r, share_of_peak=rs[1], share_min=rs[0], share_max=rs[2], peak_precision=a.peak_precision)
                   if rs else replace(r, share_of_peak=a.share, peak_precision=a.peak_precision))
    return out


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
    rounds: int = 3,
    baseline: bool = False,
    baseline_backend: str = "inductor",
    emit: Any = None,
) -> list[BenchResult]:
    """``edgead bench``: benchmark ``target``, print the table (unless ``table`` is False), write JSON when
    ``json_path`` is given and hand the JSON document to ``emit`` when given.

    With ``peak`` the roofline's peaks are sampled at the start of every interleaved round, between the rows
    they divide, and reported with their spread."""
    from edgead.term import make_console

    console = console or make_console()
    say = lambda msg: console.print(f"[dim]{msg}[/dim]")  # noqa: E731
    sampler = None
    if peak and (Path(target) / registry.exporter().model_file).is_file():
        from edgead.bench.roofline import PeakSampler

        say("building the peak micro-benchmarks (OpenVINO f32/bf16/int8 MatMul); sampled once per round")
        sampler = PeakSampler()
    results = bench_target(target, engine, precisions, batches, iters, warmup, progress=say, rounds=rounds,
                           baseline=baseline, baseline_backend=baseline_backend,
                           before_round=None if sampler is None else sampler.sample)
    peaks = None if sampler is None else sampler.peaks()
    if peaks is not None:
        results = with_peak_shares(results, target, progress=say, peaks=peaks)
    extra = {} if peaks is None else {"peaks": [p.to_dict() for p in peaks.values()]}
    if table:
        from edgead.bench.report import render_machine_line
        from edgead.bench.roofline import render_peaks

        console.print(render_table(results, f"edgead bench {target}"))
        if peaks is not None:
            console.print(render_peaks(peaks))
        console.print(render_machine_line(machine_info()))
    if json_path is not None:
        write_json(json_path, results, str(target), **extra)
        console.print(f"wrote {json_path}")
    if emit is not None:
        emit(bench_document(results, str(target), **extra))
    return results
