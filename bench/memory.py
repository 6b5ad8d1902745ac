"""Where the memory of ``edgead export`` and ``edgead compile`` goes: peak resident set size per phase.

``python -m edgead.bench.memory export CKPT OUT`` and ``python -m edgead.bench.memory compile OUT --engine openvino
--precision bf16 --calib DIR`` run the library call the CLI runs, with a thread sampling this process's RSS every
10 ms and the phases (tracing, each ONNX Runtime check, simplification, PyTorch reference, OpenVINO conversion,
the gate's reference and candidate runs, saving) marked by wrapping the functions that do them. tracemalloc would
not see torch, ONNX Runtime or OpenVINO, which allocate natively; RSS does. Prints JSON: per phase (in order of
first use) its calls, seconds, the RSS when it started and the highest RSS while it ran, and the process peak
(``ru_maxrss``, what ``/usr/bin/time -v`` prints as Maximum resident set size).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 1024 * 1024


@dataclass
class Phase:
    calls: int = 0
    seconds: float = 0.0
    rss_start_mb: float = 0.0
    peak_mb: float = 0.0


@dataclass
class Recorder:
    """Samples RSS in a thread and charges each sample to the innermost running phase."""

    interval: float = 0.01
    phases: dict[str, Phase] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss(self) -> float:
        return psutil.Process().memory_info().rss / MB

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = self.rss()
            for name in list(self.stack):  # a phase's peak includes what its sub-phases held
                p = self.phases[name]
                p.peak_mb = max(p.peak_mb, now)

    def start(self) -> None:
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn: Callable = getattr(owner, attr)

        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            p = self.phases.setdefault(label, Phase())
            first = p.calls == 0
            p.calls += 1
            rss = self.rss()
            if first:
                p.rss_start_mb = rss
            p.peak_mb = max(p.peak_mb, rss)
            self.stack.append(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                p.seconds += time.perf_counter() - t0
                p.peak_mb = max(p.peak_mb, self.rss())
                self.stack.remove(label)

        setattr(owner, attr, marked)

    def report(self, total: float) -> dict:
        return {"phases": {k: {"calls": v.calls, "seconds": round(v.seconds, 1), "rss_start_mb": round(v.rss_start_mb),
                               "peak_mb": round(v.peak_mb)} for k, v in self.phases.items()},
                "seconds": round(total, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                 / 1024)}


def _mark_runners(rec: Recorder) -> None:
    from edgead.runtimes.openvino_runner import OpenVINORunner
    from edgead.runtimes.ort_runner import OnnxRuntimeRunner
    from edgead.runtimes.torch_runner import TorchRunner

    for cls in (TorchRunner, OnnxRuntimeRunner, OpenVINORunner):
        rec.wrap(cls, "_infer", f"{cls.engine} inference")
    rec.wrap(OnnxRuntimeRunner, "__init__", f"{OnnxRuntimeRunner.engine} session")
    rec.wrap(OpenVINORunner, "__init__", f"{OpenVINORunner.engine} compile_model")


def profile_export(rec: Recorder, ckpt: str, out: str, simplifier: str) -> None:
    import onnx

    from edgead.export import onnx as ex
    from edgead.models.checkpoint import load_checkpoint

    _mark_runners(rec)
    rec.wrap(ex, "_torch_export", "torch.onnx.export")
    rec.wrap(ex, "_ort_outputs", "onnxruntime check")
    rec.wrap(ex, "_simplify", "simplify")
    rec.wrap(ex, "_fold", "fold norms")
    rec.wrap(onnx, "load", "onnx.load")
    rec.wrap(onnx, "save", "onnx.save")
    rec.wrap(ex, "write_manifest", "manifest (hash)")
    rec.wrap(ex, "export_onnx", "export (all)")
    detector = load_checkpoint(ckpt)
    ex.export_onnx(detector, out, simplifier=simplifier, source=ckpt)


def profile_compile(rec: Recorder, out: str, engine: str, precision: str, calib: str | None) -> None:
    import openvino

    from edgead.calib import validation
    from edgead.export import compile as comp
    from edgead.export import gate

    _mark_runners(rec)
    rec.wrap(openvino, "convert_model", "openvino convert_model")
    rec.wrap(openvino, "save_model", "openvino save_model")
    rec.wrap(validation, "proxy_validation", "validation images")
    rec.wrap(gate, "plan", "gate: validation images")
    rec.wrap(gate, "reference_for", "gate: FP32 reference")  # loaded and run when the gate first needs it
    rec.wrap(gate, "judge", "gate: measure candidate")
    rec.wrap(comp, "compile_artifact", "compile (all)")
    comp.compile_artifact(out, engine, precision, calib)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("ckpt")
    e.add_argument("out")
    e.add_argument("--simplifier", default="onnxslim")
    c = sub.add_parser("compile")
    c.add_argument("out")
    c.add_argument("--engine", default="openvino")
    c.add_argument("--precision", default="fp32")
    c.add_argument("--calib")
    args = ap.parse_args(argv)
    rec = Recorder()
    rec.start()
    t0 = time.perf_counter()
    if args.cmd == "export":
        profile_export(rec, args.ckpt, args.out, args.simplifier)
    else:
        profile_compile(rec, args.out, args.engine, args.precision, args.calib)
    rec.stop()
    print(json.dumps(rec.report(time.perf_counter() - t0), indent=1))


if __name__ == "__main__":
    main()
