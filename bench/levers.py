"""Issue 28's levers, measured: one export folder's OpenVINO artifacts run under several settings, timed in
interleaved rounds (``timing.bench_interleaved``) and each checked against the FP32 artifact on the same images.

``python -m edgead.bench.levers OUT [--batch 1,8] [--iters 30] [--rounds 6] [--baseline] [--default] [--json F]``

Settings (rows), each ``(artifact, runner options, how a batch is fed)``:

- ``dynamic``: the batch axis left dynamic, latency hint (what ``edgead bench`` times);
- ``static``: the batch axis fixed at the batch size (``static_batch``), latency hint (what tune may choose);
- ``int8 + bf16 rest``: the INT8 IR with ``INFERENCE_PRECISION_HINT=bf16``: its int8 products stay int8 and what
  NNCF left in float (attention's products, softmax, norms) runs in bf16;
- ``throughput streams``: throughput hint, batch fixed at 1, the batch fed as single images overlapped on
  OpenVINO's optimal number of infer requests (``predict_stream``): streams instead of one big request.

Each row reports min/median/max ms/image over the rounds, its per-round ratio to the row it changes, and the map
Pearson r and max |score| difference against the FP32 artifact (parity must hold for a lever to be kept).

``--baseline`` times the plain-PyTorch rows of ``bench.baseline`` (torch eager fp32; torch.compile, with bf16
autocast where the CPU has bf16) in the same rounds, and gives every row its per-round speed-up over the faster
of them (``vs_torch``): issue 28's "how far ahead of what a user gets without us", measured in one run.
``--default`` adds the row a newcomer gets: what ``edgead.runtimes.load(OUT)`` runs after ``edgead compile OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgead.precisions import BF16
from edgead.precisions import get as get_precision
from edgead.registry import OPENVINO
from edgead.runtimes.base import Predictions


@dataclass(frozen=True)
class Setting:
    label: str
    precision: str  # which of the export's OpenVINO artifacts (``registry.artifact_folder``)
    options: tuple[tuple[str, Any], ...] = ()
    stream: bool = False  # feed the batch as single images through predict_stream


class Streamed:
    """A runner whose ``predict`` feeds the batch image by image through ``predict_stream`` (overlapped requests)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.engine, self.manifest, self.spec, self.folder = runner.engine, runner.manifest, runner.spec, runner.folder

    def predict(self, images: np.ndarray) -> Predictions:
        parts = list(self.runner.predict_stream([images[i:i + 1] for i in range(len(images))]))
        return Predictions(np.concatenate([p.scores for p in parts]), np.concatenate([p.maps for p in parts]),
                           None, 0.0)

    def executed_precision(self) -> str:
        return self.runner.executed_precision()

    def describe(self) -> str:
        return f"{self.runner.describe()} streamed"

    def close(self) -> None:
        self.runner.close()


def settings(batch: int, precisions: tuple[str, ...] = OPENVINO.compiles) -> list[Setting]:
    rows = []
    for p in precisions:
        rows += [Setting(f"{p} dynamic", p), Setting(f"{p} static {batch}", p, (("static_batch", batch),))]
    quantized = next((p for p in map(get_precision, precisions) if p.quantized), None)
    if quantized is not None:  # the quantised products, and everything else in bf16 instead of f32
        q, rest = quantized.name, BF16
        rows.append(Setting(f"{q} + {rest.name} rest, static {batch}", q,
                            (("static_batch", batch), ("precision_hint", rest.openvino_hint))))
        if batch > 1:
            throughput = OPENVINO.modes[-1]
            rows.append(Setting(f"{q} {throughput} streams", q, (("static_batch", 1), ("mode", throughput)),
                                stream=True))
    return rows


def _parity(ref: Predictions, got: Predictions) -> dict[str, float]:
    r = float(np.corrcoef(ref.maps.ravel(), got.maps.ravel())[0, 1])
    return {"map_r": r, "max_abs_scores": float(np.abs(ref.scores - got.scores).max())}


