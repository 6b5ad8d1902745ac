"""What ``edgead compile OUT`` builds when no ``--precision`` is given: the artifact ``edgead tune`` would choose on
this machine, found in a fraction of tune's time, or the one-line reason it could not be.

Tune's full plan (``edgead.tune.plan``) builds, gates and times every engine and precision in two batch settings.
Most of those cannot win on a given CPU, and this module prunes them from its flags before anything is built
(``fast_plan``):

- ONNX Runtime, where OpenVINO is installed: on x86 CPUs OpenVINO ran at 0.75-1.0x ONNX Runtime's time at every
  precision measured (docs/bench.md), so ONNX Runtime only costs a second calibration;
- the dynamic batch axis: fixing it (at the line's batch in latency mode, at one image in throughput mode, whose
  runner spreads a batch over its concurrent requests) was never slower (tune's table in docs/bench.md);
- FP32, where the CPU runs a reduced precision natively (BF16: AVX512_BF16/AMX-BF16, INT8: VNNI/AMX): the
  products' peak is 2-4x f32's there. FP32 stays the fallback: it is built when every reduced candidate misses
  its fidelity gate.

What is left (OpenVINO INT8 and BF16 at the line's batch, each in latency and, above batch 1, throughput mode; and,
where the CPU runs BF16 natively, each INT8 setting again with the part NNCF left in float run in BF16, "int8 +
bf16 rest": the same INT8 IR with OpenVINO's precision hint at bf16, so no second build) is tried as a ladder,
fastest precision first: INT8, where the CPU runs it natively (its products' peak is about twice BF16's on VNNI and
on AMX: 268 against 136 GFLOP/s on the AVX-512 VNNI/BF16 development machine), then BF16, then FP32, the next rung
built only when the one before misses its fidelity gate. A rung's candidates are built
through the compile-time gate, gated again, timed interleaved, and one more than ``WIDE_GAP`` slower than the
fastest after the first round is not timed again. The INT8 rung's bf16-rest variants are timed interleaved with
plain INT8; each is held to plain INT8's compile-time fidelity gate again, run with its hint (its one extra cost:
the reference and the variant on the gate's validation images), and a tie within tune's noise goes to plain INT8.
The decision is recorded exactly as ``edgead tune`` records it, so ``edgead.runtimes.load(OUT)`` runs the choice
(the hint included), and the one line names the setting ("openvino int8, float rest in bf16 (latency mode, ...").
Where BF16 is not native, the INT8 rung is plain INT8 alone.

Without images (``--calib``) neither INT8 (calibration) nor BF16 (its compile-time fidelity gate needs held-out
images) can be built: the default is then FP32 at the line's batch, and ``default_artifact``'s one line says which
faster precision this CPU would run with ``--calib DIR``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgead import precisions, registry
from edgead.errors import FidelityError

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


def _at_batch(c: Any) -> bool:
    """The candidate runs at the line's batch: fixed there, or its runner has no fixed-batch setting."""
    return c.static is not None or not registry.get(c.engine).static_batch


def _prune(keep: list, out: list, flags: dict[str, bool], available: Sequence[str], has_calib: bool,
           batch: int) -> tuple[list, list]:
    """Tune's planned ``keep`` pruned to what can win on a CPU with ``flags``; the rest join ``out`` with why."""
    from edgead.tune import Measured

    native = {p.name for p in precisions.native(flags)}
    reduced_here = {c.precision for c in keep} & native if has_calib else set()
    here = [e for e in registry.tunable() if e.name in available]
    preferred = here[0] if here else None
    pruned = []
    for c in keep:
        p, eng = precisions.get(c.precision), registry.get(c.engine)
        why = ""
        if p.reduced and not has_calib:
            out.append(Measured(c, skipped="no held-out images for its fidelity gate (--calib DIR)"))
            continue
        if preferred is not None and eng.cpu_preference < preferred.cpu_preference:
            why = (f"{preferred.label} is installed: {eng.label} ran 1.0-1.3x {preferred.label}'s time on x86 "
                   f"CPUs")
        elif not _at_batch(c):
            why = "a fixed batch axis was never slower than a dynamic one"
        elif not p.reduced and reduced_here:
            why = f"this CPU runs {'/'.join(sorted(reduced_here)).upper()} natively: FP32 is only the fallback"
        if why:
            out.append(Measured(c, skipped=f"pruned: {why}"))
        else:
            pruned.append(c)
    if not pruned:  # nothing reduced survived: full precision at the batch (the dynamic fallback otherwise)
        pruned = [c for c in keep if not precisions.get(c.precision).reduced and _at_batch(c)][:1] or keep[:1]
        out = [m for m in out if m.candidate not in pruned]
    return pruned, out


def fast_plan(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int) -> tuple[list, list]:
    """Tune's plan pruned to the candidates that can win on a CPU with ``flags``; the rest come back as left-out
    rows with the reason."""
    from edgead.tune import plan

    return _prune(*plan(flags, available, has_calib, batch), flags, available, has_calib, batch)


