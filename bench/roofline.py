"""Roofline: this machine's peak matrix-multiply rate per precision, and how close each engine comes to it.

Peaks are micro-benchmarks of one large ``(M, K) x (K, N)`` product on every core, each the best of the runs in a
short window, timed with the engine's own kernels (``PeakSampler``; ``edgead bench`` samples them once per
interleaved round, between the rows they divide, and reports their spread):

- ``f32``: the best of OpenVINO's two f32 product kernels, the ``FullyConnected`` a ``MatMul`` becomes (MLAS on
  x86) and the same product as a 1x1 ``Convolution`` (oneDNN's brgconv): the detector's f32 IR runs both. numpy's
  BLAS is timed beside them and shown as a note, not used as the yardstick (it is not what the engines run);
  numpy stands in only where OpenVINO is missing.
- ``bf16``: an OpenVINO ``MatMul`` with ``INFERENCE_PRECISION_HINT=bf16``, measured only where the CPU has bf16
  instructions (AVX512_BF16 or AMX) *and* the compiled product really runs in bf16; otherwise reported as not
  supported by this CPU (OpenVINO silently executes f32 there).
- ``int8``: an OpenVINO model in the form NNCF writes (FakeQuantize on the activations, int8 weights with a
  dequantising scale), which the CPU plugin turns into a u8 x i8 product (VNNI or AMX where present); the runtime
  precision is checked.

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

from edgead import precisions
from edgead.bench.machine import machine_info
from edgead.bench.schema import BenchResult

SHAPE = (1024, 1024, 1024)  # M, K, N
#: the peaks' keys: executed precisions as the engines name them (``Runner.executed_precision``)
F32, BF16, INT8 = precisions.FP32.executed, precisions.BF16.executed, precisions.INT8.executed


@dataclass(frozen=True)
class Peak:
    """Best measured rate of one precision (``gflops`` None when not measurable here, with ``note`` saying
    why)."""

    precision: str
    gflops: float | None
    method: str
    note: str = ""
    runs: tuple[float, ...] = ()  # one rate per sample (interleaved rounds); ``gflops`` is their median

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
    label: str = ""

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


def _ov_runtime_precision(compiled: Any) -> set[str]:
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in ("FullyConnected", "MatMul"):
            found.add(info["runtimePrecision"].astype(str))
    return found


_PRODUCT_LAYERS = ("FullyConnected", "MatMul", "Convolution")


def ov_kernel(request: Any) -> str:
    """``layer type kernel`` of the product an OpenVINO infer request (compiled with PERF_COUNT) ran last, e.g.
    ``FullyConnected gemm_mlas_f32`` or ``Convolution brgconv_avx512_1x1_f32``."""
    found = [f"{p.node_type} {p.exec_type}" for p in request.profiling_info if p.node_type.startswith(_PRODUCT_LAYERS)]
    return found[0] if found else "?"


def _compile_peak(model: Any, hint: str) -> Any:
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                  "INFERENCE_NUM_THREADS": os.cpu_count() or 1, "PERF_COUNT": True})


def _ov_conv1x1_request(shape: tuple[int, int, int]) -> tuple[Callable[[], object], str]:
    """The same f32 product as a 1x1 convolution (M = 32 x 32 pixels, K channels in, N out): OpenVINO runs it on
    oneDNN's brgconv, where its FullyConnected may run on MLAS; the detector's f32 IR uses both. Returns the call
    and the kernel that ran it."""
    import openvino as ov
    from openvino import opset13 as ops

    m, k, n = shape
    side = int(round(m ** 0.5))
    if side * side != m:
        raise ValueError(f"expected a square M for the 1x1 convolution peak, found {m}")
    rng = np.random.default_rng(0)
    x = ops.parameter([1, k, side, side], ov.Type.f32, name="x")
    w = ops.constant(rng.standard_normal((n, k, 1, 1)).astype(np.float32))
    compiled = _compile_peak(ov.Model([ops.convolution(x, w, [1, 1], [0, 0], [0, 0], [1, 1])], [x], "peak1x1"),
                             precisions.FP32.openvino_hint)
    req = compiled.create_infer_request()
    data = rng.uniform(-3, 3, size=(1, k, side, side)).astype(np.float32)
    req.infer({0: data})
    return (lambda: req.infer({0: data})), ov_kernel(req)


def _ov_matmul_request(shape: tuple[int, int, int], precision: str) -> tuple[Callable[[], object], set[str]]:
    """A compiled OpenVINO product of ``shape`` at ``precision`` (one call = one product) and the runtime
    precisions its products report."""
    run, ran, _ = _ov_matmul_kernel(shape, precision)
    return run, ran


def _ov_matmul_kernel(shape: tuple[int, int, int], precision: str) -> tuple[Callable[[], object], set[str], str]:
    """``_ov_matmul_request`` and the kernel that ran the product (``ov_kernel``)."""
    import openvino as ov
    from openvino import opset13 as ops

    p = precisions.get(precision)
    m, k, n = shape
    rng = np.random.default_rng(0)
    x = ops.parameter([m, k], ov.Type.f32, name="x")
    if p.quantized:
        fq = ops.fake_quantize(x, np.float32(-4.0), np.float32(4.0), np.float32(-4.0), np.float32(4.0), 256)
        w8 = ops.constant(rng.integers(-127, 128, size=(n, k), dtype=np.int8))
        w = ops.multiply(ops.convert(w8, ov.Type.f32), ops.constant(np.full((n, 1), 0.01, np.float32)))
        y = ops.matmul(fq, w, False, True)
    else:
        y = ops.matmul(x, ops.constant(rng.standard_normal((k, n)).astype(np.float32)), False, False)
    model = ov.Model([y], [x], "peak")
    compiled = _compile_peak(model, p.openvino_hint)
    req = compiled.create_infer_request()
    data = rng.uniform(-3, 3, size=(m, k)).astype(np.float32)
    req.infer({0: data})
    return (lambda: req.infer({0: data})), _ov_runtime_precision(compiled), ov_kernel(req)


def _ov_matmul(shape: tuple[int, int, int], precision: str, seconds: float) -> tuple[float, set[str]]:
    run, ran = _ov_matmul_request(shape, precision)
    m, k, n = shape
    return _best_rate(run, 2.0 * m * k * n, seconds), ran


class PeakSampler:
    """This machine's peaks, measured again each time ``sample`` is called, so they can be interleaved with the
    rows they divide (``bench.timing.bench_interleaved``'s ``before_round``).

    Each precision's peak is the best of the engine's own kernels for it, as OpenVINO's CPU plugin picks them (the
    kernel names come from its performance counters): for f32 the ``FullyConnected`` product (MLAS on x86) and
    the same product as a 1x1 ``Convolution`` (oneDNN's brgconv), the two kernels the detector's f32 IR runs; for
    bf16 and int8 the ``MatMul`` as the IRs write it (oneDNN brgemm, AMX where present). numpy's BLAS is timed
    beside them and reported as a note, never as the yardstick: a share of peak should say how much of *the
    kernels the engine runs* the detector gets (numpy stands in only where OpenVINO is not installed).
    Precisions this CPU cannot run are ``Peak(gflops=None)`` with the reason.
    """

    def __init__(self, shape: tuple[int, int, int] = SHAPE, seconds: float = 0.3,
                 flags: dict[str, bool] | None = None) -> None:
        self.shape, self.seconds = shape, seconds
        self.flops = 2.0 * shape[0] * shape[1] * shape[2]
        flags = flags if flags is not None else machine_info()["flags"]
        self.kernels: dict[str, list[tuple[str, Callable[[], object]]]] = {}
        self.notes: dict[str, str] = {}
        self.runs: dict[str, list[float]] = {}
        self.kernel_runs: dict[str, list[float]] = {}
        self._numpy = _numpy_matmul(shape)
        self.numpy_runs: list[float] = []
        self.engine_kernels = True  # False: numpy stands in for f32 (OpenVINO is not installed)
        try:
            import openvino  # noqa: F401
        except ImportError:
            self.engine_kernels = False
            self.kernels[F32] = [("numpy matmul f32 (OpenVINO not installed)", self._numpy)]
            self.notes.update({BF16: "openvino is not installed", INT8: "openvino is not installed"})
            return
        run, _, kernel = _ov_matmul_kernel(shape, F32)
        self.kernels[F32] = [(f"openvino {kernel}", run)]
        try:
            run, kernel = _ov_conv1x1_request(shape)
            self.kernels[F32].append((f"openvino {kernel}", run))
        except ValueError:
            pass
        if not precisions.BF16.native_on(flags):
            self.notes[BF16] = ("not supported by this CPU (no AVX512_BF16 or AMX-BF16): OpenVINO executes a "
                                "bf16 request in f32")
        else:
            run, ran, kernel = _ov_matmul_kernel(shape, BF16)
            if BF16 in {precisions.executed(r) for r in ran}:
                self.kernels[BF16] = [(f"openvino {kernel}", run)]
            else:
                self.notes[BF16] = f"OpenVINO ran the bf16 request as {sorted(ran)}"
        run, ran, kernel = _ov_matmul_kernel(shape, INT8)
        if INT8 in {precisions.executed(r) for r in ran}:
            isa = "AMX" if flags.get("amx_int8") else "VNNI" if precisions.INT8.native_on(flags) else "AVX2, no VNNI"
            self.kernels[INT8] = [(f"openvino FakeQuantize + {kernel} (u8 x i8, {isa})", run)]
        else:
            self.notes[INT8] = f"OpenVINO ran the int8 product as {sorted(ran)}"

    @property
    def methods(self) -> dict[str, str]:
        return {p: " | ".join(name for name, _ in ks) for p, ks in self.kernels.items()}

    def sample(self, _round: int = 0) -> dict[str, float]:
        """Measure every kernel once now (best of ``seconds`` of runs); returns this sample's GFLOP/s per precision
        (the best of its kernels)."""
        now = {}
        for p, ks in self.kernels.items():
            rates = []
            for name, run in ks:
                rates.append(_best_rate(run, self.flops, self.seconds))
                self.kernel_runs.setdefault(name, []).append(rates[-1])
            now[p] = max(rates)
            self.runs.setdefault(p, []).append(now[p])
        if self.engine_kernels:
            self.numpy_runs.append(_best_rate(self._numpy, self.flops, self.seconds))
        return now

    def peaks(self) -> dict[str, Peak]:
        """Each precision's median over the samples so far, with its spread; the note gives each kernel's median."""
        out = {}
        for p in (F32, BF16, INT8):
            runs = tuple(self.runs.get(p, ()))
            parts = [f"{name.removeprefix('openvino ')} {float(np.median(self.kernel_runs[name])):.1f}"
                     for name, _ in self.kernels.get(p, ()) if self.kernel_runs.get(name)]
            note = self.notes.get(p, "")
            if len(parts) > 1:
                note = "best of: " + ", ".join(parts) + " GFLOP/s (medians)"
            if p == F32 and self.numpy_runs:
                numpy = float(np.median(self.numpy_runs))
                note += f"{'; ' if note else ''}numpy {numpy:.1f} GFLOP/s (not the yardstick)"
            if runs:
                out[p] = Peak(p, float(np.median(runs)), self.methods[p], note, runs)
            else:
                out[p] = Peak(p, None, "-", note)
        return out


def _numpy_matmul(shape: tuple[int, int, int]) -> Callable[[], object]:
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    return lambda: np.matmul(a, b, out=out)


def measure_peaks(shape: tuple[int, int, int] = SHAPE, seconds: float = 1.0) -> dict[str, Peak]:
    """Peak GFLOP/s per precision (``f32``, ``bf16``, ``int8``) on this machine, measured once now."""
    sampler = PeakSampler(shape, seconds)
    sampler.sample()
    return sampler.peaks()


def _peak_key(executed: str) -> str:
    """The peak an executed precision (``int8 79/93``, ``u8``, ``fp32``) is divided by; f32 for any other."""
    key = precisions.executed(executed.split()[0])
    return key if key in (F32, BF16, INT8) else F32


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
                r.label,
            )
        )
    return rows


def round_shares(result: BenchResult, flops: int, peak: Peak | None) -> tuple[float, float, float] | None:
    """(min, median, max) over the interleaved rounds of (FLOPs / that round's median time) / that round's peak,
    or None when the row has no rounds or the peak was not sampled once per round."""
    rounds = result.round_ms_per_image
    if peak is None or not rounds or len(peak.runs) != len(rounds):
        return None
    shares = [flops / (ms * result.batch / 1e3) / 1e9 / g for ms, g in zip(rounds, peak.runs, strict=True)]
    return min(shares), float(np.median(shares)), max(shares)


def render_peaks(peaks: dict[str, Peak]) -> Any:
    from rich.table import Table

    t = Table(title=f"peak matmul rate, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}", title_justify="left")
    for col in ("precision", "GFLOP/s", "min-max", "method", "note"):
        t.add_column(col)
    for p in peaks.values():
        spread = f"{min(p.runs):.1f}-{max(p.runs):.1f} ({len(p.runs)})" if len(p.runs) > 1 else "-"
        t.add_row(p.precision, "-" if p.gflops is None else f"{p.gflops:.1f}", spread, p.method, p.note)
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
