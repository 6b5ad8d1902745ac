"""``edgead tune OUT`` (= ``edgead compile OUT --precision auto``): the fastest faithful artifact for this machine.

1. **Plan** the candidates that make sense on this CPU (``plan``): every engine installed here at FP32; BF16 only
   where the CPU has BF16 instructions (elsewhere OpenVINO silently runs f32); INT8 only where it has VNNI or AMX
   (elsewhere INT8 is slower than FP32) and calibration images were given; OpenVINO in latency and, for batches
   above one, throughput mode; each with the batch axis dynamic and fixed at the requested batch size (static
   shapes let the engine plan every tensor once). Candidates left out are listed with the reason.
2. **Build** missing artifacts with ``edgead compile`` (reduced precisions pass its compile-time fidelity gate).
3. **Gate** every candidate again here against the FP32 export on held-out images (``--data``, else the
   calibration images, else a deterministic synthetic batch) with the project's targets (``edgead.fidelity``):
   FP32 within 1e-4, reduced precision map r >= 0.99 (and the AUROC drop on labelled data).
4. **Bench** the candidates that pass, interleaved over ``rounds`` rounds (``bench.timing.bench_runner``), at the
   requested batch size, and **choose** the fastest median ms/image; a candidate within ``noise`` of the fastest
   that keeps a higher precision wins the tie.
5. **Record** the decision, the machine (CPU model and flags) and every candidate's figures in the export's manifest
   (``extra.tune``). ``edgead.runtimes.load(OUT)`` then loads the chosen artifact with the chosen settings; on a
   machine whose CPU differs it still does, and warns that the choice was made elsewhere (rerun ``edgead tune``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgead import registry
from edgead.errors import EdgeadError, InputError

#: precision rank for ties: the higher keeps more of the model
_RANK = {"fp32": 3, "bf16": 2, "fp16": 2, "int8": 1}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Candidate:
    engine: str
    precision: str
    mode: str = "latency"  # the engine's latency or throughput setting (OpenVINO)
    static: int | None = None  # batch axis fixed at this size when the session is built (else dynamic)

    @property
    def name(self) -> str:
        tags = ([self.mode] if self.mode != "latency" else []) + ([f"static {self.static}"] if self.static else [])
        return f"{self.engine} {self.precision}" + (f" ({', '.join(tags)})" if tags else "")

    def runner_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"mode": self.mode} if self.engine == "openvino" else {}
        return {**opts, "static_batch": self.static} if self.static else opts


@dataclass(frozen=True)
class Measured:
    """One candidate's outcome: its gate verdict and, when it passed, its median ms/image at the batch size."""

    candidate: Candidate
    folder: str = ""  # relative to the export folder ("." for the export itself)
    passed: bool = False
    failures: tuple[str, ...] = ()
    fidelity: dict[str, Any] = field(default_factory=dict)
    ms_per_image: float | None = None
    runs_ms: tuple[float, ...] = ()
    executed: str = ""
    skipped: str = ""  # why it was not a candidate here / could not be built

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = {**asdict(self.candidate), "name": self.candidate.name}
        return d


def plan(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int) -> tuple[list[Candidate],
                                                                                                 list[Measured]]:
    """The candidates worth building and timing on a CPU with ``flags``, and those left out with the reason."""
    bf16 = any(flags.get(f) for f in BF16_FLAGS)
    int8 = any(flags.get(f) for f in INT8_FLAGS)
    keep: list[Candidate] = []
    out: list[Measured] = []
    for name in ("openvino", "onnxruntime"):
        if name not in available:
            reason = registry.get(name).missing() or f"{name} is not available here"
            out.append(Measured(Candidate(name, "fp32"), skipped=reason))
            continue
        modes = ("latency", "throughput") if name == "openvino" and batch > 1 else ("latency",)
        for precision in registry.get(name).precisions:
            c = [Candidate(name, precision, m) for m in modes]
            if precision == "fp16":
                out.append(Measured(c[0], skipped="FP16 graphs are for GPUs: the CPU provider computes them in FP32"))
            elif precision == "bf16" and not bf16:
                out.append(Measured(c[0], skipped="no BF16 instructions (AVX512_BF16/AMX): OpenVINO runs f32"))
            elif precision == "int8" and not int8:
                out.append(Measured(c[0], skipped="no VNNI/AMX: INT8 runs slower than FP32 on this CPU"))
            elif precision == "int8" and not has_calib:
                out.append(Measured(c[0], skipped="no calibration images (--calib DIR)"))
            else:  # each setting with the batch axis dynamic, and fixed at the line's batch size
                keep += [v for x in c for v in (x, replace(x, static=batch))]
    return keep, out


