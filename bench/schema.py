"""The benchmark's result schema: one ``BenchResult`` per engine x precision x batch, and the JSON document.

JSON (``write_json``), ``schema_version`` 2::

    {
      "schema_version": 2, "kind": "edgead.bench", "created": "<ISO 8601 UTC>", "target": "<path or label>",
      "machine": {"cpu_model": str, "cores": int, "physical_cores": int | null, "system": str, "python": str,
                  "flags": {"avx2": bool, "fma": bool, "avx512f": bool, "avx512_vnni": bool, "avx_vnni": bool,
                            "avx512_bf16": bool, "amx_bf16": bool, "amx_int8": bool},
                  "versions": {package: version or null}},
      "results": [{"engine": str, "precision": str (what the artifact was built as),
                   "executed_precision": str (what the engine ran: f32, bf16, int8 ...), "batch": int,
                   "iters": int, "p50_ms", "p90_ms", "p99_ms": per batch, "p50_ms_per_image",
                   "p90_ms_per_image", "p99_ms_per_image", "throughput_ips": images/s (float, null when
                   skipped), "peak_rss_mb": float | null, "label": str, "artifact": str, "skipped": str |
                   null, "mode": "" | "eager" | "compile" (plain-PyTorch rows), "rounds": int,
                   "round_ms_per_image": [each interleaved round's median ms/image], "min_ms_per_image",
                   "median_ms_per_image", "max_ms_per_image": their spread, "share_of_peak", "share_min",
                   "share_max": the per-round share of the same round's peak (null without a peak),
                   "peak_precision": str, "vs_baseline": the strongest plain-PyTorch row's time over this
                   row's, round by round, median (2.0 = twice as fast; null without one), "vs_baseline_min",
                   "vs_baseline_max": the spread of the per-round ratios, "baseline": that row's label}],
      "peaks": [{"precision": str, "method": str, "gflops": [one rate per round], "note": str}] (with --peak)
    }

Version 2 added the rounds, their spread, the interleaved peaks and the plain-PyTorch baseline.

A result with ``skipped`` set carries a one-line reason (engine not installed, artifact not built) and null
numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgead.bench.machine import machine_info

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class BenchResult:
    """One engine x precision x batch measurement (latencies in ms; None when ``skipped``)."""

    engine: str
    precision: str
    executed_precision: str
    batch: int
    iters: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p50_ms_per_image: float | None
    p90_ms_per_image: float | None
    p99_ms_per_image: float | None
    throughput_ips: float | None
    peak_rss_mb: float | None
    label: str = ""
    artifact: str = ""
    skipped: str | None = None
    share_of_peak: float | None = None  # median over rounds of (model FLOPs / round median) / that round's peak
    peak_precision: str = ""  # which peak (f32, bf16, int8) the share is of
    mode: str = ""  # plain-PyTorch rows: "eager" | "compile" (``bench.baseline``)
    rounds: int = 1  # interleaved rounds: each round times every row once, so drift hits all rows alike
    round_ms_per_image: tuple[float, ...] = ()  # each round's median ms/image
    min_ms_per_image: float | None = None  # min / median / max of ``round_ms_per_image``
    median_ms_per_image: float | None = None
    max_ms_per_image: float | None = None
    share_min: float | None = None  # spread of the per-round shares of peak
    share_max: float | None = None
    vs_baseline: float | None = None  # median over rounds of the strongest plain-PyTorch row's ms/image over this
    vs_baseline_min: float | None = None  # row's in the same round, and the spread of those per-round ratios
    vs_baseline_max: float | None = None
    baseline: str = ""  # the label of that row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def skip(
        cls, engine: str, precision: str, batch: int, reason: str, label: str = "", artifact: str = ""
    ) -> BenchResult:
        return cls(
            engine,
            precision,
            "-",
            batch,
            0,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            label,
            artifact,
            reason,
        )


def bench_document(results: Sequence[BenchResult], target: str = "", **extra: Any) -> dict[str, Any]:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgead.bench",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": str(target),
        "machine": machine_info(),
        "results": [r.to_dict() for r in results],
    }
    doc.update(extra)
    return doc


def write_json(path: str | Path, results: Sequence[BenchResult], target: str = "", **extra: Any) -> Path:
    from edgead.fsutil import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(bench_document(results, target, **extra), indent=2) + "\n")
    return path
