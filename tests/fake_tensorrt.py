"""TEST HARNESS, not an engine: a fake ``tensorrt`` module and a numpy-backed CUDA backend.

They let CI exercise the GPU-only bookkeeping of ``edgead.runtimes.trt_runner`` and of the builder in
``edgead.export.tensorrt`` on a CPU: I/O setup, chunking into the profile, one CUDA graph per batch size,
the shared scratch block, device selection per call, the timing cache (reuse, rejection), version refusal and
the builder's call sequence. The "engine" it runs computes nothing real: it writes a deterministic function of
the input bytes (per-image mean pixel as score, the first channel as map) so that copies, offsets and chunking
are checked by value. It models only the TensorRT 10/11 names edgead's default path may use; anything
TensorRT 11 removed (``BuilderFlag.FP16``, ``int8_calibrator``, ...) is absent, so touching it fails.
"""

from __future__ import annotations

import enum
import importlib.machinery
import types
from typing import Any

import numpy as np

from edgead.runtimes.cuda import DeviceBuffer, HostBuffer

# -- the numpy "GPU" -----------------------------------------------------------------------------------------
_MEMORY: dict[int, np.ndarray] = {}  # fake device pointer -> its bytes


class NumpyCuda:
    """A stand-in for ``edgead.runtimes.cuda.CudaPythonBackend``: numpy arrays for device and pinned memory,
    a queue of callables for the stream, recorded lists of callables for CUDA graphs; counts what it does."""

    name = "numpy-fake-cuda"

    def __init__(self, device: int = 0, gpu: tuple[str, str] = ("Fake GPU", "8.9")) -> None:
        self.device = device
        self.gpu = gpu
        self.stream_handle = 7
        self.device_selections = 0
        self.pending: list[Any] = []
        self.capturing: list[Any] | None = None
        self.counts = {"alloc_device": 0, "alloc_host": 0, "free": 0, "capture": 0, "launch": 0, "sync": 0}
        self.closed = False

    def use(self) -> None:
        self.device_selections += 1

    def device_info(self) -> tuple[str, str]:
        return self.gpu

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        self.counts["alloc_device"] += 1
        arr = np.zeros(nbytes, np.uint8)
        ptr = arr.ctypes.data
        _MEMORY[ptr] = arr
        return DeviceBuffer(ptr, nbytes, arr)

    def alloc_host(self, nbytes: int) -> HostBuffer:
        self.counts["alloc_host"] += 1
        arr = np.zeros(nbytes, np.uint8)
        return HostBuffer(arr.ctypes.data, nbytes, arr, arr)

    def free(self, buf: DeviceBuffer | HostBuffer) -> None:
        if buf.ptr:
            self.counts["free"] += 1
            _MEMORY.pop(buf.ptr, None)
            buf.ptr = 0

    def _enqueue(self, op: Any) -> None:
        (self.capturing if self.capturing is not None else self.pending).append(op)

    def copy_h2d(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int) -> None:
        self._enqueue(lambda: _MEMORY[dst.ptr].__setitem__(slice(0, nbytes), src.array[:nbytes]))

    def copy_d2h(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int) -> None:
        self._enqueue(lambda: dst.array.__setitem__(slice(0, nbytes), _MEMORY[src.ptr][:nbytes]))

    def synchronize(self) -> None:
        self.counts["sync"] += 1
        ops, self.pending = self.pending, []
        for op in ops:
            op()

    def capture(self, work: Any) -> Any:
        self.counts["capture"] += 1
        self.capturing = []
        try:
            ok = work()
        finally:
            graph, self.capturing = self.capturing, None
        assert ok, "fake capture: enqueue failed"
        return list(graph)

    def launch(self, graph: Any) -> None:
        self.counts["launch"] += 1
        self.pending.extend(graph)

    def destroy_graph(self, graph: Any) -> None:
        graph.clear()

    def close(self) -> None:
        self.closed = True


# -- the fake tensorrt module --------------------------------------------------------------------------------
class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    UINT8 = 5


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.UINT8: np.uint8}