def choose(measured: Sequence[Measured], noise: float = 0.03) -> Measured:
    """The fastest candidate that passed its gate; within ``noise`` (relative) of it, the highest precision."""
    ok = [m for m in measured if m.passed and m.ms_per_image is not None]
    if not ok:
        reasons = "; ".join(f"{m.candidate.name}: {m.skipped or ', '.join(m.failures) or 'not measured'}"
                            for m in measured)
        raise EdgeadError(f"expected at least one artifact that passes its fidelity gate, found none ({reasons})")
    best = min(m.ms_per_image for m in ok)  # type: ignore[type-var]
    close = [m for m in ok if m.ms_per_image <= best * (1.0 + noise)]  # type: ignore[operator]
    return min(close, key=lambda m: (-_RANK.get(m.candidate.precision, 0), m.ms_per_image))


# -- building, gating, timing ---------------------------------------------------------------------------------
def _folder(out: Path, c: Candidate) -> Path:
    return registry.artifact_folder(out, c.engine, c.precision)


def _build(out: Path, c: Candidate, calib: Path | None) -> str:
    """Build the candidate's artifact unless it exists; '' or the one-line reason it could not be built."""
    from edgead.runtimes.manifest import MANIFEST

    folder = _folder(out, c)
    if (folder / MANIFEST).is_file():
        return ""
    from edgead.export.compile import compile_artifact

    try:
        compile_artifact(out, c.engine, c.precision, calib)
    except EdgeadError as exc:
        return str(exc).splitlines()[0]
    return ""


