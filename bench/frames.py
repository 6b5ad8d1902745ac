"""``edgead bench --frame HxW``: whole camera frames through ``Runner.predict_frames``, tiled and full-frame.

For every engine and precision an export holds (``discovery.find_runner``), one synthetic uint8 frame of the asked
size is timed end to end, twice when the artifact carries a tiling plan:

- ``tiled``: the plan's path: cut into tiles of the input size, every tile through the engine, maps stitched back
  to the frame and the score taken over the stitched map (``edgead.runtimes.tiling``);
- ``full-frame``: resize and centre-crop the frame to the input, one inference, the map brought back onto the
  frame (``edgead.geometry.map_to_frame``).

An untiled artifact exported at a high resolution (say 1036 px) gives only the full-frame row, so a table of both
artifacts benchmarked at the same ``--frame`` compares tiling against full-frame inference. Rows are per frame
(batch 1): median, p90 and the min/max of the timed calls, and the peak resident memory while they ran.

``bench_frames_interleaved`` (``python -m edgead.bench.frames``) compares several runners (checkpoints, artifacts,
engine options such as a precision hint or a thread count, tiled or full-frame) on the same frames in interleaved
rounds (A B C A B C ...), so a shared machine's slow minute hits every row alike: per row the min/median/max of
the round medians in seconds per frame, the speed-up over a reference row taken round by round, and the Pearson r
of its frame-size maps against the maps of the row it should match (its FP32 twin), with the CPU flags and the
load average before and after every round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgead import registry
from edgead.bench.discovery import find_runner
from edgead.bench.machine import machine_info
from edgead.bench.timing import RssSampler, timed_calls
from edgead.errors import EdgeadError
from edgead.runtimes.base import Runner


@dataclass(frozen=True)
class FrameTiming:
    """One engine x precision x path on frames of ``frame`` = (H, W); ``tiles`` is 1 on the full-frame path."""

    engine: str
    precision: str
    executed_precision: str
    path: str  # "tiled" | "full-frame"
    frame: tuple[int, int]
    input_size: tuple[int, int]
    tiles: int
    overlap: int | None
    iters: int
    p50_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    artifact: str
    rounds: int = 1
    round_ms: tuple[float, ...] = ()  # median ms per frame of each interleaved round


def _paths(runner: Runner, h: int, w: int) -> list[tuple[str, Any, int]]:
    """(path name, tiling plan or None, tiles) of one runner on an HxW frame: tiled when it has a plan, and
    full-frame."""
    plan = runner.tiling
    paths: list[tuple[str, Any, int]] = [("full-frame", None, 1)]
    if plan is not None:
        from edgead.runtimes.tiling import tile_grid

        paths.insert(0, ("tiled", plan, len(tile_grid((h, w), plan))))
    return paths


def _time_interleaved(runners: Sequence[Runner], frame: tuple[int, int], iters: int, warmup: int, rounds: int,
                      seed: int, progress: Any = None) -> list[FrameTiming]:
    """Every path of every runner timed on one random frame, in ``rounds`` interleaved rounds (A B C A B C ...):
    ``iters`` calls split over the rounds, so a slow minute of a shared machine hits every row alike. Each
    runner's own tiling choice is restored afterwards."""
    if iters < 1 or warmup < 0 or rounds < 1:
        raise EdgeadError(f"expected iters >= 1, warmup >= 0 and rounds >= 1, found iters={iters}, "
                          f"warmup={warmup}, rounds={rounds}")
    h, w = int(frame[0]), int(frame[1])
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rows = [(runner, runner.tiling, *path) for runner in runners for path in _paths(runner, h, w)]
    def arm(runner: Runner, how: Any) -> Callable[[], Any]:
        runner.tiling = how
        return partial(runner.predict_frames, image)

    try:
        for runner, _, _, how, _ in rows:
            p = None
            for _ in range(max(1, warmup)):  # at least one call: the map's size is checked before timing
                p = arm(runner, how)()
            if p is not None and p.maps.shape != (1, h, w):
                raise EdgeadError(f"{runner.describe()} returned a map of {p.maps.shape[1:]} for a {h}x{w} frame")
        times, peak, _ = _timed_rounds(
            [(f"{runner.engine} {runner.manifest.precision} {name}", partial(arm, runner, how))
             for runner, _, name, how, _ in rows], rounds, -(-iters // rounds), progress)
    finally:
        for runner, own, *_ in reversed(rows):
            runner.tiling = own
    out = []
    for i, (runner, _, name, how, tiles) in enumerate(rows):
        ms = np.asarray([s for chunk in times[i] for s in chunk]) * 1e3
        out.append(FrameTiming(
            runner.engine, runner.manifest.precision, runner.executed_precision(), name, (h, w),
            tuple(runner.spec.input_size), tiles, None if how is None else how.overlap, int(ms.size),
            float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()), float(ms.max()), peak[i],
            str(runner.folder), rounds, tuple(float(np.median(chunk)) * 1e3 for chunk in times[i])))
    return out


def _timed_rounds(rows: Sequence[tuple[str, Callable[[], Callable[[], Any]]]], rounds: int, calls: int,
                  progress: Any = None) -> tuple[list[list[list[float]]], list[float], list[dict[str, Any]]]:
    """The interleaved rounds every frame benchmark here runs: in each of ``rounds`` rounds, every row in turn is
    armed (``arm()`` sets its path and returns the call to time) and timed ``calls`` times (A B C A B C ...).
    Returns each row's call seconds per round, its peak RSS (MB) and the load average before and after each
    round."""
    times: list[list[list[float]]] = [[] for _ in rows]
    peak = [0.0] * len(rows)
    load: list[dict[str, Any]] = []
    for k in range(rounds):
        before = os.getloadavg()
        for i, (label, arm) in enumerate(rows):
            if progress is not None:
                progress(f"round {k + 1}/{rounds}: {label}")
            call = arm()
            with RssSampler() as mem:
                _, t = timed_calls(call, calls)
            times[i].append(t)
            peak[i] = max(peak[i], mem.peak_mb)
        load.append({"round": k + 1, "load_before": list(before), "load_after": list(os.getloadavg())})
    return times, peak, load


def bench_frames(runner: Runner, frame: tuple[int, int], iters: int = 5, warmup: int = 1,
                 seed: int = 0, rounds: int = 1) -> list[FrameTiming]:
    """Time ``runner.predict_frames`` on one random frame of ``frame`` = (H, W): tiled (when the runner has a plan)
    and full-frame, interleaved over ``rounds``. The runner's own choice (``runner.tiling``) is restored
    afterwards."""
    return _time_interleaved([runner], frame, iters, warmup, rounds, seed)


def bench_frames_target(target: str | Path, frame: tuple[int, int], engines: Sequence[str] | None = None,
                        precisions: Sequence[str] | None = None, iters: int = 5, warmup: int = 1,
                        progress: Any = None, rounds: int = 3) -> tuple[list[FrameTiming], list[str]]:
    """``bench_frames`` over the engines and precisions of a checkpoint or export folder, every runner loaded first
    and all rows timed in the same interleaved rounds; (rows, skipped reasons)."""
    from contextlib import ExitStack

    target = Path(target)
    if not target.exists():
        raise EdgeadError(f"expected a checkpoint or export folder, found nothing at {target}")
    is_checkpoint = registry.is_checkpoint(target)
    rows = ([registry.get(e) for e in engines] if engines else
            [registry.reference()] if is_checkpoint else
            sorted(registry.ENGINES.values(), key=lambda e: not e.checkpoint))
    skipped: list[str] = []
    with ExitStack() as stack:
        runners = []
        for row in rows:
            for prec in precisions or row.precisions:
                if prec not in row.precisions or (is_checkpoint and not row.checkpoint):
                    continue
                runner, _path, reason = find_runner(target, row.name, prec)
                if runner is None:
                    skipped.append(f"{row.name} {prec}: {reason}")
                    continue
                runners.append(stack.enter_context(runner))
        if progress is not None:
            progress(f"{len(runners)} runner(s): {frame[0]}x{frame[1]} frames, {iters} calls each over {rounds} "
                     f"interleaved rounds")
        timings = _time_interleaved(runners, frame, iters, warmup, rounds, 0, progress) if runners else []
    return timings, skipped


def frames_document(timings: Sequence[FrameTiming], skipped: Sequence[str], target: str | Path) -> dict:
    """The JSON of a frame benchmark: the machine (CPU flags included), the rows and what was skipped."""
    return {"kind": "edgead.bench.frames", "target": str(target), "machine": machine_info(),
            "results": [asdict(t) for t in timings], "skipped": list(skipped)}


def render_frames(timings: Sequence[FrameTiming], title: str) -> Any:
    """A rich table: one row per engine x precision x path."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("engine", "precision", "path", "frame", "input", "tiles", "p50 ms", "p90 ms", "min-max ms",
                "rounds min/med/max ms", "RSS MB"):
        table.add_column(col, justify="right" if col not in ("engine", "precision", "path") else "left")
    for t in timings:
        path = t.path if t.overlap is None else f"{t.path} (overlap {t.overlap})"
        table.add_row(t.engine, f"{t.precision} ({t.executed_precision})", path, f"{t.frame[0]}x{t.frame[1]}",
                      f"{t.input_size[0]}x{t.input_size[1]}", str(t.tiles), f"{t.p50_ms:.1f}", f"{t.p90_ms:.1f}",
                      f"{t.min_ms:.1f}-{t.max_ms:.1f}", _rounds(t.round_ms), f"{t.peak_rss_mb:.0f}")
    return table


def _rounds(ms: Sequence[float]) -> str:
    return f"{min(ms):.1f}/{float(np.median(ms)):.1f}/{max(ms):.1f}" if ms else "-"


# -- interleaved rows -----------------------------------------------------------------------------------------
@dataclass
class FrameRow:
    """One row of ``bench_frames_interleaved``: a runner, its label, whether it tiles (``None``: the runner's own
    choice) and the label of the row its maps are compared with (``None``: no map comparison)."""

    runner: Any
    label: str
    tiled: bool | None = None
    ref: str | None = None


@dataclass(frozen=True)
class InterleavedFrame:
    label: str
    engine: str
    precision: str
    executed_precision: str
    path: str  # "tiled" | "full-frame"
    input_size: tuple[int, int]
    tiles: int
    overlap: int | None
    round_s: tuple[float, ...]  # median seconds per frame of each round
    min_s: float
    median_s: float
    max_s: float
    speedup: tuple[float, float, float] | None  # reference row's s / this row's s: (min, median, max) over rounds
    map_r: float | None  # Pearson r of the frame-size maps against row ``ref``'s, pooled over the frames
    ref: str | None
    peak_rss_mb: float
    artifact: str


def map_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two stacks of maps of one shape, pooled over every pixel (``fidelity.pearson``: NaN when a
    side is flat or not finite)."""
    from edgead.fidelity import pearson

    if a.shape != b.shape:
        raise EdgeadError(f"expected maps of one shape, found {a.shape} and {b.shape}")
    return pearson(a, b)


def bench_frames_interleaved(rows: Sequence[FrameRow], frames: np.ndarray, rounds: int = 3, iters: int = 1,
                             warmup: int = 1, reference: int = 0, progress: Any = None
                             ) -> tuple[list[InterleavedFrame], dict]:
    """Time ``predict_frames`` of one frame (``frames[0]``, batch 1) for every row in ``rounds`` interleaved
    rounds of ``iters`` calls each; (rows, conditions).

    Before timing, every row predicts each frame of ``frames`` (``(N, H, W, 3)`` uint8, one at a time; this is
    also the warm-up) and the stitched or frame-size maps are kept for ``map_r``. ``speedup`` divides row
    ``reference``'s median of a round by this row's in the same round. ``conditions`` holds the machine's CPU
    flags and the load average (1, 5, 15 min) before and after each round.
    """
    if rounds < 1 or iters < 1 or warmup < 0 or not rows:
        raise EdgeadError(f"expected rows, rounds >= 1, iters >= 1 and warmup >= 0, found {len(rows)} rows, "
                          f"rounds={rounds}, iters={iters}, warmup={warmup}")
    frames = Runner.validate_frames(frames)
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels) or any(r.ref is not None and r.ref not in labels for r in rows):
        raise EdgeadError(f"expected unique labels and refs among them, found {labels} / {[r.ref for r in rows]}")
    h, w = frames.shape[1:3]
    saved = [r.runner.tiling for r in rows]
    maps: dict[str, np.ndarray] = {}
    times: dict[str, list[list[float]]] = {r.label: [] for r in rows}
    peak = dict.fromkeys(labels, 0.0)
    for r, plan in zip(rows, saved, strict=True):
        if r.tiled and plan is None:
            raise EdgeadError(f"row {r.label!r}: tiled asked but {r.runner.describe()} has no tiling plan")

    def use(i: int) -> Any:  # rows may share a runner (tiled and full-frame): set its path before every call
        rows[i].runner.tiling = None if rows[i].tiled is False else saved[i]
        return rows[i].runner

    try:
        for i, r in enumerate(rows):
            use(i)
            if progress is not None:
                progress(f"{r.label}: {len(frames)} frames of {h}x{w} (warm-up, maps)")
            with RssSampler() as mem:
                out = [r.runner.predict_frames(f).maps[0] for f in frames]
                for _ in range(max(0, warmup - len(frames))):
                    r.runner.predict_frames(frames[0])
            peak[r.label] = mem.peak_mb
            maps[r.label] = np.stack(out)
            if maps[r.label].shape != (len(frames), h, w):
                raise EdgeadError(f"{r.runner.describe()} returned maps of {maps[r.label].shape[1:]} for {h}x{w}")
        def arm(i: int) -> Callable[[], Any]:
            return partial(use(i).predict_frames, frames[0])

        timed, peaks, load = _timed_rounds([(r.label, partial(arm, i)) for i, r in enumerate(rows)], rounds, iters,
                                           progress)
        for r, t, mb in zip(rows, timed, peaks, strict=True):
            times[r.label] = t
            peak[r.label] = max(peak[r.label], mb)
    finally:
        for r, plan in reversed(list(zip(rows, saved, strict=True))):
            r.runner.tiling = plan
    ref_rounds = [float(np.median(t)) for t in times[rows[reference].label]]
    out_rows = []
    for r, plan in zip(rows, saved, strict=True):
        per_round = tuple(float(np.median(t)) for t in times[r.label])
        ratios = [a / b for a, b in zip(ref_rounds, per_round, strict=True)]
        tiled = plan is not None and r.tiled is not False
        if tiled:
            from edgead.runtimes.tiling import tile_grid

            n_tiles = len(tile_grid((h, w), plan))
        out_rows.append(InterleavedFrame(
            r.label, r.runner.engine, r.runner.manifest.precision, r.runner.executed_precision(),
            "tiled" if tiled else "full-frame", tuple(r.runner.spec.input_size), n_tiles if tiled else 1,
            plan.overlap if tiled else None, per_round, min(per_round), float(np.median(per_round)), max(per_round),
            (min(ratios), float(np.median(ratios)), max(ratios)),
            None if r.ref is None else map_pearson(maps[r.label], maps[r.ref]), r.ref, peak[r.label],
            str(r.runner.folder)))
    conditions = {"machine": machine_info(), "frame": [h, w], "frames_for_maps": len(frames), "rounds": rounds,
                  "iters_per_round": iters, "reference": rows[reference].label, "load": load}
    return out_rows, conditions


