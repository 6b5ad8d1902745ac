"""TensorRT runner: a serialized engine on one NVIDIA GPU behind the common ``Runner`` interface.

Device memory, pinned host memory and the one CUDA stream come from ``edgead.runtimes.cuda`` (cuda-python).
Each call selects the GPU on the calling thread, copies the batch from pinned memory, sets the input shape,
runs ``execute_async_v3`` and copies the outputs back on that stream. Every execution context is created
without device memory of its own (``USER_MANAGED``) and gets the one scratch block the runner allocates for
the engine: calls are serialised, so one block serves the plain context and every CUDA-graph context. With
``cuda_graph=True`` each batch size is captured once (copy in, enqueue, copy out) into a CUDA graph on an
execution context of its own, and replayed. An engine built for another TensorRT version or GPU model is
refused before TensorRT tries to deserialize it; the plan is deserialized from the bytes whose sha256 was
checked, never read again by path. Imports neither tensorrt nor torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import ArtifactError, EdgeadError, require
from edgead.registry import OUTPUTS, TENSORRT
from edgead.runtimes.base import Runner
from edgead.runtimes.cuda import NO_GPU, CudaPythonBackend, open_cuda
from edgead.runtimes.manifest import Manifest

__all__ = ["NO_GPU", "DeviceInfo", "TensorRTRunner", "check_engine_compatible", "device_info", "open_cuda"]


@dataclass(frozen=True)
class DeviceInfo:
    """What a TensorRT engine is tied to: the TensorRT version, the GPU model and its compute capability."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"


def check_engine_compatible(extra: Mapping[str, Any], running: DeviceInfo, folder: str | Path,
                            precision: str = "fp16") -> None:
    """Refuse in one line an engine whose manifest names another TensorRT version, GPU or compute capability.

    TensorRT engines are not portable: the plan format is tied to the exact TensorRT version and the kernels
    (tactics) to the GPU they were timed on. A foreign engine fails to deserialize, with an opaque error.
    """
    fields = ("tensorrt_version", "gpu_name", "compute_capability")
    missing = [f for f in fields if not extra.get(f)]
    rebuild = f"rebuild it here: edgead compile {Path(folder).parent} --engine trt --precision {precision}"
    if missing:
        raise ArtifactError(f"engine manifest in {folder} lacks {', '.join(missing)}, so it cannot be "
                            f"checked against this machine; {rebuild}")
    built = DeviceInfo(*(str(extra[f]) for f in fields))
    labels = {"tensorrt_version": "TensorRT version", "gpu_name": "GPU",
              "compute_capability": "compute capability"}
    differ = [labels[f] for f in fields if getattr(built, f) != getattr(running, f)]
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise ArtifactError(
            f"engine in {folder} was built with TensorRT {built.tensorrt_version} for {built.gpu_name} "
            f"(compute {built.compute_capability}); this machine has TensorRT {running.tensorrt_version} and "
            f"{running.gpu_name} (compute {running.compute_capability}); the {' and '.join(differ)} "
            f"{verb} and an engine runs only where it was built; {rebuild}"
        )


def device_info(cuda: CudaPythonBackend, tensorrt_version: str) -> DeviceInfo:
    name, cc = cuda.device_info()
    return DeviceInfo(tensorrt_version, name, cc)


