"""Benchmarks: end-to-end latency of runners (``latency``, over ``schema``, ``machine``, ``timing``, ``discovery``
and ``report``), FLOPs vs the machine's peak (``roofline``) and the
DyT vs LayerNorm study (``norms``). A benchmark measures built artifacts; it never builds one itself except in
the study, which exports and compiles its own pair of detectors."""

from edgead.bench.latency import BenchResult, bench_runner, bench_target, render_table, run_bench, write_json

__all__ = ["BenchResult", "bench_runner", "bench_target", "render_table", "run_bench", "write_json"]