def render_interleaved(rows: Sequence[InterleavedFrame], conditions: dict) -> str:
    """A markdown table of ``bench_frames_interleaved``'s rows, with the flags and the load average."""
    m = conditions["machine"]
    flags = ", ".join(k for k, v in sorted(m.get("flags", {}).items()) if v) if isinstance(m.get("flags"), dict) \
        else str(m.get("flags"))
    lines = [f"frame {conditions['frame'][0]}x{conditions['frame'][1]}, batch 1, {conditions['rounds']} interleaved "
             f"rounds x {conditions['iters_per_round']} call(s); reference {conditions['reference']!r}",
             f"CPU {m.get('cpu_model')} ({m.get('cores')} cores), flags: {flags}",
             "load average per round (before -> after): " + "; ".join(
                 f"{d['load_before'][0]:.2f} -> {d['load_after'][0]:.2f}" for d in conditions["load"]), "",
             "| row | engine (executed) | path | tiles | s/frame median (min-max of rounds) | speed-up vs ref "
             "(min-max) | map r vs | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = "" if r.speedup is None else f"{r.speedup[1]:.2f}x ({r.speedup[0]:.2f}-{r.speedup[2]:.2f})"
        mr = "" if r.map_r is None else f"{r.map_r:.5f} vs {r.ref}"
        path = r.path if r.overlap is None else f"{r.path} {r.input_size[0]}/{r.overlap}"
        lines.append(f"| {r.label} | {r.engine} {r.precision} ({r.executed_precision}) | {path} | {r.tiles} | "
                     f"{r.median_s:.3f} ({r.min_s:.3f}-{r.max_s:.3f}) | {sp} | {mr} | {r.peak_rss_mb:.0f} |")
    return "\n".join(lines)


def parse_row(text: str) -> tuple[str, str, dict[str, str]]:
    """``LABEL=PATH[:key=value...]`` -> (label, path, options); keys: engine, precision_hint, threads, mode,
    static_batch (runner options), path (tiled | full-frame), ref (a label), compile (bf16 | fp32: the
    torch.compile baseline of a checkpoint)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise EdgeadError(f"expected LABEL=PATH[:key=value...], found {text!r}")
    path, *opts = rest.split(":")
    options = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep:
            raise EdgeadError(f"expected key=value after the path in {text!r}, found {o!r}")
        options[k] = v
    return label, path, options


def load_row(text: str) -> FrameRow:
    """A ``FrameRow`` from ``parse_row``'s syntax: the runner loaded with its options."""
    from edgead import runtimes

    label, path, o = parse_row(text)
    tiled = {"tiled": True, "full-frame": False, None: None}.get(o.pop("path", None), "bad")
    if tiled == "bad":
        raise EdgeadError(f"row {label!r}: path must be tiled or full-frame")
    ref = o.pop("ref", None)
    if "compile" in o:
        from edgead import precisions
        from edgead.bench.baseline import BaselineMode, TorchBaselineRunner

        mode = BaselineMode("compile", precisions.find(o.pop("compile")) is precisions.BF16)
        runner = TorchBaselineRunner.from_checkpoint_mode(path, mode)
    else:
        engine = o.pop("engine", None)
        kw: dict[str, Any] = {k: int(v) if k in ("threads", "static_batch") else v for k, v in o.items()}
        runner = runtimes.load(path, engine, **kw)
    return FrameRow(runner, label, tiled, ref)


def evaluate_frames(runner: Runner, data: str | Path, tiled: bool | None = None,
                    keep_maps: list | None = None) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AUPRO by defect size of ``runner`` on a labelled MVTec-layout category, each
    test image scored whole by ``predict_frames`` (tiled, or full-frame when ``tiled`` is False; the runner's own
    choice when None) and its frame-size map met with its mask at the mask's own resolution.

    On either path it is ``edgead eval``'s computation for a tiled artifact (``evaluate.run_frames_on_items`` and
    ``frame_metrics``); ``tiled=False`` forces the full-frame path for comparison.
    """
    from edgead.data import read_masks, test_items
    from edgead.evaluate import frame_metrics, run_frames_on_items

    items = test_items(data)
    masks = read_masks(items)
    plan = runner.tiling
    try:
        if tiled is False:
            runner.tiling = None
        elif tiled and plan is None:
            raise EdgeadError(f"tiled evaluation asked but {runner.describe()} has no tiling plan")
        scores, maps = run_frames_on_items(runner, items)  # edgead eval's path for a tiled artifact
    finally:
        runner.tiling = plan
    if keep_maps is not None:  # the frame-size maps, for a map r against another runner's
        keep_maps.extend(maps)
    m, by_size = frame_metrics(items, scores, maps, masks)
    pix = m.pixel_auroc
    return {"image_auroc": m.image_auroc, "pixel_auroc": pix, "aupro": by_size.at(4, 0.3),
            "q1_aupro": by_size.q1, "robustness": by_size.robustness_at(0.3), "by_size": by_size.to_dict(),
            "images": len(items), "path": "tiled" if (plan is not None and tiled is not False) else "full-frame"}


def _map_file(label: str) -> str:
    """A file name for a row's maps: the label with anything but letters, digits, '.', '-' and '_' as '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", label) + ".npy"


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json

    from edgead.imageio import read_image

    ap = argparse.ArgumentParser(prog="python -m edgead.bench.frames", description=(
        "Interleaved whole-frame latency (batch 1) and map r of several runners on the same frames."))
    ap.add_argument("--row", action="append", required=True, help="LABEL=PATH[:key=value...] (see parse_row)")
    ap.add_argument("--images", nargs="+", help="frames of one size (the first is timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=1, help="timed calls per row and round")
    ap.add_argument("--json", type=Path, help="also write rows and conditions here")
    ap.add_argument("--eval", type=Path, help="instead of timing: evaluate every row on this labelled category")
    ap.add_argument("--maps", type=Path, help="--eval: save each row's maps here (LABEL.npy, characters other "
                    "than letters, digits, . - _ as _) and read refs from it")
    a = ap.parse_args(argv)
    if a.eval is not None:
        doc, kept = {}, {}
        for t in a.row:
            r = load_row(t)
            kept[r.label] = []
            with r.runner:
                doc[r.label] = evaluate_frames(r.runner, a.eval, r.tiled, kept[r.label])
            d = doc[r.label]
            flat = np.concatenate([m.ravel() for m in kept[r.label]])
            if a.maps is not None:
                a.maps.mkdir(parents=True, exist_ok=True)
                np.save(a.maps / _map_file(r.label), flat)
            if r.ref is not None:  # every frame's map against the ref row's (this run's, or saved in --maps)
                ref = (np.concatenate([m.ravel() for m in kept[r.ref]]) if r.ref in kept else
                       np.load(a.maps / _map_file(r.ref)) if a.maps is not None else None)
                if ref is None:
                    raise EdgeadError(f"row {r.label!r}: ref {r.ref!r} was not evaluated (give --maps DIR)")
                d["map_r"] = map_pearson(flat, ref)
                d["map_r_vs"] = r.ref
            print(f"{r.label}: map r {d.get('map_r', float('nan')):.5f} vs {r.ref}, {d['path']}, "
                  f"image AUROC {d['image_auroc']:.4f}, pixel AUROC {d['pixel_auroc']:.4f}, "
                  f"AUPRO {d['aupro']:.4f}, AUPRO@30% Q1..Q4 {[round(v, 4) for v in d['by_size']['aupro_30']]}, "
                  f"robustness {d['robustness']:.4f}", flush=True)
        if a.json:
            a.json.write_text(json.dumps(doc, indent=1))
        return
    if not a.images:
        ap.error("--images is required unless --eval is given")
    frames = np.stack([read_image(p) for p in a.images])
    rows = [load_row(t) for t in a.row]
    result, cond = bench_frames_interleaved(rows, frames, a.rounds, a.iters,
                                            progress=lambda m: print(m, flush=True))
    print(render_interleaved(result, cond))
    if a.json:
        a.json.write_text(json.dumps({"rows": [asdict(r) for r in result], "conditions": cond}, indent=1))


if __name__ == "__main__":
    main()
