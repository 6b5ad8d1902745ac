"""What ``edgead compile OUT`` builds when no ``--precision`` is given: the artifact ``edgead tune`` would choose on
this machine, found in a fraction of tune's time, or the one-line reason it could not be.

Tune's full plan (``edgead.tune.plan``) builds, gates and times every engine and precision in two batch settings.
Most of those cannot win on a given CPU, and this module prunes them from its flags before anything is built
(``fast_plan``):

- ONNX Runtime, where OpenVINO is installed: on x86 CPUs OpenVINO ran at 0.75-1.0x ONNX Runtime's time at every
  precision measured (docs/bench.md), so ONNX Runtime only costs a second calibration;
- the dynamic batch axis: fixing it at the line's batch size was never slower (tune's table in docs/bench.md);
- FP32, where the CPU runs a reduced precision natively (BF16: AVX512_BF16/AMX-BF16, INT8: VNNI/AMX): the
  products' peak is 2-4x f32's there. FP32 stays the fallback: it is built when every reduced candidate misses
  its fidelity gate.

What is left (OpenVINO INT8 and BF16 at the line's batch, each in latency and, above batch 1, throughput mode) is
tried as a ladder, fastest precision first: INT8, where the CPU runs it natively (its products' peak is about
twice BF16's on VNNI and on AMX: 268 against 136 GFLOP/s on the AVX-512 VNNI/BF16 development machine), then BF16,
then FP32, the next rung built only when the one before misses its fidelity gate. A rung's candidates are built
through the compile-time gate, gated again, timed interleaved, and one more than ``WIDE_GAP`` slower than the
fastest after the first round is not timed again. The decision is recorded exactly
as ``edgead tune`` records it, so ``edgead.runtimes.load(OUT)`` runs the choice.

Without images (``--calib``) neither INT8 (calibration) nor BF16 (its compile-time fidelity gate needs held-out
images) can be built: the default is then FP32 at the line's batch, and ``default_artifact``'s one line says which
faster precision this CPU would run with ``--calib DIR``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: a candidate this much slower than the fastest after one round is not timed again
WIDE_GAP = 0.25
#: the order precisions are tried in: the next is built only when the one before missed its fidelity gate
LADDER = ("int8", "bf16", "fp32")


@dataclass(frozen=True)
class DefaultChoice:
    """What the default compile built and ran, and the line that says why."""

    engine: str
    precision: str
    folder: Path
    reason: str
    decision: dict[str, Any] | None = None  # tune's record, when candidates were timed


def fast_plan(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int) -> tuple[list, list]:
    """Tune's plan pruned to the candidates that can win on a CPU with ``flags``; the rest come back as left-out
    rows with the reason."""
    from edgead.tune import Measured, plan

    keep, out = plan(flags, available, has_calib, batch)
    native = {p for p, fl in (("bf16", BF16_FLAGS), ("int8", INT8_FLAGS)) if any(flags.get(f) for f in fl)}
    reduced_here = {c.precision for c in keep} & native if has_calib else set()
    pruned = []
    for c in keep:
        why = ""
        if c.precision != "fp32" and not has_calib:
            out.append(Measured(c, skipped="no held-out images for its fidelity gate (--calib DIR)"))
            continue
        if c.engine == "onnxruntime" and "openvino" in available:
            why = "OpenVINO is installed: ONNX Runtime ran 1.0-1.3x OpenVINO's time on x86 CPUs"
        elif c.static is None:
            why = f"the batch axis fixed at {batch} was never slower than dynamic"
        elif c.precision == "fp32" and reduced_here:
            why = f"this CPU runs {'/'.join(sorted(reduced_here)).upper()} natively: FP32 is only the fallback"
        if why:
            out.append(Measured(c, skipped=f"pruned: {why}"))
        else:
            pruned.append(c)
    if not pruned:  # nothing reduced survived: FP32 at the batch (the dynamic fallback if OpenVINO is missing)
        pruned = [c for c in keep if c.precision == "fp32" and c.static is not None][:1] or keep[:1]
        out = [m for m in out if m.candidate not in pruned]
    return pruned, out


def _rung(precision: str, flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int
          ) -> tuple[list, list]:
    """One rung of the ladder: ``fast_plan``'s candidates at ``precision`` (FP32 always available as the last)."""
    from edgead.tune import plan

    keep, out = fast_plan(flags, available, has_calib, batch)
    rung = [c for c in keep if c.precision == precision]
    if not rung and precision == "fp32":  # FP32 was pruned behind a reduced precision that then missed its gate
        engine = "openvino" if "openvino" in available else "onnxruntime"
        rung = [c for c in plan(flags, available, has_calib, batch)[0]
                if c.precision == "fp32" and c.engine == engine and c.static is not None]
    return rung, out