# -- the runner ----------------------------------------------------------------------------------------------
class TensorRTRunner(Runner):
    """One deserialized engine, one stream; not thread safe (calls are serialised by the base class lock)."""

    engine = TENSORRT.name
    thread_safe = False

    def __init__(self, folder: Path, manifest: Manifest, cuda_graph: bool = False, device: int = 0) -> None:
        super().__init__(folder, manifest)
        self._cuda: Any = None
        self._graphs: dict[int, tuple[Any, Any]] = {}  # batch size -> (context, graph)
        self.captures = 0  # CUDA graphs recorded: one per batch size, never one per call
        trt = require(TENSORRT.package, TENSORRT.extra, "running TensorRT engines")
        self._trt = trt
        self._cuda = open_cuda(device)
        check_engine_compatible(manifest.extra, device_info(self._cuda, trt.__version__), self.folder,
                                manifest.precision)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        plan = self.read_artifact(manifest.model)  # deserialized from the very bytes whose sha256 was checked
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not deserialize "
                                f"{self.folder / manifest.model}; rebuild it with edgead compile "
                                f"{self.folder.parent} --engine trt")
        # one scratch block for every context: the most any profile needs
        self._scratch = self._cuda.alloc_device(max(int(self._engine.device_memory_size_v2), 1))
        self._context = self._new_context()
        self.cuda_graph = bool(cuda_graph)
        self._setup_io()

    def _new_context(self) -> Any:
        """An execution context on the runner's shared scratch block (no device memory of its own)."""
        context = self._engine.create_execution_context(self._trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EdgeadError("TensorRT could not create an execution context (is the GPU out of memory?)")
        context.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        return context

    def _setup_io(self) -> None:
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ArtifactError(f"expected an engine with one input (images), found inputs {inputs}")
        self._input = inputs[0]
        self._outputs = [n for n in names if n not in inputs]
        lo, _opt, hi = (tuple(s) for s in eng.get_tensor_profile_shape(self._input, 0))
        self._profile = (int(lo[0]), int(hi[0]))
        self._in_dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(self._input)))
        h, w = self.spec.input_size
        self._in_shape = (h, w, 3)
        n = self._profile[1]
        self._context.set_input_shape(self._input, (n, *self._in_shape))
        self._out_shapes = {o: tuple(self._context.get_tensor_shape(o))[1:] for o in self._outputs}
        self._out_dtypes = {o: np.dtype(trt.nptype(eng.get_tensor_dtype(o))) for o in self._outputs}
        self._bytes = {self._input: n * int(np.prod(self._in_shape)) * self._in_dtype.itemsize}
        for o in self._outputs:
            per_image = int(np.prod(self._out_shapes[o], dtype=np.int64)) * self._out_dtypes[o].itemsize
            self._bytes[o] = n * per_image
        self._dev = {k: self._cuda.alloc_device(v) for k, v in self._bytes.items()}
        self._host = {k: self._cuda.alloc_host(v) for k, v in self._bytes.items()}
        self._bind(self._context)
        self._batch_set = n

    @property
    def max_batch(self) -> int | None:
        return self._profile[1] if hasattr(self, "_profile") else self.manifest.batch[1]

    def _bind(self, context: Any) -> None:
        for name, buf in self._dev.items():
            context.set_tensor_address(name, buf.ptr)

    def _nbytes(self, name: str, n: int) -> int:
        return self._bytes[name] // self._profile[1] * n

    def _enqueue(self, context: Any, n: int) -> bool:
        """Copy in, run, copy out, all queued on the one stream (also the body of a captured graph)."""
        self._cuda.copy_h2d(self._dev[self._input], self._host[self._input], self._nbytes(self._input, n))
        ok = context.execute_async_v3(self._cuda.stream_handle)
        for o in self._outputs:
            self._cuda.copy_d2h(self._host[o], self._dev[o], self._nbytes(o, n))
        return bool(ok)

    def _graph_for(self, n: int) -> tuple[Any, Any]:
        if n not in self._graphs:
            # A graph freezes shapes and addresses, so each batch size gets its own execution context.
            context = self._new_context()
            context.set_input_shape(self._input, (n, *self._in_shape))
            self._bind(context)
            # Enqueue once outside capture so TensorRT's lazy, shape-dependent setup is not recorded.
            if not self._enqueue(context, n):
                raise EdgeadError(f"TensorRT failed to run the engine for batch {n}")
            self._cuda.synchronize()
            self._graphs[n] = (context, self._cuda.capture(lambda: self._enqueue(context, n)))
            self.captures += 1
        return self._graphs[n]

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        self._cuda.use()  # the caller's thread may not be the one that opened the runner
        batch = images if self._in_dtype == np.uint8 else images.astype(self._in_dtype)
        self._host[self._input].array[: batch.nbytes] = batch.reshape(-1).view(np.uint8)
        if self.cuda_graph:
            self._cuda.launch(self._graph_for(n)[1])
        else:
            if n != self._batch_set:
                if not self._context.set_input_shape(self._input, (n, *self._in_shape)):
                    lo, hi = self._profile
                    raise EdgeadError(f"batch {n} is outside the engine's profile {lo}..{hi}")
                self._batch_set = n
            if not self._enqueue(self._context, n):
                raise EdgeadError(f"TensorRT failed to run the engine for batch {n}")
        self._cuda.synchronize()
        outs = {}
        for o in self._outputs:
            dt, shape = self._out_dtypes[o], self._out_shapes[o]
            raw = self._host[o].array[: self._nbytes(o, n)]
            outs[o] = raw.view(dt).reshape(n, *shape).astype(np.float32)  # astype copies out of pinned memory
        scores, maps = OUTPUTS
        return outs.get(scores, outs[self._outputs[0]]), outs.get(maps, outs[self._outputs[-1]])

    def close(self) -> None:
        cuda = self._cuda
        if cuda is None:
            return
        for _context, graph in self._graphs.values():
            cuda.destroy_graph(graph)
        self._graphs = {}
        self._context = None
        for buf in [*getattr(self, "_dev", {}).values(), *getattr(self, "_host", {}).values(),
                    getattr(self, "_scratch", None)]:
            if buf is not None:
                cuda.free(buf)
        self._engine = None
        cuda.close()
        self._cuda = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may already have torn the CUDA bindings down
            pass

    def describe(self) -> str:
        mode = ", CUDA graphs" if self.cuda_graph else ""
        return f"trt {self.manifest.precision}{mode} ({self.folder})"


RUNNER = TensorRTRunner
