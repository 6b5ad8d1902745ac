"""TensorRT runner: a serialized engine on one NVIDIA GPU behind the common ``Runner`` interface.

Device memory, pinned host memory and the one CUDA stream come from cuda-python (the ``trt`` extra) or,
where cuda-python is missing, from PyTorch's CUDA allocator when torch has CUDA. Each call copies the batch
from pinned memory, sets the input shape, runs ``execute_async_v3`` and copies the outputs back on that
stream. With ``cuda_graph=True`` each batch size is captured once (copy in, enqueue, copy out) into a CUDA
graph, on an execution context of its own, and replayed. An engine built for another TensorRT version or GPU
model is refused before TensorRT tries to deserialize it. Imports neither tensorrt nor torch at module level.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgead.errors import ArtifactError, EdgeadError, MissingDependencyError, require
from edgead.registry import OUTPUTS
from edgead.runtimes.base import Runner
from edgead.runtimes.manifest import Manifest

NO_GPU = ("TensorRT engines need an NVIDIA GPU with its driver installed (nvidia-smi must list it); "
          "run this artifact on a GPU machine or use the onnxruntime / openvino artifacts here")


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


# -- CUDA backends -------------------------------------------------------------------------------------------
@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    handle: Any = None  # the owning object (a torch tensor) where the backend needs one


@dataclass
class HostBuffer:
    """Pinned (page-locked) host memory; ``array`` is a uint8 view of it."""

    ptr: int
    nbytes: int
    array: np.ndarray
    handle: Any = None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise MissingDependencyError("cuda-python", "trt", "CUDA memory for TensorRT") from exc
    return cudart


class CudaPythonBackend:
    """Device memory, pinned memory, one non-blocking stream and CUDA graphs through cuda-python."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        self._rt = rt = _cudart()
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or not count:
            _, driver = rt.cudaDriverGetVersion()
            if err == rt.cudaError_t.cudaErrorInsufficientDriver and driver:
                _, runtime = rt.cudaRuntimeGetVersion()
                raise EdgeadError(f"NVIDIA driver (CUDA {driver // 1000}.{driver % 1000 // 10}) is older "
                                  f"than the CUDA runtime {runtime // 1000}.{runtime % 1000 // 10} of "
                                  f"cuda-python; update the driver or install a cuda-python matching it")
            found = "no NVIDIA driver" if not driver else "no NVIDIA GPU"
            raise EdgeadError(f"found {found} on this machine ({self._name(err)}); {NO_GPU}")
        if not 0 <= device < count:
            raise EdgeadError(f"CUDA device {device} does not exist; this machine has {count} "
                              f"(0..{count - 1})")
        self.device = device
        self._check(rt.cudaSetDevice(device), "cudaSetDevice")
        self._stream = self._check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")
        self.stream_handle = int(self._stream)

    def _name(self, err: Any) -> str:
        return self._rt.cudaGetErrorName(err)[1].decode()

    def _check(self, result: tuple, what: str) -> Any:
        err, rest = result[0], result[1:]
        if err != self._rt.cudaError_t.cudaSuccess:
            raise EdgeadError(f"CUDA call {what} failed with {self._name(err)}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_info(self) -> tuple[str, str]:
        props = self._check(self._rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip(), f"{props.major}.{props.minor}"

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(int(self._check(self._rt.cudaMalloc(nbytes), "cudaMalloc")), nbytes)

    def alloc_host(self, nbytes: int) -> HostBuffer:
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return HostBuffer(ptr, nbytes, array)

    def free(self, buf: DeviceBuffer | HostBuffer) -> None:
        if buf.ptr:
            fn = self._rt.cudaFreeHost if isinstance(buf, HostBuffer) else self._rt.cudaFree
            fn(buf.ptr)
            buf.ptr = 0

    def copy_h2d(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream), "cudaMemcpyAsync")

    def copy_d2h(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self._stream), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def capture(self, work: Callable[[], bool]) -> Any:
        """Record ``work`` (which enqueues on this stream) into an instantiated CUDA graph."""
        rt = self._rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(rt.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            ok = work()
        finally:
            err, graph = rt.cudaStreamEndCapture(self._stream)
        if not ok or err != rt.cudaError_t.cudaSuccess:
            if graph is not None and int(graph):
                rt.cudaGraphDestroy(graph)
            raise EdgeadError("this engine cannot be captured in a CUDA graph (TensorRT refused to enqueue "
                              "during capture); run it with cuda_graph=False")
        exe = self._check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return graph, exe

    def launch(self, graph: Any) -> None:
        self._check(self._rt.cudaGraphLaunch(graph[1], self._stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self._rt.cudaGraphExecDestroy(graph[1])
        self._rt.cudaGraphDestroy(graph[0])

    def close(self) -> None:
        if self._stream is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None


class TorchCudaBackend:
    """The same operations on PyTorch CUDA tensors, for machines with a CUDA torch but no cuda-python."""

    name = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EdgeadError(f"torch sees no CUDA device; {NO_GPU}")
        self._torch = torch
        self.device = device
        self._dev = torch.device("cuda", device)
        self._stream = torch.cuda.Stream(self._dev)
        self.stream_handle = int(self._stream.cuda_stream)

    def device_info(self) -> tuple[str, str]:
        major, minor = self._torch.cuda.get_device_capability(self._dev)
        return self._torch.cuda.get_device_name(self._dev), f"{major}.{minor}"

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        t = self._torch.empty(nbytes, dtype=self._torch.uint8, device=self._dev)
        return DeviceBuffer(int(t.data_ptr()), nbytes, t)

    def alloc_host(self, nbytes: int) -> HostBuffer:
        t = self._torch.empty(nbytes, dtype=self._torch.uint8, pin_memory=True)
        return HostBuffer(int(t.data_ptr()), nbytes, t.numpy(), t)

    def free(self, buf: DeviceBuffer | HostBuffer) -> None:
        buf.handle, buf.ptr = None, 0

    def copy_h2d(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int) -> None:
        with self._torch.cuda.stream(self._stream):
            dst.handle[:nbytes].copy_(src.handle[:nbytes], non_blocking=True)

    def copy_d2h(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int) -> None:
        with self._torch.cuda.stream(self._stream):
            dst.handle[:nbytes].copy_(src.handle[:nbytes], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def capture(self, work: Callable[[], bool]) -> Any:
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=self._stream):
            ok = work()
        if not ok:
            raise EdgeadError("this engine cannot be captured in a CUDA graph; run it with cuda_graph=False")
        return graph

    def launch(self, graph: Any) -> None:
        with self._torch.cuda.stream(self._stream):
            graph.replay()

    def destroy_graph(self, graph: Any) -> None:
        graph.reset()

    def close(self) -> None:
        self._stream = None


def open_cuda(device: int = 0, backend: str = "auto") -> CudaPythonBackend | TorchCudaBackend:
    """A CUDA backend: cuda-python when installed, else torch when it has CUDA; one clear line if neither."""
    if backend not in ("auto", "cuda-python", "torch"):
        raise EdgeadError(f"CUDA backend must be 'auto', 'cuda-python' or 'torch', found '{backend}'")
    if backend == "torch":
        return TorchCudaBackend(device)
    try:
        return CudaPythonBackend(device)
    except MissingDependencyError:
        if backend == "cuda-python":
            raise
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                return TorchCudaBackend(device)
        raise


def device_info(cuda: CudaPythonBackend | TorchCudaBackend, tensorrt_version: str) -> DeviceInfo:
    name, cc = cuda.device_info()
    return DeviceInfo(tensorrt_version, name, cc)


# -- the runner ----------------------------------------------------------------------------------------------
class TensorRTRunner(Runner):
    """One deserialized engine, one stream; not thread safe (calls are serialised by the base class lock)."""

    engine = "trt"
    thread_safe = False

    def __init__(self, folder: Path, manifest: Manifest, cuda_graph: bool = False, device: int = 0,
                 cuda_backend: str = "auto") -> None:
        super().__init__(folder, manifest)
        self._cuda: Any = None
        self._graphs: dict[int, tuple[Any, Any]] = {}  # batch size -> (context, graph)
        trt = require("tensorrt", "trt", "running TensorRT engines")
        self._trt = trt
        self._cuda = open_cuda(device, cuda_backend)
        check_engine_compatible(manifest.extra, device_info(self._cuda, trt.__version__), self.folder,
                                manifest.precision)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        plan = (self.folder / manifest.model).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not deserialize "
                                f"{self.folder / manifest.model}; rebuild it with edgead compile "
                                f"{self.folder.parent} --engine trt")
        self._context = self._engine.create_execution_context()
        self.cuda_graph = bool(cuda_graph)
        self._setup_io()

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
            context = self._engine.create_execution_context()
            context.set_input_shape(self._input, (n, *self._in_shape))
            self._bind(context)
            # Enqueue once outside capture so TensorRT's lazy, shape-dependent setup is not recorded.
            if not self._enqueue(context, n):
                raise EdgeadError(f"TensorRT failed to run the engine for batch {n}")
            self._cuda.synchronize()
            self._graphs[n] = (context, self._cuda.capture(lambda: self._enqueue(context, n)))
        return self._graphs[n]

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
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
        for buf in [*getattr(self, "_dev", {}).values(), *getattr(self, "_host", {}).values()]:
            cuda.free(buf)
        self._context = self._engine = None
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
