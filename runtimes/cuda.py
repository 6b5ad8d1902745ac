"""CUDA device memory, pinned host memory, one stream and CUDA graphs for TensorRT, through cuda-python.

Shared by the TensorRT runner (``edgead.runtimes.trt_runner``) and the builder's legacy entropy calibrator
(``edgead.calib.trt_calibrator``). CUDA's current device is per host thread, so every entry point that
touches memory or the stream first selects the backend's device on the calling thread (``use``).
Imports cuda-python lazily; imports no torch.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgead.errors import EdgeadError, MissingDependencyError

NO_GPU = ("TensorRT engines need an NVIDIA GPU with its driver installed (nvidia-smi must list it); "
          "run this artifact on a GPU machine or use the onnxruntime / openvino artifacts here")


# -- buffers and the backend -------------------------------------------------------------------------------------------
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
    """Device memory, pinned memory, one non-blocking stream and CUDA graphs through cuda-python.

    The torch-CUDA fallback of earlier versions is gone: it was never run anywhere, and cuda-python is part of
    the ``trt`` extra.
    """

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
        self.device_selections = 0  # how many times a calling thread was pointed at ``device``
        self.use()
        self._stream = self._check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")
        self.stream_handle = int(self._stream)

    def use(self) -> None:
        """Make ``device`` current on the calling thread (CUDA keeps the current device per host thread)."""
        self._check(self._rt.cudaSetDevice(self.device), "cudaSetDevice")
        self.device_selections += 1

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


def open_cuda(device: int = 0) -> CudaPythonBackend:
    """The cuda-python backend on ``device``; one clear line without cuda-python, a driver or a GPU."""
    return CudaPythonBackend(device)