def measure(out: str | Path, batch: int, iters: int = 30, rounds: int = 6, warmup: int = 2,
            precisions: tuple[str, ...] = OPENVINO.compiles, baseline: bool = False,
            baseline_backend: str = "inductor", default: bool = False) -> list[dict[str, Any]]:
    import edgead.runtimes as rt
    from edgead.bench.timing import bench_interleaved
    from edgead.registry import MANIFEST, artifact_folder
    from edgead.runtimes.compare import check_batch

    out = Path(out)
    chosen = [s for s in settings(batch, precisions)
              if (artifact_folder(out, OPENVINO.name, s.precision) / MANIFEST).is_file()]
    rows = []
    for s in chosen:
        runner = rt.load(artifact_folder(out, OPENVINO.name, s.precision), OPENVINO.name, **dict(s.options))
        rows.append((Streamed(runner) if s.stream else runner, s.label, ""))
    images = check_batch(11, batch, tuple(rows[0][0].spec.input_size))
    ref = rows[0][0].predict(images)  # fp32 dynamic: the reference for parity
    parity = [_parity(ref, r.predict(images)) for r, _, _ in rows]
    default_rows = []
    if default:  # what ``edgead.runtimes.load(OUT)`` runs: tune's / the default compile's recorded choice
        runner = rt.load(out)
        default_rows.append((runner, f"default: {runner.describe()}", ""))
    torch_rows = _baseline(out, baseline_backend) if baseline else []
    extra = default_rows + torch_rows
    parity += [_parity(ref, r.predict(images)) for r, _, _ in extra]
    labels = [s.label for s in chosen] + [label for _, label, _ in extra]
    timed = bench_interleaved(rows + extra, [batch], iters, warmup, rounds)
    for r, _, _ in rows + extra:
        r.close()
    base = {s.precision: t for s, t in zip(chosen, timed[:len(chosen)], strict=True) if s.label.endswith("dynamic")}
    torch_best = min(timed[len(rows) + len(default_rows):], key=lambda t: t.median_ms_per_image, default=None)
    docs = []
    for i, (label, t, par) in enumerate(zip(labels, timed, parity, strict=True)):
        b = base.get(chosen[i].precision) if i < len(chosen) else None
        docs.append({"setting": label, "batch": batch, "executed": t.executed_precision,
                     "ms_per_image": [t.min_ms_per_image, t.median_ms_per_image, t.max_ms_per_image],
                     "rounds_ms_per_image": list(t.round_ms_per_image),
                     "speedup_vs_dynamic": _ratios(b, t), **par,
                     **({"vs_torch": _ratios(torch_best, t), "torch_row": torch_best.label} if torch_best else {})})
    return docs


def _ratios(base: Any, row: Any) -> list[float] | None:
    """min/median/max of ``base``'s round time over ``row``'s, round by round (> 1: ``row`` is faster)."""
    if base is None:
        return None
    r = [x / y for x, y in zip(base.round_ms_per_image, row.round_ms_per_image, strict=True)]
    return [min(r), float(np.median(r)), max(r)]


def _baseline(out: Path, backend: str) -> list[tuple[Any, str, str]]:
    """The plain-PyTorch rows (``bench.baseline``) of the checkpoint behind ``out``, or a one-line error."""
    from edgead.bench.baseline import baseline_runners
    from edgead.bench.discovery import _reference_source
    from edgead.bench.machine import machine_info
    from edgead.errors import EdgeadError

    rows, reasons = baseline_runners(_reference_source(out), machine_info()["flags"], False, backend)
    if reasons:
        raise EdgeadError(f"--baseline: expected the checkpoint behind {out} with torch installed, found: "
                          f"{'; '.join(reasons)}")
    return rows


def main() -> None:
    from edgead.bench.machine import machine_info
    from edgead.bench.report import render_machine_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline", action="store_true", help="time torch eager and torch.compile (+ bf16 autocast "
                    "where the CPU has bf16) in the same rounds and give each row its speed-up over the faster")
    ap.add_argument("--baseline-backend", default="inductor")
    ap.add_argument("--default", action="store_true", help="also time what edgead.runtimes.load(OUT) runs (the "
                    "artifact and settings tune or the default compile recorded)")
    a = ap.parse_args()
    docs = []

    def ratio(r: list[float] | None) -> str:
        return "-" if r is None else f"{r[1]:.2f}x ({r[0]:.2f}-{r[2]:.2f})"

    for b in (int(x) for x in a.batch.split(",")):
        print(f"batch {b}: load average {os.getloadavg()[0]:.2f} before", flush=True)
        for d in measure(a.out, b, a.iters, a.rounds, baseline=a.baseline, baseline_backend=a.baseline_backend,
                         default=a.default):
            docs.append(d)
            ms = d["ms_per_image"]
            vs_torch = f"  vs {d['torch_row']} {ratio(d['vs_torch'])}" if "vs_torch" in d else ""
            print(f"batch {b} {d['setting']:32s} [{d['executed']}] ms/img min/med/max {ms[0]:.1f}/{ms[1]:.1f}/"
                  f"{ms[2]:.1f}  vs dynamic {ratio(d['speedup_vs_dynamic'])}{vs_torch}  "
                  f"map r {d['map_r']:.5f} max|d score| {d['max_abs_scores']:.2e}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} after")
    print(render_machine_line(machine_info()))
    if a.json:
        a.json.write_text(json.dumps({"machine": machine_info(), "rows": docs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
