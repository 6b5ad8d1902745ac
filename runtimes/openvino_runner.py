"""OpenVINO runner (CPU): IR artifacts in f32 / bf16 / int8, or an ONNX export read directly.

The inference precision is set explicitly from the manifest (``f32`` for fp32 and int8 artifacts) because some
CPUs default to bf16. Thread safe: each thread gets its own infer request of the one compiled model. The
throughput mode overlaps batches on several asynchronous infer requests.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgead.errors import require
from edgead.registry import OUTPUTS
from edgead.runtimes.base import Predictions, Runner
from edgead.runtimes.manifest import Manifest


class OpenVINORunner(Runner):
    engine = "openvino"
    thread_safe = True

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", threads: int | None = None,
                 mode: str = "latency", precision_hint: str | None = None) -> None:
        super().__init__(folder, manifest)
        ov = require("openvino", "openvino", "running OpenVINO artifacts")
        self._ov = ov
        core = ov.Core()
        hint = precision_hint or manifest.extra.get("inference_precision", "f32")
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "THROUGHPUT" if mode == "throughput" else "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        model = core.read_model(str(self.folder / manifest.model))
        self.compiled = core.compile_model(model, device, config)
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._local = threading.local()
        self._outputs = [self.compiled.output(name) for name in OUTPUTS]

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        req = self._request()
        req.infer({0: images})
        return (req.get_tensor(self._outputs[0]).data.copy(), req.get_tensor(self._outputs[1]).data.copy())

    def predict_stream(self, batches: Iterable[np.ndarray], workers: int = 0) -> Iterator[Predictions]:
        """Overlap batches on ``workers`` asynchronous infer requests (0 = OpenVINO's optimal number); keeps order.

        Batch ``i`` goes to request ``i % workers``; a request's previous result is collected (``wait``) before it
        takes the next batch, so results come out in order. No Python callback is installed (unlike
        ``AsyncInferQueue.set_callback``): Python code, and any garbage collection that might free OpenVINO
        objects, never runs on OpenVINO's own threads.
        """
        jobs = max(1, workers or int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        requests = [self.compiled.create_infer_request() for _ in range(jobs)]
        busy: deque[int] = deque()  # request slots in flight, oldest first

        def collect() -> Predictions:
            req = requests[busy.popleft()]
            req.wait()
            s = req.get_tensor(self._outputs[0]).data.copy()
            m = req.get_tensor(self._outputs[1]).data.copy()
            return self._wrap(s.reshape(-1), m, 0.0)

        try:
            for i, b in enumerate(batches):
                b = self.validate(b)
                if self.max_batch is not None and b.shape[0] > self.max_batch:
                    while busy:  # an oversized batch: finish what is in flight, then run it chunked
                        yield collect()
                    yield self.predict(b)
                    continue
                slot = i % jobs
                if len(busy) == jobs:
                    yield collect()
                requests[slot].start_async({0: b})
                busy.append(slot)
            while busy:
                yield collect()
        finally:
            for slot in busy:  # never leave requests running on buffers the caller may free
                requests[slot].wait()

    def close(self) -> None:
        self.compiled = None


RUNNER = OpenVINORunner