def make_tensorrt(version: str = "10.8.0", calls: list[str] | None = None, max_batch: int = 4,
                  input_size: tuple[int, int] = (14, 14), reject_cache: bytes | None = None,
                  mismatch_cache: bytes | None = None) -> types.ModuleType:
    """A fake ``tensorrt`` module. ``calls`` records the builder and runtime calls in order. A timing cache
    whose bytes equal ``reject_cache`` makes ``create_timing_cache`` return None (as TensorRT does after an
    upgrade); one equal to ``mismatch_cache`` makes ``set_timing_cache`` return False (another GPU)."""
    log = calls if calls is not None else []
    h, w = input_size
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.TEST_HARNESS = True
    major = int(version.split(".")[0])

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class ExecutionContextAllocationStrategy(enum.IntEnum):
        STATIC = 0
        ON_PROFILE_CHANGE = 1
        USER_MANAGED = 2

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 5

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    def nptype(dt: DataType) -> type:
        return _NP[DataType(dt)]

    shapes = {"images": (h, w, 3), "scores": (), "maps": (h, w)}
    dtypes = {"images": DataType.UINT8, "scores": DataType.FLOAT, "maps": DataType.FLOAT}

    class ExecutionContext:
        def __init__(self, engine: Engine, strategy: ExecutionContextAllocationStrategy) -> None:
            self.engine, self.strategy = engine, strategy
            self.addresses: dict[str, int] = {}
            self.scratch: tuple[int, int] | None = None
            self.batch = 0

        def set_device_memory(self, ptr: int, size: int) -> None:
            log.append("context.set_device_memory")
            assert size >= self.engine.device_memory_size_v2
            self.scratch = (ptr, size)

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if not 1 <= shape[0] <= max_batch or tuple(shape[1:]) != shapes[name]:
                return False
            self.batch = int(shape[0])
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.batch, *shapes[name])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert self.scratch is not None or self.strategy != ExecutionContextAllocationStrategy.USER_MANAGED
            n, addresses = self.batch, dict(self.addresses)
            cuda = trt.cuda_for_test

            def run() -> None:
                images = _MEMORY[addresses["images"]][: n * h * w * 3].reshape(n, h, w, 3)
                scores = images.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
                maps = images[..., 0].astype(np.float32) / 255.0
                _MEMORY[addresses["scores"]][: scores.nbytes] = scores.view(np.uint8)
                _MEMORY[addresses["maps"]][: maps.nbytes] = maps.reshape(-1).view(np.uint8)

            cuda._enqueue(run)
            return True

    class Engine:
        device_memory_size_v2 = 4096
        num_io_tensors = 3
        def __init__(self) -> None:
            self.contexts: list[ExecutionContext] = []

        def get_tensor_name(self, i: int) -> str:
            return ["images", "scores", "maps"][i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name == "images" else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, h, w, 3), (max(1, max_batch // 2), h, w, 3), (max_batch, h, w, 3)]

        def get_tensor_dtype(self, name: str) -> DataType:
            return dtypes[name]

        def create_execution_context(self, strategy: Any = ExecutionContextAllocationStrategy.STATIC) -> Any:
            log.append(f"engine.create_execution_context({ExecutionContextAllocationStrategy(strategy).name})")
            ctx = ExecutionContext(self, ExecutionContextAllocationStrategy(strategy))
            self.contexts.append(ctx)
            return ctx

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            log.append("Runtime")

        def deserialize_cuda_engine(self, plan: bytes) -> Any:
            log.append("runtime.deserialize_cuda_engine")
            return Engine() if plan.startswith(b"fake-plan") else None

    # -- builder side
    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data or b"fake-timing-cache:fresh"

        def serialize(self) -> bytes:
            return self.data

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            log.append(f"profile.set_shape({name}, {lo[0]}, {opt[0]}, {hi[0]})")
            self.shapes[name] = (lo, opt, hi)

    class BuilderConfig:
        def __init__(self) -> None:
            self.cache: TimingCache | None = None
            self.profiles: list[OptimizationProfile] = []

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            log.append(f"config.set_memory_pool_limit({size})")

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            log.append("config.add_optimization_profile")
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> Any:
            data = bytes(data)
            log.append(f"config.create_timing_cache({len(data)} bytes)")
            return None if reject_cache is not None and data == reject_cache else TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            assert cache is not None, "set_timing_cache(None) crashes TensorRT"
            ok = not (mismatch_cache is not None and cache.data == mismatch_cache)
            log.append(f"config.set_timing_cache({'ok' if ok else 'mismatch'})")
            if ok:
                self.cache = cache
            return ok

    class Input:
        name = "images"
        dtype = DataType.UINT8

    class Network:
        num_inputs = 1

        def __init__(self, flags: int) -> None:
            self.flags = flags

        def get_input(self, i: int) -> Input:
            return Input()

    class Error:
        def node_name(self) -> str:
            return "/post/TopK"

        def node(self) -> int:
            return 3

        def node_operator(self) -> str:
            return "TopK"

        def desc(self) -> str:
            return "fake parser error"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            log.append(f"parser.parse_from_file({path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]})")
            return True

    class Builder:
        def __init__(self, logger: Logger) -> None:
            log.append("Builder")

        def create_network(self, flags: int = 0) -> Network:
            log.append(f"builder.create_network({flags})")
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            log.append("builder.build_serialized_network")
            assert config.cache is not None and config.profiles
            if major < 11:
                assert network.flags == 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            return b"fake-plan:" + version.encode()

    trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = Logger, Runtime, Builder, OnnxParser
    trt.TensorIOMode, trt.DataType, trt.nptype = TensorIOMode, DataType, nptype
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType
    trt.float32, trt.float16, trt.int8, trt.uint8 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.UINT8
    trt.cuda_for_test = None  # the NumpyCuda whose stream the fake engine enqueues on (set by the test)
    return trt
