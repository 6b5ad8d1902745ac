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
built through the compile-time fidelity gate, gated again, timed interleaved, and a candidate more than
``WIDE_GAP`` slower than the fastest after the first round is not timed again. The decision is recorded exactly
as ``edgead tune`` records it, so ``edgead.runtimes.load(OUT)`` runs the choice.

Without images (``--calib``) neither INT8 (calibration) nor BF16 (its compile-time fidelity gate needs held-out
images) can be built: the default is then FP32 at the line's batch, and ``default_artifact``'s one line says which
faster precision this CPU would run with ``--calib DIR``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgead.errors import EdgeadError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: a candidate this much slower than the fastest after one round is not timed again
WIDE_GAP = 0.25


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


def _fp32_only(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int) -> tuple[list, list]:
    from edgead.tune import plan

    keep, out = plan(flags, available, has_calib, batch)
    engine = "openvino" if "openvino" in available else "onnxruntime"
    fp32 = [c for c in keep if c.precision == "fp32" and c.engine == engine and c.static is not None]
    return fp32[:1] or keep[:1], out


def default_artifact(out: str | Path, calib: str | Path | None = None, data: str | Path | None = None,
                     batch: int = 1, progress: Callable[[str], None] | None = None,
                     flags: dict[str, bool] | None = None, iters: int = 12, rounds: int = 3) -> DefaultChoice:
    """Build, gate, time and record the artifact tune would choose for this machine (see the module docstring)."""
    from edgead.bench.machine import machine_info
    from edgead.registry import artifact_folder
    from edgead.tune import tune

    out = Path(out)
    flags = flags if flags is not None else machine_info()["flags"]
    try:
        decision = tune(out, batch, calib, data, iters=iters, rounds=rounds, progress=progress, flags=flags,
                        planner=fast_plan, wide_gap=WIDE_GAP)
        fallback = ""
    except EdgeadError as exc:  # every reduced candidate missed its gate: FP32, tuned alone
        decision = tune(out, batch, calib, data, iters=iters, rounds=1, progress=progress, flags=flags,
                        planner=_fp32_only)
        fallback = f"; every reduced-precision candidate missed its fidelity gate ({str(exc).splitlines()[0]})"
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
