"""Issue 28's levers, measured: one export folder's OpenVINO artifacts run under several settings, timed in
interleaved rounds (``timing.bench_interleaved``) and each checked against the FP32 artifact on the same images.

``python -m edgead.bench.levers OUT [--batch 1,8] [--iters 30] [--rounds 6] [--json F]``

Settings (rows), each ``(artifact, runner options, how a batch is fed)``:

- ``dynamic``: the batch axis left dynamic, latency hint (what ``edgead bench`` times);
- ``static``: the batch axis fixed at the batch size (``static_batch``), latency hint (what tune may choose);
- ``int8 + bf16 rest``: the INT8 IR with ``INFERENCE_PRECISION_HINT=bf16``: its int8 products stay int8 and what
  NNCF left in float (attention's products, softmax, norms) runs in bf16;
- ``throughput streams``: throughput hint, batch fixed at 1, the batch fed as single images overlapped on
  OpenVINO's optimal number of infer requests (``predict_stream``): streams instead of one big request.

Each row reports min/median/max ms/image over the rounds, its per-round ratio to the row it changes, and the map
Pearson r and max |score| difference against the FP32 artifact (parity must hold for a lever to be kept).
"""

from __future__ import annotations

import argparse
import json
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
            precisions: tuple[str, ...] = OPENVINO.compiles) -> list[dict[str, Any]]:
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
    timed = bench_interleaved(rows, [batch], iters, warmup, rounds)
    for r, _, _ in rows:
        r.close()
    base = {s.precision: t for s, t in zip(chosen, timed, strict=True) if s.label.endswith("dynamic")}
    docs = []
    for s, t, par in zip(chosen, timed, parity, strict=True):
        b = base.get(s.precision)
        ratios = [x / y for x, y in zip(b.round_ms_per_image, t.round_ms_per_image, strict=True)] if b else []
        docs.append({"setting": s.label, "batch": batch, "executed": t.executed_precision,
                     "ms_per_image": [t.min_ms_per_image, t.median_ms_per_image, t.max_ms_per_image],
                     "rounds_ms_per_image": list(t.round_ms_per_image),
                     "speedup_vs_dynamic": [min(ratios), float(np.median(ratios)), max(ratios)] if ratios else None,
                     **par})
    return docs


def main() -> None:
    from edgead.bench.machine import machine_info
    from edgead.bench.report import render_machine_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    docs = []
    for b in (int(x) for x in a.batch.split(",")):
        for d in measure(a.out, b, a.iters, a.rounds):
            docs.append(d)
            ms, sp = d["ms_per_image"], d["speedup_vs_dynamic"]
            print(f"batch {b} {d['setting']:32s} [{d['executed']}] ms/img min/med/max {ms[0]:.1f}/{ms[1]:.1f}/"
                  f"{ms[2]:.1f}  vs dynamic {'-' if sp is None else f'{sp[1]:.2f}x ({sp[0]:.2f}-{sp[2]:.2f})'}  "
                  f"map r {d['map_r']:.5f} max|d score| {d['max_abs_scores']:.2e}", flush=True)
    print(render_machine_line(machine_info()))
    if a.json:
        a.json.write_text(json.dumps({"machine": machine_info(), "rows": docs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
