"""Legacy TensorRT 10 INT8 entropy calibration: the batch feeder, the cache file, the ``IInt8EntropyCalibrator2``.

Only ``--int8-mode entropy`` uses this, on TensorRT 10 (11 removed implicit INT8); the default INT8 path
builds strongly typed from the Q/DQ graph. Every TensorRT 11-removed name the build needs for it
(``BuilderFlag.INT8``/``FP16``, ``int8_calibrator``, ``set_calibration_profile``) lives in
``configure_legacy_int8`` here and nowhere else.

The feeder and the cache helpers are pure Python (tested without a GPU). ``make_entropy_calibrator``
defines the TensorRT subclass only when ``tensorrt`` imports; it copies each batch into one device buffer
and hands TensorRT the pointer. Batches come from ``CalibrationSet``, so TensorRT sees the pixels the
deployed engine will see. TensorRT calls the calibrator from C++ and only prints exceptions raised in it,
so the calibrator keeps the first error and ``compile_trt`` re-raises it after the build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgead.calib.dataset import CalibrationSet
from edgead.errors import EdgeadError, InputError, require
from edgead.fsutil import atomic_file

CACHE = "calibration.cache"


class CalibrationFeeder:
    """Batches of exactly ``batch_size`` images as ``dtype`` (the engine input's type), ``max_batches`` max.

    TensorRT calibrates a dynamic-shape network at the OPT shape of its calibration profile, so every batch
    has the same size; the last one is padded by repeating images (``CalibrationSet.full_batches``). A float
    ``dtype`` keeps raw 0..255 pixel values: scaling and mean/std live inside the graph.
    """

    def __init__(self, calib: CalibrationSet, batch_size: int, dtype: Any = np.uint8,
                 max_batches: int | None = None) -> None:
        if batch_size < 1:
            raise InputError(f"calibration batch size must be >= 1, found {batch_size}")
        self.calib = calib
        self.batch_size = int(batch_size)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float16)):
            raise InputError(f"calibration batches must be uint8, float32 or float16, found {self.dtype}")
        self.max_batches = max_batches

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h, w = self.calib.spec.input_size
        return self.batch_size, h, w, 3

    @property
    def nbytes(self) -> int:
        """Bytes of one batch: the size of the device buffer the calibrator allocates."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        n = -(-len(self.calib) // self.batch_size)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, batch in enumerate(self.calib.full_batches(self.batch_size)):
            if i >= len(self):
                return
            yield np.ascontiguousarray(batch, dtype=self.dtype)

    def fingerprint(self, model_sha256: str) -> str:
        """Identifies one calibration run: the network (its sha256), the images, the batch size and dtype.

        A cache whose fingerprint differs was computed for another model or other images: never reuse it.
        """
        h = hashlib.sha256()
        h.update(model_sha256.encode())
        h.update(f"{self.shape}:{self.dtype.str}:{len(self)}".encode())
        h.update(np.ascontiguousarray(self.calib.images).tobytes())
        return h.hexdigest()


def read_cache(path: str | Path) -> bytes | None:
    """The calibration cache bytes, or None when there is none (TensorRT then calibrates from the batches)."""
    p = Path(path)
    if not p.is_file():
        return None
    data = p.read_bytes()
    return data or None


def write_cache(path: str | Path, data: bytes | memoryview) -> None:
    """Write the cache TensorRT hands back, atomically (a killed build leaves no half-written cache)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(bytes(data))


def make_entropy_calibrator(feeder: CalibrationFeeder, cache_path: str | Path, cuda: Any = None) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` over ``feeder`` that reads and writes ``cache_path``.

    ``cuda`` is a device backend from ``edgead.runtimes.trt_runner.open_cuda`` (opened here when None).
    Call ``close()`` on the result after the build to free its buffers.
    """
    trt = require("tensorrt", "trt", "INT8 entropy calibration")
    from edgead.runtimes.cuda import open_cuda

    backend = cuda if cuda is not None else open_cuda()
    cache_path = Path(cache_path)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # deprecated in TensorRT 10.1, removed in 11
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feeder = feeder
            self.batches_fed = 0
            self.error: Exception | None = None
            self.cache_reads = 0  # a reused cache is read and no batch is fed
            self._device = backend.alloc_device(feeder.nbytes)
            self._host = backend.alloc_host(feeder.nbytes)
            self._batches = iter(feeder)

        def get_batch_size(self) -> int:
            return feeder.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                if len(names) != 1:
                    raise EdgeadError(f"the calibrator feeds one input (images), TensorRT asked for {names}")
                batch = next(self._batches, None)
                if batch is None:
                    return None
                self._host.array[: batch.nbytes] = batch.reshape(-1).view(np.uint8)
                backend.copy_h2d(self._device, self._host, batch.nbytes)
                backend.synchronize()
                self.batches_fed += 1
                return [self._device.ptr]
            except Exception as exc:  # TensorRT would only print it; keep it for compile_trt to raise
                self.error = self.error or exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            data = read_cache(cache_path)
            self.cache_reads += data is not None
            return data

        def write_calibration_cache(self, cache: memoryview) -> None:
            try:
                write_cache(cache_path, cache)
            except Exception as exc:
                self.error = self.error or exc

        def close(self) -> None:
            backend.free(self._device)
            backend.free(self._host)

    return EntropyCalibrator()


def configure_legacy_int8(trt: Any, config: Any, profile: Any, calibrator: Any, network: Any,
                          onnx_path: Path) -> None:
    """TensorRT 10 weak typing for the legacy entropy path: FP16 and INT8 flags, the calibrator and its profile.

    Nothing else in edgead uses these names; TensorRT 11 removed all of them.
    """
    if np.dtype(trt.nptype(network.get_input(0).dtype)) != calibrator.feeder.dtype:
        raise EdgeadError(f"the calibrator feeds {calibrator.feeder.dtype} batches but {onnx_path} takes "
                          f"{trt.nptype(network.get_input(0).dtype).__name__} images")
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)  # calibration runs at the profile's OPT shape
