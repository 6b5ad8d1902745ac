"""Latency benchmark of runners: engines x precisions x batch sizes, end to end through ``Runner.predict``.

Each measurement feeds uint8 images (``edgead.runtimes.compare.check_batch``) and gets scores and maps back,
so preprocessing, the network, postprocessing and the copies out are all inside the time. After ``warmup``
calls, ``iters`` calls are timed one by one; p50/p90/p99 come from those. Peak memory is the largest resident
set size sampled (every 2 ms, from ``/proc/self/statm``) while the runner was being loaded and timed;
Python-level tracing would miss the engines' native buffers.

JSON (``write_json``), ``schema_version`` 1::

    {
      "schema_version": 1, "kind": "edgead.bench", "created": "<ISO 8601 UTC>", "target": "<path or label>",
      "machine": {"cpu_model": str, "cores": int, "physical_cores": int | null, "system": str, "python": str,
                  "flags": {"avx2": bool, "fma": bool, "avx512f": bool, "avx512_vnni": bool, "avx_vnni": bool,
                            "avx512_bf16": bool, "amx_bf16": bool, "amx_int8": bool},
                  "versions": {package: version or null}},
      "results": [{"engine": str, "precision": str (what the artifact was built as),
                   "executed_precision": str (what the engine ran: f32, bf16, int8 ...), "batch": int,
                   "iters": int, "p50_ms", "p90_ms", "p99_ms": per batch, "p50_ms_per_image",
                   "p90_ms_per_image", "p99_ms_per_image", "throughput_ips": images/s (float, null when
                   skipped), "peak_rss_mb": float | null, "label": str, "artifact": str, "skipped": str |
                   null}]
    }

A result with ``skipped`` set carries a one-line reason (engine not installed, artifact not built) and null
numbers.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgead import registry
from edgead.errors import EdgeadError
from edgead.runtimes.base import Runner
from edgead.runtimes.compare import check_batch

SCHEMA_VERSION = 1
DEFAULT_BATCHES = (1, 8)
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
_VERSIONED = ("edgead", "numpy", "torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt")


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
            for _ in range(warmup):
                runner.predict(images)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                preds = runner.predict(images)
                times.append(time.perf_counter() - t0)
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


# -- targets: a checkpoint or an export folder ---------------------------------------------------------------
def _reference_source(target: Path) -> Path | None:
    """The checkpoint behind ``target``: itself, or the one an export's manifest names."""
    if registry.is_checkpoint(target):
        return target
    try:
        from edgead.runtimes.manifest import read_manifest

        ckpt = read_manifest(target, verify=False).extra.get("checkpoint")
    except EdgeadError:
        return None
    return Path(ckpt) if ckpt and Path(ckpt).is_dir() else None


def _load(target: Path, engine: str, precision: str) -> tuple[Runner | None, str, str]:
    """(runner or None, artifact path, reason when None)."""
    from edgead import runtimes

    eng = registry.get(engine)
    missing = eng.missing()
    if missing:
        return None, "", missing
    if eng.checkpoint:
        src = _reference_source(target)
        if src is None:
            return (
                None,
                "",
                "no checkpoint: the export's manifest names none (export with a checkpoint source)",
            )
        return runtimes.load(src, engine=eng.name), str(src), ""
    folder = registry.artifact_folder(target, eng.name, precision)
    if not (folder / registry.MANIFEST).is_file():
        hint = eng.build_hint(precision)
        return None, str(folder), f"no {folder.name}/ artifact" + (f" (build it: {hint})" if hint else "")
    try:
        return runtimes.load(folder, engine=engine), str(folder), ""
    except EdgeadError as exc:
        return None, str(folder), str(exc).splitlines()[0]


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
                runner, path, reason = _load(target, eng, prec)
            if runner is None:
                results += [BenchResult.skip(eng, prec, b, reason, label, path) for b in batches]
                continue
            if progress is not None:
                progress(f"{label}: batches {', '.join(map(str, batches))}, {iters} iterations")
            with runner:
                rows = bench_runner(runner, batches, iters, warmup, label)
            results += [replace(r, peak_rss_mb=max(r.peak_rss_mb or 0.0, load_mem.peak_mb)) for r in rows]
    return results


# -- machine, JSON, table ------------------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the instruction-set flags that decide f32/bf16/int8 speed, and package versions."""
    model, flags = _cpuinfo()
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in _VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 1,
        "physical_cores": physical,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "flags": {f: f in flags for f in _FLAGS},
        "versions": versions,
    }


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


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_table(results: Sequence[BenchResult], title: str = "edgead bench") -> Any:
    """A rich ``Table``: one row per engine x precision x batch; a skipped combination is one row with its
    reason."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (
        "engine",
        "precision",
        "executed",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "ms/img",
        "img/s",
        "peak RSS MB",
    ):
        table.add_column(col, justify="left" if col in ("engine", "precision", "executed") else "right")
    skipped: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        if r.skipped:
            skipped.setdefault((r.engine, r.precision, r.skipped), []).append(str(r.batch))
            continue
        table.add_row(
            r.engine,
            r.precision,
            r.executed_precision,
            str(r.batch),
            _fmt(r.p50_ms),
            _fmt(r.p90_ms),
            _fmt(r.p99_ms),
            _fmt(r.p50_ms_per_image),
            _fmt(r.throughput_ips, 1),
            _fmt(r.peak_rss_mb, 0),
        )
    if skipped:
        table.caption = "\n".join(
            f"skipped {engine} {precision} (batch {','.join(b)}): {escape(reason)}"
            for (engine, precision, reason), b in skipped.items()
        )
        table.caption_justify = "left"
    return table


def run_bench(
    target: str | Path,
    engine: str | Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iters: int = 20,
    json_path: str | Path | None = None,
    console: Any = None,
    warmup: int = 3,
) -> list[BenchResult]:
    """``edgead bench``: benchmark ``target``, print the table, write JSON when ``json_path`` is given."""
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
    console.print(render_table(results, f"edgead bench {target}"))
    if json_path is not None:
        write_json(json_path, results, str(target))
        console.print(f"wrote {json_path}")
    return results
