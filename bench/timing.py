"""The timing loop: ``Runner.predict`` on uint8 batches, timed call by call, with peak memory sampled alongside.

Each measurement feeds uint8 images (``edgead.runtimes.compare.check_batch``) and gets scores and maps back,
so preprocessing, the network, postprocessing and the copies out are all inside the time. After ``warmup``
calls, ``iters`` calls are timed one by one; p50/p90/p99 come from those. Peak memory is the largest resident
set size sampled (every 2 ms, from ``/proc/self/statm``) while the runner was being loaded and timed;
Python-level tracing would miss the engines' native buffers.

``bench_interleaved`` times several runners in interleaved rounds and keeps each round's median, so a row carries
its run-to-run spread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np

from edgead.bench.schema import BenchResult
from edgead.errors import EdgeadError
from edgead.runtimes.base import Runner
from edgead.runtimes.compare import check_batch

DEFAULT_BATCHES = (1, 8)


# -- memory --------------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; the lifetime peak


class RssSampler:
    """Samples RSS on a background thread; ``peak_mb`` is the largest value seen since ``start``."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


# -- timing --------------------------------------------------------------------------------------------------
def timed_calls(call: Callable[[], Any], iters: int, warmup: int = 0) -> tuple[Any, list[float]]:
    """``call()`` ``warmup`` times untimed, then ``iters`` times, each timed alone: (the last result, seconds)."""
    for _ in range(warmup):
        call()
    result, times = None, []
    for _ in range(iters):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
    return result, times


def _percentiles(seconds: Sequence[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def bench_runner(
    runner: Runner,
    batch_sizes: Iterable[int] = DEFAULT_BATCHES,
    iters: int = 20,
    warmup: int = 3,
    label: str = "",
    seed: int = 0,
) -> list[BenchResult]:
    """Time ``runner.predict`` on uint8 batches of each size; one ``BenchResult`` per batch size."""
    if iters < 1 or warmup < 0:
        raise EdgeadError(f"expected iters >= 1 and warmup >= 0, found iters={iters}, warmup={warmup}")
    size = runner.spec.input_size
    executed = runner.executed_precision()
    out = []
    for batch in batch_sizes:
        images = check_batch(seed, int(batch), size)
        with RssSampler() as mem:
            preds, times = timed_calls(partial(runner.predict, images), iters, warmup)
        if preds.maps.shape[0] != batch:
            raise EdgeadError(
                f"{runner.describe()} returned {preds.maps.shape[0]} maps for a batch of {batch}"
            )
        p50, p90, p99 = _percentiles(times)
        out.append(
            BenchResult(
                engine=runner.engine,
                precision=runner.manifest.precision,
                executed_precision=executed,
                batch=int(batch),
                iters=iters,
                p50_ms=p50,
                p90_ms=p90,
                p99_ms=p99,
                p50_ms_per_image=p50 / batch,
                p90_ms_per_image=p90 / batch,
                p99_ms_per_image=p99 / batch,
                throughput_ips=batch * iters / float(np.sum(times)),
                peak_rss_mb=mem.peak_mb,
                label=label,
                artifact=str(runner.folder),
            )
        )
    return out


# -- interleaved rounds ----------------------------------------------------------------------------------------
def bench_interleaved(
    rows: Sequence[tuple[Runner, str, str]],
    batch_sizes: Iterable[int] = DEFAULT_BATCHES,
    iters: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    before_round: Callable[[int], None] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time every ``(runner, label, mode)`` row in ``rounds`` interleaved rounds (A B C A B C ...).

    ``iters`` timed calls per row and batch are split evenly over the rounds; each round's median ms/image is
    kept so the run-to-run spread (min/median/max of the round medians) travels with the row, and a slow minute
    of a shared machine hits every row alike instead of one. ``before_round(r)`` runs at the start of each round
    (the roofline's peaks are sampled there, in the same drift as the rows they divide). Results come back row
    by row, batch by batch.
    """
    if iters < 1 or warmup < 0 or rounds < 1:
        raise EdgeadError(f"expected iters >= 1, warmup >= 0 and rounds >= 1, found iters={iters}, warmup={warmup}, "
                          f"rounds={rounds}")
    batches = [int(b) for b in batch_sizes]
    per_round = -(-iters // rounds)
    images = {b: check_batch(seed, b, tuple(rows[0][0].spec.input_size)) for b in batches} if rows else {}
    times: dict[tuple[int, int], list[list[float]]] = {(i, b): [] for i in range(len(rows)) for b in batches}
    peak: dict[tuple[int, int], float] = {k: 0.0 for k in times}
    for runner, label, _ in rows:
        for b in batches:
            if progress is not None:
                progress(f"{label}: warm-up at batch {b}")
            for _ in range(warmup):
                preds = runner.predict(images[b])
            if warmup and preds.maps.shape[0] != b:
                raise EdgeadError(f"{runner.describe()} returned {preds.maps.shape[0]} maps for a batch of {b}")
    for r in range(rounds):
        if before_round is not None:
            before_round(r)
        for b in batches:
            for i, (runner, label, _) in enumerate(rows):
                if progress is not None:
                    progress(f"round {r + 1}/{rounds}, batch {b}: {label}")
                with RssSampler() as mem:
                    _, t = timed_calls(partial(runner.predict, images[b]), per_round)
                times[(i, b)].append(t)
                peak[(i, b)] = max(peak[(i, b)], mem.peak_mb)
    out = []
    for i, (runner, label, mode) in enumerate(rows):
        for b in batches:
            pooled = [s for chunk in times[(i, b)] for s in chunk]
            p50, p90, p99 = _percentiles(pooled)
            per_image = tuple(float(np.median(chunk)) * 1e3 / b for chunk in times[(i, b)])
            out.append(BenchResult(
                engine=runner.engine, precision=runner.manifest.precision,
                executed_precision=runner.executed_precision(), batch=b, iters=len(pooled),
                p50_ms=p50, p90_ms=p90, p99_ms=p99, p50_ms_per_image=p50 / b, p90_ms_per_image=p90 / b,
                p99_ms_per_image=p99 / b, throughput_ips=b * len(pooled) / float(np.sum(pooled)),
                peak_rss_mb=peak[(i, b)], label=label, artifact=str(runner.folder), mode=mode, rounds=rounds,
                round_ms_per_image=per_image, min_ms_per_image=min(per_image),
                median_ms_per_image=float(np.median(per_image)), max_ms_per_image=max(per_image)))
    return out
