"""``edgead tune OUT`` (= ``edgead compile OUT --precision auto``): the fastest faithful artifact for this machine.

1. **Plan** the candidates that make sense on this CPU (``plan``): every CPU engine installed here (the registry's
   ``tunable`` rows) at FP32; a reduced precision only where the CPU has the instructions the precision table
   (``edgead.precisions``) names for it (BF16: AVX512_BF16/AMX, elsewhere OpenVINO silently runs f32; INT8:
   VNNI/AMX, elsewhere slower than FP32), INT8 only with calibration images; each of the engine's runner modes
   (OpenVINO: latency and, for batches above one, throughput); each with the batch axis dynamic and, where the
   runner can, fixed (static shapes let the engine plan every tensor once): at the requested batch size in
   latency mode, at one image in throughput mode, whose runner runs a batch's images concurrently on its infer
   requests (OpenVINO's streams); and, for
   a quantised precision on an engine that can run its float part in a reduced precision (``Engine.rest_hint``,
   ``Precision.rest``: OpenVINO's ``INFERENCE_PRECISION_HINT`` on an INT8 IR), each of those settings again with
   that part in BF16 where the CPU runs BF16 natively ("openvino int8 + bf16 rest": the int8 products stay int8,
   what NNCF left in float runs in bf16; the same artifact, no second build). Candidates left out are listed with
   the reason.
2. **Build** missing artifacts with ``edgead compile`` (reduced precisions pass its compile-time fidelity gate),
   each artifact folder once.
3. **Gate** every candidate again here against the export's FP32 reference (``fidelity.reference_for``) on
   held-out images (``--data``, else the
   calibration images, else a deterministic synthetic batch) with the project's targets (``edgead.fidelity``):
   FP32 within 1e-4, reduced precision map r >= 0.99 (and the AUROC drop on labelled data). A float-rest variant
   is also held to the compile-time gate its artifact passed with the float part in f32 (``export.gate``: the
   same validation images, image AUROC drop interval, Q1 AUPRO drop), judged again with its runner settings; a
   miss refuses it (a failure in the record, not an error), and its figures go into its row
   (``compile_fidelity``).
4. **Bench** the candidates that pass, interleaved over ``rounds`` rounds (``bench.timing.bench_runner``), at the
   requested batch size, and **choose** the fastest, ranked round by round (each candidate's median over the rounds
   of its time over that round's fastest, so the machine's drift between rounds cancels); a candidate within
   ``noise`` of the fastest that keeps a higher precision wins the tie (the float part in f32 over a reduced float
   rest, too).
5. **Record** the decision, the machine (CPU model and flags) and every candidate's figures in the export's manifest
   (``extra.tune``; the chosen float rest as ``rest`` and its ``precision_hint``). ``edgead.runtimes.load(OUT)``
   then loads the chosen artifact with the chosen settings (a decision without ``rest``: full precision); on a
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

from edgead import precisions, registry
from edgead.errors import EdgeadError, FidelityError, InputError


@dataclass(frozen=True)
class Candidate:
    engine: str
    precision: str
    mode: str = "latency"  # the engine's runner mode (OpenVINO: latency or throughput; ``Engine.modes``)
    static: int | None = None  # batch axis fixed at this size when the session is built (else dynamic)
    rest: str | None = None  # a quantised artifact's float part run in this precision (``Precision.rest``), else f32

    @property
    def name(self) -> str:
        eng = registry.find(self.engine)
        default = eng.modes[0] if eng is not None else self.mode  # the engine's default mode goes unsaid
        tags = ([self.mode] if self.mode != default else []) + ([f"static {self.static}"] if self.static else [])
        rest = f" + {self.rest} rest" if self.rest else ""
        return f"{self.engine} {self.precision}{rest}" + (f" ({', '.join(tags)})" if tags else "")

    def runner_options(self) -> dict[str, Any]:
        return registry.get(self.engine).runner_options(self.mode, self.static, self.rest)


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
    #: median over its rounds of its time over the round's fastest candidate's (1.0: fastest in most rounds); the
    #: machine's drift between rounds cancels in it, so ``choose`` ranks by it
    relative: float | None = None
    executed: str = ""
    skipped: str = ""  # why it was not a candidate here / could not be built
    #: a float-rest variant's compile-time gate record (``export.gate.measured``): its artifact's validation judged
    #: again with the variant's runner settings
    compile_fidelity: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = {**asdict(self.candidate), "name": self.candidate.name}
        return d


def plan(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int) -> tuple[list[Candidate],
                                                                                                 list[Measured]]:
    """The candidates worth building and timing on a CPU with ``flags``, and those left out with the reason."""
    keep: list[Candidate] = []
    out: list[Measured] = []
    for eng in registry.tunable():
        if eng.name not in available:
            reason = eng.missing() or f"{eng.name} is not available here"
            out.append(Measured(Candidate(eng.name, precisions.full().name), skipped=reason))
            continue
        modes = eng.modes if batch > 1 else eng.modes[:1]
        for precision in eng.precisions:
            p = precisions.get(precision)
            c = [Candidate(eng.name, precision, m) for m in modes]
            if not p.native_on(flags):
                out.append(Measured(c[0], skipped=p.slow_cpu))
            elif p.quantized and not has_calib:
                out.append(Measured(c[0], skipped="no calibration images (--calib DIR)"))
            else:  # each setting with the batch axis dynamic, and (where the runner can) fixed: at the line's
                # batch in the engine's first (latency) mode; at one image in its other (throughput) modes, whose
                # runner spreads a batch's chunks over its concurrent infer requests (streams)
                settings = [v for x in c for v in ((x, replace(x, static=batch if x.mode == eng.modes[0] else 1))
                                                   if eng.static_batch else (x,))]
                keep += settings
                for r in eng.rests(precision):  # the same artifact, its float part in a reduced precision
                    if r.native_on(flags):
                        keep += [replace(x, rest=r.name) for x in settings]
                    else:
                        out.append(Measured(replace(c[0], rest=r.name), skipped=r.slow_cpu))
    return keep, out


def choose(measured: Sequence[Measured], noise: float = 0.03) -> Measured:
    """The fastest candidate that passed its gate; within ``noise`` (relative) of it, the highest precision (and,
    between the same precision's settings, a float part kept in full precision over one in a reduced ``rest``).

    With none: a ``FidelityError`` when some candidate was measured and missed its gate, else an ``EdgeadError``
    (nothing could be built or run)."""
    ok = [m for m in measured if m.passed and m.ms_per_image is not None]
    if not ok:
        reasons = "; ".join(f"{m.candidate.name}: {m.skipped or ', '.join(m.failures) or 'not measured'}"
                            for m in measured)
        error = FidelityError if any(m.failures for m in measured) else EdgeadError
        exc = error(f"expected at least one artifact that passes its fidelity gate, found none ({reasons})")
        exc.missed = [(m.candidate.name, m.failures) for m in measured if m.failures]  # type: ignore[attr-defined]
        raise exc
    paired = all(m.relative is not None for m in ok)

    def speed(m: Measured) -> float:  # round-paired when every candidate has it, else the plain median
        return float(m.relative if paired else m.ms_per_image)  # type: ignore[arg-type]

    best = min(speed(m) for m in ok)
    close = [m for m in ok if speed(m) <= best * (1.0 + noise)]
    return min(close, key=lambda m: (-_keeps(m.candidate.precision),
                                     -_keeps(m.candidate.rest or precisions.full().name), speed(m)))


def _own_threshold(m: Measured) -> dict[str, float]:
    """``{"threshold": T}`` when the candidate's own compile-time gate recomputed the threshold it applies (a
    setting that shares its artifact folder, such as a bf16 rest, moves the scores the folder's threshold was
    recomputed from); ``runtimes.load`` applies it."""
    t = (m.compile_fidelity.get("threshold") or {}) if m.compile_fidelity else {}
    value = t.get("recomputed") if t.get("applied") else None
    return {"threshold": float(value)} if isinstance(value, (int, float)) else {}


def _keeps(precision: str) -> int:
    p = precisions.find(precision)
    return p.keeps if p is not None else 0


# -- building, gating, timing ---------------------------------------------------------------------------------
def _folder(out: Path, c: Candidate) -> Path:
    return registry.artifact_folder(out, c.engine, c.precision)


def _build(out: Path, c: Candidate, calib: Path | None) -> tuple[str, bool]:
    """Build the candidate's artifact unless it exists: ('', False), or the one-line reason it could not be built
    and whether that reason is the compile-time fidelity gate refusing it (a miss, not a build failure)."""
    from edgead.runtimes.manifest import MANIFEST

    folder = _folder(out, c)
    if (folder / MANIFEST).is_file():
        return "", False
    from edgead.export.compile import compile_artifact

    try:
        compile_artifact(out, c.engine, c.precision, calib)
    except EdgeadError as exc:
        return str(exc).splitlines()[0], isinstance(exc, FidelityError)
    return "", False


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


def _gate(runner: Any, reference: Any, images: np.ndarray, precision: str, noise: float,
          ref: Any = None) -> tuple[bool, tuple[str, ...], dict]:
    """``runner`` against ``reference`` on ``images`` (``ref``: the reference's predictions on them, if known)."""
    from edgead.fidelity import Budget, measure

    ref = reference.predict(images) if ref is None else ref
    got = runner.predict(images)
    f = measure(ref.scores, ref.maps, got.scores, got.maps, reference=reference.describe(),
                candidate=runner.describe(), precision=precision, threshold=reference.spec.threshold,
                candidate_threshold=runner.spec.threshold, noise=noise)
    failures = tuple(Budget.for_precision(precision).failures(f))
    return not failures, failures, f.to_dict()


def _compile_gate(out: Path, folder: Path, runner: Any, reference: Any, precision: str, calib: Path | None
                  ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """A float-rest variant held to the compile-time gate its artifact passed (``export.gate``: the same validation
    images, image AUROC drop interval, Q1 AUPRO drop and map r, ``Budget.for_precision``), run with the variant's
    runner (``gate.target_for`` keeps the reference's outputs for the next variant). Returns (failures, the gate
    record)."""
    from edgead.export import gate
    from edgead.fidelity import Budget

    calib_dir, val_dir = gate.validated_on(folder, calib)
    target = gate.target_for(out, reference, calib_dir, val_dir, Budget.for_precision(precision))
    if target is None:
        return ("compile-time gate: no validation data (--calib DIR)",), {}
    rec = gate.measured(runner, target)
    return tuple(f"compile-time gate: {f}" for f in rec["failures"]), rec


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
    from edgead.fidelity import reference_for, score_noise
    from edgead.runtimes.manifest import MANIFEST, export_of, is_export, read_manifest

    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise InputError(f"expected an export folder (edgead export CKPT -o OUT) with {MANIFEST}, found none at {out}")
    if not is_export(out):
        found = read_manifest(out, verify=False)
        hint = f"; pass its export folder {out.parent}" if export_of(out) is not None else ""
        raise InputError(f"expected an export folder (edgead export CKPT -o OUT), found the {found.engine} "
                         f"{found.precision} artifact {out}{hint}")
    if batch < 1 or iters < 1 or rounds < 1:
        raise InputError(f"expected --batch, --iters and --rounds of at least 1, found {batch}, {iters}, {rounds}")
    say = progress or (lambda _msg: None)
    calib_dir = Path(calib) if calib else None
    data_dir = Path(data) if data else None
    machine = machine_info()
    cpu_flags = flags if flags is not None else machine["flags"]
    candidates, results = planner(cpu_flags, rt.available_engines(), calib_dir is not None, batch)
    ref = reference_for(out)  # the one rule for an export root's FP32 reference (never tune's own redirect)
    reference = ref.runner
    images = _held_out(out, reference.spec, data_dir, calib_dir)
    ties = score_noise(read_manifest(out, verify=False).extra)  # the reference's own noise: differences are ties
    timed: list[tuple[Measured, Any]] = []
    ref_pred = None  # the reference's predictions on the held-out images, made once for every candidate
    built: dict[Path, tuple[str, bool]] = {}  # one build per artifact folder: a float-rest variant shares its artifact
    for c in candidates:
        say(f"{c.name}: build and gate")
        folder = _folder(out, c)
        if folder not in built:
            built[folder] = _build(out, c, calib_dir)
        reason, refused = built[folder]
        rel = "." if folder == out else folder.name
        if refused:  # the compile-time gate measured it and refused it: a fidelity miss like the one below
            results.append(Measured(c, rel, failures=(reason,)))
            continue
        if reason:
            results.append(Measured(c, rel, skipped=reason))
            continue
        runner = rt.load(folder, c.engine, **c.runner_options())
        if ref_pred is None:
            ref_pred = reference.predict(images)
        passed, failures, fid = _gate(runner, reference, images, c.precision, ties, ref_pred)
        compile_fid: dict[str, Any] = {}
        if passed and c.rest:  # the artifact passed its compile-time gate with its float part in full precision
            say(f"{c.name}: the compile-time fidelity gate with the float rest in {c.rest}")
            failures, compile_fid = _compile_gate(out, folder, runner, ref, c.precision, calib_dir)
            passed = not failures
        m = Measured(c, rel, passed, failures, fid, executed=runner.executed_precision(),
                     compile_fidelity=compile_fid)
        if passed:
            timed.append((m, runner))
        else:
            runner.close()
            results.append(m)
    ref.close()
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
    fastest_in = [min(v[r] for v in runs.values() if len(v) > r) for r in range(rounds)] if runs else []
    for i, (m, runner) in enumerate(timed):
        runner.close()
        relative = statistics.median(t / fastest_in[r] for r, t in enumerate(runs[i]))
        results.append(replace(m, ms_per_image=statistics.median(runs[i]), runs_ms=tuple(runs[i]), relative=relative))
    chosen = choose(results, noise)
    decision = {
        "chosen": {"engine": chosen.candidate.engine, "precision": chosen.candidate.precision,
                   "mode": chosen.candidate.mode, "static_batch": chosen.candidate.static, "folder": chosen.folder,
                   "ms_per_image": chosen.ms_per_image, "rest": chosen.candidate.rest,
                   "precision_hint": registry.get(chosen.candidate.engine).rest_precision_hint(chosen.candidate.rest)
                   or None, **_own_threshold(chosen)},
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
