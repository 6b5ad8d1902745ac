"""Roofline: this machine's peak matrix-multiply rate per precision, and how close each engine comes to it.

Peaks are micro-benchmarks of one large ``(M, K) x (K, N)`` product, best of several timed runs, on every core:

- ``f32``: numpy (its BLAS) and an OpenVINO ``MatMul`` model; the larger counts.
- ``bf16``: an OpenVINO ``MatMul`` with ``INFERENCE_PRECISION_HINT=bf16``, measured only where the CPU has bf16
  instructions (AVX512_BF16 or AMX) *and* the compiled product really runs in bf16; otherwise reported as not
  supported by this CPU (OpenVINO silently executes f32 there).
- ``int8``: an OpenVINO model in the form NNCF writes (FakeQuantize on the activations, int8 weights with a
  dequantising scale), which the CPU plugin turns into a u8 x i8 product; the runtime precision is checked.

An engine's achieved rate is the detector's FLOPs (``edgead.export.flops``) over its p50 batch latency,
compared with the peak of the precision it executed. Achieved rates include the elementwise and data-movement
work around the products, so 100 % is out of reach; the share says how much of the hardware the engine turns
into model work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgead.bench.machine import machine_info
from edgead.bench.schema import BenchResult

SHAPE = (1024, 1024, 1024)  # M, K, N


@dataclass(frozen=True)
class Peak:
    """Best measured rate of one precision (``gflops`` None when not measurable here, with ``note`` saying
    why)."""

    precision: str
    gflops: float | None
    method: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Achieved:
    engine: str
    precision: str
    executed_precision: str
    batch: int
    flops: int
    gflops: float
    peak_precision: str
    peak_gflops: float | None
    share: float | None  # achieved / peak

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_rate(run: Callable[[], object], flops: float, seconds: float, min_runs: int = 3) -> float:
    run()  # warm-up
    best, t_end, n = float("inf"), time.perf_counter() + seconds, 0
    while n < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return flops / best / 1e9


def _numpy_f32(shape: tuple[int, int, int], seconds: float) -> float:
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    return _best_rate(lambda: np.matmul(a, b, out=out), 2.0 * m * k * n, seconds)


def _ov_runtime_precision(compiled: Any) -> set[str]:
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in ("FullyConnected", "MatMul"):
            found.add(info["runtimePrecision"].astype(str))
    return found


def _ov_matmul(shape: tuple[int, int, int], precision: str, seconds: float) -> tuple[float, set[str]]:
    import openvino as ov
    from openvino import opset13 as ops

    m, k, n = shape
    rng = np.random.default_rng(0)
    x = ops.parameter([m, k], ov.Type.f32, name="x")
    if precision == "int8":
        fq = ops.fake_quantize(x, np.float32(-4.0), np.float32(4.0), np.float32(-4.0), np.float32(4.0), 256)
        w8 = ops.constant(rng.integers(-127, 128, size=(n, k), dtype=np.int8))
        w = ops.multiply(ops.convert(w8, ov.Type.f32), ops.constant(np.full((n, 1), 0.01, np.float32)))
        y = ops.matmul(fq, w, False, True)
    else:
        y = ops.matmul(x, ops.constant(rng.standard_normal((k, n)).astype(np.float32)), False, False)
    model = ov.Model([y], [x], "peak")
    hint = {"f32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": os.cpu_count() or 1,
        },
    )
    req = compiled.create_infer_request()
    data = rng.uniform(-3, 3, size=(m, k)).astype(np.float32)
    rate = _best_rate(lambda: req.infer({0: data}), 2.0 * m * k * n, seconds)
    return rate, _ov_runtime_precision(compiled)


def measure_peaks(shape: tuple[int, int, int] = SHAPE, seconds: float = 1.0) -> dict[str, Peak]:
    """Peak GFLOP/s per precision (``f32``, ``bf16``, ``int8``) on this machine."""
    flags = machine_info()["flags"]
    peaks: dict[str, Peak] = {}
    f32_np = _numpy_f32(shape, seconds)
    try:
        f32_ov, _ = _ov_matmul(shape, "f32", seconds)
    except ImportError:
        f32_ov = 0.0
    peaks["f32"] = (
        Peak("f32", f32_ov, "openvino MatMul f32", f"numpy {f32_np:.1f} GFLOP/s")
        if f32_ov > f32_np
        else Peak("f32", f32_np, "numpy matmul f32", f"openvino {f32_ov:.1f} GFLOP/s")
    )
    if not (flags["avx512_bf16"] or flags["amx_bf16"]):
        peaks["bf16"] = Peak(
            "bf16",
            None,
            "-",
            "not supported by this CPU (no AVX512_BF16 or AMX-BF16): OpenVINO executes a bf16 request in f32",
        )
    else:
        rate, ran = _ov_matmul(shape, "bf16", seconds)
        peaks["bf16"] = (
            Peak("bf16", rate, "openvino MatMul bf16")
            if "bf16" in ran
            else Peak("bf16", None, "-", f"OpenVINO ran the bf16 request as {sorted(ran)}")
        )
    try:
        rate, ran = _ov_matmul(shape, "int8", seconds)
        ok = bool(ran & {"u8", "i8"})
        note = (
            "u8 x i8 via AVX2 (no VNNI)"
            if not (flags["avx512_vnni"] or flags["avx_vnni"])
            else "u8 x i8 VNNI"
        )
        peaks["int8"] = (
            Peak("int8", rate, "openvino FakeQuantize + int8 MatMul", note)
            if ok
            else Peak("int8", None, "-", f"OpenVINO ran the int8 product as {sorted(ran)}")
        )
    except ImportError:
        peaks["int8"] = Peak("int8", None, "-", "openvino is not installed")
    return peaks


def _peak_key(executed: str) -> str:
    head = executed.split()[0].lower()
    return {"f32": "f32", "fp32": "f32", "bf16": "bf16", "int8": "int8", "u8": "int8", "i8": "int8"}.get(
        head, "f32"
    )


def achieved_rates(
    results: Sequence[BenchResult], flops_for_batch: Callable[[int], int], peaks: dict[str, Peak]
) -> list[Achieved]:
    """Achieved GFLOP/s of each measured result and its share of the peak of the precision it executed."""
    rows = []
    for r in results:
        if r.skipped or not r.p50_ms:
            continue
        flops = int(flops_for_batch(r.batch))
        rate = flops / (r.p50_ms / 1e3) / 1e9
        key = _peak_key(r.executed_precision)
        peak = peaks.get(key)
        pg = peak.gflops if peak else None
        rows.append(
            Achieved(
                r.engine,
                r.precision,
                r.executed_precision,
                r.batch,
                flops,
                rate,
                key,
                pg,
                rate / pg if pg else None,
            )
        )
    return rows


def render_peaks(peaks: dict[str, Peak]) -> Any:
    from rich.table import Table

    t = Table(title=f"peak matmul rate, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}", title_justify="left")
    for col in ("precision", "GFLOP/s", "method", "note"):
        t.add_column(col)
    for p in peaks.values():
        t.add_row(p.precision, "-" if p.gflops is None else f"{p.gflops:.1f}", p.method, p.note)
    return t


def render_achieved(rows: Sequence[Achieved], title: str = "achieved rate vs peak") -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("engine", "precision", "executed", "batch", "GFLOP/s", "peak", "share"):
        t.add_column(col, justify="left" if col in ("engine", "precision", "executed") else "right")
    for a in rows:
        t.add_row(
            a.engine,
            a.precision,
            a.executed_precision,
            str(a.batch),
            f"{a.gflops:.1f}",
            "-" if a.peak_gflops is None else f"{a.peak_gflops:.1f} ({a.peak_precision})",
            "-" if a.share is None else f"{100 * a.share:.0f} %",
        )
    return t


def main() -> None:
    from edgead.term import make_console

    make_console().print(render_peaks(measure_peaks()))


if __name__ == "__main__":
    main()
