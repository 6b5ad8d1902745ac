"""OpenVINO runner (CPU): IR artifacts in f32 / bf16 / int8, or an ONNX export read directly.

The inference precision is set explicitly from the manifest (``f32`` for fp32 and int8 artifacts) because some
CPUs default to bf16. The model (and an IR's weights) is read into memory once, checked against the manifest's
sha256 and compiled from those same bytes, so a file swapped on disk after the check is never run. Thread safe:
each thread gets its own infer request (in throughput mode, its own set of requests) of the one compiled model.

The throughput mode (``mode="throughput"``: OpenVINO's throughput hint, several streams of few threads) feeds its
streams concurrently: ``predict`` (and ``predict_frames``' tile calls) splits a batch into chunks of the fixed batch
(``static_batch``), or for a dynamic batch into ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` near-equal chunks, and runs
them at once on that many asynchronous infer requests, results in order. One synchronous request would run the
whole batch on one stream, i.e. on one thread of a 2-core CPU (docs/bench-peers.md, "Batch 8: where the time goes
(session 7)"). ``predict_stream`` overlaps whole batches the same way.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgead import precisions
from edgead.errors import ArtifactError, InputError, require
from edgead.registry import OPENVINO, OUTPUTS
from edgead.runtimes.base import Predictions, Runner
from edgead.runtimes.manifest import Manifest
from edgead.runtimes.onnx_data import external_files


def inference_precision(manifest: Manifest) -> str:
    """The CPU plugin's ``INFERENCE_PRECISION_HINT`` for an artifact: what its builder recorded, else the precision
    table's hint for the manifest's precision (an ONNX export read directly: f32)."""
    p = precisions.find(manifest.precision)
    hint = manifest.extra.get("inference_precision") or (p.openvino_hint if p else "")
    return str(hint or precisions.full().openvino_hint)


def counter_runs(request: Any, inputs: np.ndarray, runs: int) -> list[list[tuple[str, str, float, str]]]:
    """``runs`` inferences of ``inputs`` on an infer request of a model compiled with ``PERF_COUNT``: each run's
    executed nodes as (name, type, ms, exec type), as OpenVINO reports them (running averages: see
    ``edgead.bench.profile.decumulate``)."""
    out = []
    for _ in range(runs):
        request.infer({0: inputs})
        out.append([(p.node_name, p.node_type, p.real_time.total_seconds() * 1e3, p.exec_type)
                    for p in request.profiling_info if str(p.status).rpartition(".")[2] == "EXECUTED"])
    return out


class OpenVINORunner(Runner):
    engine = OPENVINO.name
    thread_safe = True

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", threads: int | None = None,
                 mode: str = "latency", precision_hint: str | None = None, static_batch: int | None = None,
                 profiling: bool = False) -> None:
        super().__init__(folder, manifest)
        static = self.fix_batch(static_batch)
        ov = require(OPENVINO.package, OPENVINO.extra, "running OpenVINO artifacts")
        self._ov = ov
        core = ov.Core()
        hint = precision_hint or inference_precision(manifest)
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "THROUGHPUT" if mode == "throughput" else "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profiling:  # per-node performance counters (``profile_runs``)
            config["PERF_COUNT"] = True
        model = self._read_model(core)
        self.check_model_input([d.get_length() if d.is_static else None for d in model.input(0).get_partial_shape()])
        if static:  # a fixed batch: shapes known at compile time; other batch sizes run chunked and padded
            shape = model.input(0).get_partial_shape()
            model.reshape({model.input(0): [static, *(d.get_length() for d in list(shape)[1:])]})
        self.compiled = core.compile_model(model, device, config)
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._local = threading.local()
        self._outputs = [self.compiled.output(name) for name in OUTPUTS]
        self.mode = mode
        #: asynchronous infer requests a throughput-mode call keeps in flight (OpenVINO's optimal number: one per
        #: stream, or a few more); 1 in latency mode, whose calls run their chunks one by one on one request
        self.infer_requests = 1
        if mode == "throughput":
            self.infer_requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _read_model(self, core):  # noqa: ANN001, ANN202 - openvino types
        """The model from hashed bytes: an IR's XML with its weights (``model.bin`` beside ``model.xml``), or an
        ONNX export, which must carry its weights inside (OpenVINO would look external data up by path)."""
        name = self.manifest.model
        where = str(self.folder / name)
        data = self.read_artifact(name)
        if name.endswith(".xml"):
            weights_name = name[: -len(".xml")] + ".bin"
            weights = self.read_artifact(weights_name) if weights_name in self.manifest.files else b""
        else:
            weights = b""
            if external := external_files(data, where):
                raise ArtifactError(f"{where} keeps its weights in {', '.join(external[:3])}, which OpenVINO would "
                                    f"read by path after the hash check; expected an ONNX model with its weights "
                                    f"inside (as edgead exports are), or compile it: edgead compile "
                                    f"{self.folder} --engine openvino")
        return core.read_model(data, weights)  # copies the weights (read_model(str, Tensor) would share them)

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        req = self._request()
        req.infer({0: images})
        return (req.get_tensor(self._outputs[0]).data.copy(), req.get_tensor(self._outputs[1]).data.copy())

    def _new_request(self):  # noqa: ANN202 - an openvino InferRequest
        return self.compiled.create_infer_request()

    def _request_pool(self, n: int) -> list:
        """This thread's asynchronous requests, at least ``n`` of them (created on first use, then reused)."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = []
        while len(pool) < n:
            pool.append(self._new_request())
        return pool

    def _chunk_sizes(self, n: int) -> list[int]:
        """How a throughput-mode call splits ``n`` images: chunks of the fixed batch (the last one short, padded
        when run), or for a dynamic batch ``infer_requests`` near-equal chunks (larger ones first), as many more as
        the manifest's max batch needs and fewer where its min batch would otherwise mean padding."""
        if self.static_batch:
            return [min(self.static_batch, n - i) for i in range(0, n, self.static_batch)]
        lo, hi = self.manifest.batch
        k = max(1, min(n, self.infer_requests, n // lo))
        if hi:
            k = max(k, -(-n // hi))
        q, r = divmod(n, k)
        return [q + 1] * r + [q] * (k - r)

    def _tiles_per_call(self) -> int:
        """In throughput mode a frame's tiles go to the engine a full set of chunks at a time (one per request),
        else one chunk at a time."""
        if self.mode == "throughput" and self.static_batch:
            return self.static_batch * self.infer_requests
        return super()._tiles_per_call()

    def _run_chunks(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latency mode: the base class's chunks, one by one on this thread's request. Throughput mode: the chunks
        of ``_chunk_sizes`` at once on this thread's asynchronous requests (chunk ``i`` on request ``i % jobs``, a
        request's result collected before it takes the next chunk), reassembled in order. Each chunk runs on the same
        compiled model with the same shape as it would one by one, so the outputs are the same."""
        sizes = self._chunk_sizes(images.shape[0]) if self.mode == "throughput" else []
        if len(sizes) <= 1:
            return super()._run_chunks(images)
        jobs = min(self.infer_requests, len(sizes))
        requests = self._request_pool(jobs)
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        busy: deque[tuple[int, int]] = deque()  # (request slot, images kept), oldest first

        def collect() -> None:
            slot, keep = busy.popleft()
            req = requests[slot]
            req.wait()
            scores.append(np.array(req.get_tensor(self._outputs[0]).data, dtype=np.float32).reshape(-1)[:keep])
            maps.append(np.array(req.get_tensor(self._outputs[1]).data, dtype=np.float32)[:keep])

        try:
            start = 0
            for i, size in enumerate(sizes):
                chunk = images[start : start + size]
                start += size
                pad = self.min_batch - size
                if pad > 0:  # a fixed batch (or a profile's minimum): pad by repeating the last image, as one by one
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
                if len(busy) == jobs:
                    collect()
                requests[i % jobs].start_async({0: chunk})
                busy.append((i % jobs, size))
            while busy:
                collect()
        finally:
            for slot, _ in busy:  # an error: never leave requests running on buffers the caller may free
                requests[slot].wait()
        return np.concatenate(scores), np.concatenate(maps)

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
                if (self.max_batch is not None and b.shape[0] > self.max_batch) or b.shape[0] < self.min_batch:
                    while busy:  # an oversized (or undersized) batch: finish what is in flight, then run it chunked
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

    def profile_runs(self, images: np.ndarray, runs: int) -> list[list[tuple[str, str, float, str]]]:
        """Each run's executed nodes from OpenVINO's performance counters (``profiling=True``); the kernel is the
        node's exec type (``brgemm_avx512_i8``, ``gemm_mlas_f32`` ...)."""
        out = counter_runs(self._request(), self.validate(images), runs)
        if out and not any(out):
            raise InputError("OpenVINO reported no performance counters: load the runner with profiling=True")
        return out

    def executed_precision(self) -> str:
        """The runtime precision of the compiled model's matrix-product nodes (``bf16`` requested on a CPU without
        bf16 runs ``f32``; an INT8 IR runs ``u8``/``i8`` products), else the inference precision hint."""
        return _product_precisions(self.compiled) or self.inference_precision

    def close(self) -> None:
        self.compiled = None


_PRODUCTS = ("fullyconnected", "matmul", "convolution")


def _type_name(value: object) -> str:
    """``<Type: 'float32'>``, ``f32`` or an ``OVAny`` -> ``float32`` / ``f32``."""
    text = (value.astype(str) if hasattr(value, "astype") else str(value)).lower()
    if "'" in text:
        text = text.split("'")[1]
    return text.strip()


def _product_precisions(compiled: object) -> str:
    """``int8``, ``f32`` ... or ``int8 79/93`` for a mixed model; "" when the runtime model does not say."""
    counts: dict[str, int] = {}
    try:
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and "runtimePrecision" in info and _type_name(info["layerType"]) in _PRODUCTS:
                p = _type_name(info["runtimePrecision"])
                counts[precisions.executed(p)] = counts.get(precisions.executed(p), 0) + 1
    except Exception:  # an older OpenVINO without runtime rt_info: the caller falls back to the hint
        return ""
    if not counts:
        return ""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(ranked) == 1:
        return ranked[0][0]
    return f"{ranked[0][0]} {ranked[0][1]}/{sum(counts.values())}"


RUNNER = OpenVINORunner