def _held_out(out: Path, spec: Any, data: Path | None, calib: Path | None, n: int = 16) -> np.ndarray:
    from edgead.imageio import list_images, load_batch
    from edgead.runtimes.compare import check_batch

    folder = data or calib
    if folder is not None:
        files = sorted(folder.rglob("*")) if (folder / "test").is_dir() else list_images(
            folder / "train" / "good" if (folder / "train" / "good").is_dir() else folder)
        files = [f for f in files if f.is_file() and f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")
                 and "ground_truth" not in f.parts]
        if files:
            step = max(1, len(files) // n)
            return load_batch(files[::step][:n], spec)
    return check_batch(7, n, tuple(spec.input_size))


def _gate(runner: Any, reference: Any, images: np.ndarray, precision: str) -> tuple[bool, tuple[str, ...], dict]:
    from edgead.fidelity import Budget, measure

    ref = reference.predict(images)
    got = runner.predict(images)
    f = measure(ref.scores, ref.maps, got.scores, got.maps, reference=reference.describe(),
                candidate=runner.describe(), precision=precision, threshold=runner.spec.threshold)
    failures = tuple(Budget().failures(f))
    return not failures, failures, f.to_dict()


def tune(out: str | Path, batch: int = 1, calib: str | Path | None = None, data: str | Path | None = None,
         iters: int = 20, rounds: int = 3, noise: float = 0.03, progress: Callable[[str], None] | None = None,
         flags: dict[str, bool] | None = None, planner: Callable[..., tuple[list[Candidate], list[Measured]]] = plan,
         wide_gap: float | None = None) -> dict[str, Any]:
    """Plan, build, gate, bench and choose for the export folder ``out``; record and return the decision.

    ``planner`` (default ``plan``) lists the candidates; ``wide_gap`` (e.g. 0.3) stops timing, after the first
    round, a candidate that was more than that much slower than the fastest (it cannot win; its one round is
    kept)."""
    import edgead.runtimes as rt
    from edgead.bench.machine import machine_info
    from edgead.bench.timing import bench_runner
    from edgead.runtimes.manifest import MANIFEST, read_manifest

    out = Path(out)
    if not (out / MANIFEST).is_file() or read_manifest(out, verify=False).engine != "onnxruntime":
        raise InputError(f"expected an export folder (edgead export CKPT -o OUT) with {MANIFEST}, found none at {out}")
    if batch < 1 or iters < 1 or rounds < 1:
        raise InputError(f"expected --batch, --iters and --rounds of at least 1, found {batch}, {iters}, {rounds}")
    say = progress or (lambda _msg: None)
    calib_dir = Path(calib) if calib else None
    data_dir = Path(data) if data else None
    machine = machine_info()
    cpu_flags = flags if flags is not None else machine["flags"]
    candidates, results = planner(cpu_flags, rt.available_engines(), calib_dir is not None, batch)
    reference = rt.load(out, "onnxruntime")
    images = _held_out(out, reference.spec, data_dir, calib_dir)
    timed: list[tuple[Measured, Any]] = []
    for c in candidates:
        say(f"{c.name}: build and gate")
        reason = _build(out, c, calib_dir)
        folder = _folder(out, c)
        rel = "." if folder == out else folder.name
        if reason:
            results.append(Measured(c, rel, skipped=reason))
            continue
        runner = rt.load(folder, c.engine, **c.runner_options())
        passed, failures, fid = _gate(runner, reference, images, c.precision)
        m = Measured(c, rel, passed, failures, fid, executed=runner.executed_precision())
        if passed:
            timed.append((m, runner))
        else:
            runner.close()
            results.append(m)
    reference.close()
    runs: dict[int, list[float]] = {i: [] for i in range(len(timed))}
    losing: list[int] = []
    for r in range(rounds):  # interleaved: each round times every candidate once, so drift hits all alike
        if r == 1 and wide_gap is not None and runs:
            fastest = min(v[0] for v in runs.values())
            losing = [i for i, v in runs.items() if v[0] > fastest * (1.0 + wide_gap)]
        for i, (m, runner) in enumerate(timed):
            if r >= 1 and wide_gap is not None and i in losing:
                continue
            say(f"round {r + 1}/{rounds}: {m.candidate.name}")
            res = bench_runner(runner, [batch], iters, 3, m.candidate.name)[0]
            runs[i].append(float(res.p50_ms_per_image))
    for i, (m, runner) in enumerate(timed):
        runner.close()
        results.append(replace(m, ms_per_image=statistics.median(runs[i]), runs_ms=tuple(runs[i])))
    chosen = choose(results, noise)
    decision = {
        "chosen": {"engine": chosen.candidate.engine, "precision": chosen.candidate.precision,
                   "mode": chosen.candidate.mode, "static_batch": chosen.candidate.static, "folder": chosen.folder,
                   "ms_per_image": chosen.ms_per_image},
        "batch": batch, "rounds": rounds, "iters": iters, "noise": noise,
        "machine": {"cpu_model": machine["cpu_model"], "cores": machine["cores"], "flags": cpu_flags},
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "candidates": [m.to_dict() for m in results],
    }
    record(out, decision)
    return decision


def record(out: Path, decision: dict[str, Any]) -> None:
    """Write ``decision`` into the export's manifest (``extra.tune``), keeping everything else as it was."""
    from edgead.runtimes.manifest import read_manifest, write_manifest

    m = read_manifest(out)
    write_manifest(out, m.engine, m.precision, m.model, m.spec, m.versions, m.batch, {**m.extra, "tune": decision})