def default_artifact(out: str | Path, calib: str | Path | None = None, data: str | Path | None = None,
                     batch: int = 1, progress: Callable[[str], None] | None = None,
                     flags: dict[str, bool] | None = None, iters: int = 12, rounds: int = 3) -> DefaultChoice:
    """Build, gate, time and record the artifact tune would choose for this machine (see the module docstring)."""
    import edgead.runtimes as rt
    from edgead.bench.machine import machine_info
    from edgead.registry import artifact_folder
    from edgead.tune import tune

    out = Path(out)
    flags = flags if flags is not None else machine_info()["flags"]
    candidates, _ = fast_plan(flags, rt.available_engines(), calib is not None, batch)  # what can win here
    ladder = [p for p in LADDER if p == "fp32" or any(c.precision == p for c in candidates)]
    missed: list[str] = []
    decision = None
    available = rt.available_engines()
    for i, precision in enumerate(ladder):  # the fastest precision first; the next only when it misses its gate
        alone = len(_rung(precision, flags, available, calib is not None, batch)[0]) == 1
        try:  # a candidate alone is timed once, for the record: there is nothing to choose between
            decision = tune(out, batch, calib, data, iters=iters, rounds=1 if alone else rounds, progress=progress,
                            flags=flags, planner=partial(_rung, precision), wide_gap=WIDE_GAP)
            break
        except EdgeadError as exc:
            missed.append(f"{precision.upper()} missed its fidelity gate ({str(exc).splitlines()[0]})")
            if i == len(ladder) - 1:
                raise
    if decision is None:  # nothing planned at all (no engine installed)
        raise EdgeadError("expected OpenVINO or ONNX Runtime to build an artifact with, found neither: "
                          "pip install 'edgead[openvino]'")
    fallback = "".join(f"; {m}" for m in missed)
    rest = [p.upper() for p in ladder[ladder.index(decision["chosen"]["precision"]) + 1:]]
    if rest:
        fallback += (f"; {'/'.join(rest)} not built: this CPU runs {decision['chosen']['precision'].upper()} "
                     f"natively at a higher peak, and it passed its gate")
    ch = decision["chosen"]
    native = [p for p, fl in (("BF16", BF16_FLAGS), ("INT8", INT8_FLAGS)) if any(flags.get(f) for f in fl)]
    if calib is None and native:
        fallback += (f"; {'/'.join(native)} would likely be faster on this CPU but needs images (calibration, and "
                     f"held out for the fidelity gate): --calib DIR")
    setting = f"{ch['mode']} mode" + (f", batch fixed at {ch['static_batch']}" if ch["static_batch"] else "")
    reason = (f"{ch['engine']} {ch['precision']} ({setting}), {ch['ms_per_image']:.1f} ms/image at batch {batch}: "
              f"the fastest faithful artifact tune finds for this CPU{fallback}")
    return DefaultChoice(ch["engine"], ch["precision"], artifact_folder(out, ch["engine"], ch["precision"]), reason,
                         decision)