def ladder(flags: dict[str, bool], available: Sequence[str], has_calib: bool, batch: int
           ) -> tuple[list[tuple[str, list]], list]:
    """The rungs to try, fastest precision first, each with its candidates, from one plan; full precision is
    always the last rung (when it was pruned behind a reduced precision, the preferred engine's candidates at the
    batch); and the left-out rows."""
    from edgead.tune import plan

    keep, out = plan(flags, available, has_calib, batch)
    pruned, out = _prune(list(keep), out, flags, available, has_calib, batch)
    rungs = []
    for p in precisions.ladder():
        rung = [c for c in pruned if c.precision == p.name]
        if not rung and not p.reduced:  # FP32 pruned behind a reduced precision that may miss its gate
            full = [c for c in keep if c.precision == p.name and _at_batch(c)]
            rung = [c for c in full if c.engine == full[0].engine] if full else []
        if rung or not p.reduced:
            rungs.append((p.name, rung))
    return rungs, out


def tiles_per_frame(out: Path, calib: str | Path | None) -> tuple[int, tuple[int, int]] | None:
    """(tiles, (H, W)) of the first calibration frame under a tiled export's plan, or None (no plan, no images).

    A tiled artifact's engine runs the tiles of a frame, so a line batch of frames is that many engine inputs,
    and the batch axis is fixed there (one call per frame): 25 tiles of 210 px for a 1036x1036 frame, where a
    batch fixed at one tile ran 25 calls."""
    from edgead.calib.dataset import calibration_files
    from edgead.imageio import read_image
    from edgead.runtimes.manifest import read_manifest
    from edgead.runtimes.tiling import tile_grid

    if calib is None or not (Path(out) / registry.MANIFEST).is_file():
        return None  # (tune says what is missing)
    plan = read_manifest(out, verify=False).spec.tiling
    if plan is None:
        return None
    h, w = read_image(calibration_files(calib)[0]).shape[:2]
    return len(tile_grid((h, w), plan)), (h, w)


def default_artifact(out: str | Path, calib: str | Path | None = None, data: str | Path | None = None,
                     batch: int = 1, progress: Callable[[str], None] | None = None,
                     flags: dict[str, bool] | None = None, iters: int = 12, rounds: int = 3) -> DefaultChoice:
    """Build, gate, time and record the artifact tune would choose for this machine (see the module docstring).

    A rung whose candidates all miss their fidelity gate (``FidelityError``) falls back to the next; any other
    error (nothing could be built or run) surfaces as it is."""
    import edgead.runtimes as rt
    from edgead.bench.machine import machine_info
    from edgead.tune import tune

    out = Path(out)
    flags = flags if flags is not None else machine_info()["flags"]
    frames = batch
    tiles = tiles_per_frame(out, calib)
    if tiles is not None:  # a tiled export runs tiles: the line's batch of frames is this many engine inputs
        batch = frames * tiles[0]
    rungs, left_out = ladder(flags, rt.available_engines(), calib is not None, batch)
    order = [precision for precision, _ in rungs]
    missed: list[str] = []
    for i, (precision, rung) in enumerate(rungs):  # the fastest precision first; the next only on a miss
        planned = (list(rung), list(left_out))  # tune appends its outcomes to the left-out rows: a copy each
        try:  # a candidate alone is timed once, for the record: there is nothing to choose between
            decision = tune(out, batch, calib, data, iters=iters, rounds=1 if len(rung) == 1 else rounds,
                            progress=progress, flags=flags, planner=lambda *_, p=planned: p, wide_gap=WIDE_GAP)
            break
        except FidelityError as exc:
            gated = getattr(exc, "missed", None)  # tune's measured misses alone, not every pruned candidate
            why = "; ".join(f"{name}: {', '.join(f)}" for name, f in gated) if gated else str(exc).splitlines()[0]
            missed.append(f"{precision.upper()} missed its fidelity gate ({why})")
            if i == len(rungs) - 1:
                raise
    ch = decision["chosen"]
    fallback = "".join(f"; {m}" for m in missed)
    slower = [p.upper() for p in order[order.index(ch["precision"]) + 1:]]
    if slower:
        fallback += (f"; {'/'.join(slower)} not built: this CPU runs {ch['precision'].upper()} natively at a higher "
                     f"peak, and it passed its gate")
    native = [p.name.upper() for p in precisions.native(flags)]
    if calib is None and native:
        fallback += (f"; {'/'.join(native)} would likely be faster on this CPU but needs images (calibration, and "
                     f"held out for the fidelity gate): --calib DIR")
    setting = f"{ch['mode']} mode" + (f", batch fixed at {ch['static_batch']}" if ch["static_batch"] else "")
    float_rest = f", float rest in {ch['rest']}" if ch.get("rest") else ""
    per = "ms/image" if tiles is None else "ms/tile"
    at = (f"batch {batch}" if tiles is None else
          f"batch {batch} ({frames} frame{'s' if frames > 1 else ''} x the {tiles[0]} tiles of a "
          f"{tiles[1][0]}x{tiles[1][1]} calibration frame)")
    reason = (f"{ch['engine']} {ch['precision']}{float_rest} ({setting}), {ch['ms_per_image']:.1f} {per} at {at}: "
              f"the fastest faithful artifact tune finds for this CPU{fallback}")
    return DefaultChoice(ch["engine"], ch["precision"], registry.artifact_folder(out, ch["engine"], ch["precision"]),
                         reason, decision)
