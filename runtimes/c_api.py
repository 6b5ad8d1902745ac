"""A ctypes binding of libedgead (``runtimes/c/edgead.h``), for tests and for timing the C runtime from Python.

>>> lib = CLibrary("out/c/libedgead.so")
>>> with lib.open("out/openvino-fp32") as h:
...     scores, maps = h.predict(images)  # uint8 (N, H, W, 3)

Every failing call raises ``CAPIError`` carrying the status name and the library's one-line message. Imports no
torch (and no engine: the library brings its own).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edgead.errors import EdgeadError

API_VERSION = 2  # 2: edgead_tiling_info, edgead_predict_frame


class CAPIError(EdgeadError):
    """A libedgead call returned an error status; ``status`` is its name as the library spells it
    (``edgead_status_string``), ``code`` its number."""

    def __init__(self, status: str, message: str, code: int | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(f"{self.status}: {message}")


class _Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("device", ctypes.c_char_p), ("num_threads", ctypes.c_int)]


_u8p, _f32p, _int_p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
_SIGNATURES = {
    "edgead_version": ([], ctypes.c_char_p),
    "edgead_api_version": ([], ctypes.c_int),
    "edgead_status_string": ([ctypes.c_int], ctypes.c_char_p),
    "edgead_options_init": ([ctypes.POINTER(_Options)], None),
    "edgead_open": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int),
    "edgead_open_ex": ([ctypes.c_char_p, ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int),
    "edgead_input_info": ([ctypes.c_void_p, _int_p, _int_p, _int_p, _f32p, _int_p], ctypes.c_int),
    "edgead_predict": ([ctypes.c_void_p, _u8p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_size_t, _f32p,
                        _f32p, ctypes.c_size_t], ctypes.c_int),
    "edgead_tiling_info": ([ctypes.c_void_p, _int_p, _int_p, _int_p, _int_p], ctypes.c_int),
    "edgead_predict_frame": ([ctypes.c_void_p, _u8p, ctypes.c_int, ctypes.c_int, ctypes.c_size_t, _f32p, _f32p,
                              ctypes.c_size_t], ctypes.c_int),
    "edgead_last_error": ([ctypes.c_void_p], ctypes.c_char_p),
    "edgead_describe": ([ctypes.c_void_p], ctypes.c_char_p),
    "edgead_close": ([ctypes.c_void_p], None),
}


class CLibrary:
    """libedgead loaded with ctypes; ``raw`` is the ``ctypes.CDLL`` with its signatures declared."""

    def __init__(self, lib_path: str | Path) -> None:
        path = Path(lib_path)
        if path.is_dir():
            path = path / "libedgead.so"
        try:
            self.raw = ctypes.CDLL(str(path))
        except OSError as exc:
            raise EdgeadError(f"expected libedgead at {path}, could not load it ({exc}); build it with "
                              f"edgead build-c OUT") from exc
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(self.raw, name)
            fn.argtypes, fn.restype = args, res
        if self.raw.edgead_api_version() < API_VERSION:
            raise EdgeadError(f"expected libedgead API version >= {API_VERSION}, found "
                              f"{self.raw.edgead_api_version()} in {path}; rebuild it")

    @property
    def version(self) -> str:
        return self.raw.edgead_version().decode()

    def last_error(self, handle: int | None = None) -> str:
        return (self.raw.edgead_last_error(handle) or b"").decode(errors="replace")

    def status_name(self, status: int) -> str:
        """The library's own name for a status code (``EDGEAD_ERR_NOT_FOUND``...)."""
        return (self.raw.edgead_status_string(status) or b"").decode(errors="replace") or f"status {status}"

    def check(self, status: int, handle: int | None = None) -> None:
        if status != 0:
            raise CAPIError(self.status_name(status), self.last_error(handle), status)

    def open(self, artifact_dir: str | Path, device: str | None = None, threads: int = 0) -> CHandle:
        opts = _Options()
        self.raw.edgead_options_init(ctypes.byref(opts))
        opts.device = device.encode() if device else None
        opts.num_threads = int(threads)
        handle = ctypes.c_void_p()
        self.check(self.raw.edgead_open_ex(str(artifact_dir).encode(), ctypes.byref(opts), ctypes.byref(handle)))
        return CHandle(self, handle.value)


class CHandle:
    """One opened artifact. ``predict`` takes uint8 ``(N, H, W, 3)``; row-strided views are passed without a copy."""

    def __init__(self, lib: CLibrary, handle: int) -> None:
        self.lib = lib
        self.handle: int | None = handle
        h, w, mb, has = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        thr = ctypes.c_float()
        lib.check(lib.raw.edgead_input_info(handle, *(ctypes.byref(v) for v in (h, w, mb, thr, has))), handle)
        self.input_size = (h.value, w.value)
        self.max_batch = mb.value or None
        self.threshold = float(thr.value) if has.value else None
        tiled, th, tw, overlap = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.check(lib.raw.edgead_tiling_info(handle, *(ctypes.byref(v) for v in (tiled, th, tw, overlap))), handle)
        #: ((tile h, tile w), overlap) of the artifact's tiling plan, or None
        self.tiling = ((th.value, tw.value), overlap.value) if tiled.value else None

    def describe(self) -> str:
        return self.lib.raw.edgead_describe(self._live()).decode()

    def _live(self) -> int:
        if self.handle is None:
            raise EdgeadError("this libedgead handle is closed")
        return self.handle

    def predict(self, images: np.ndarray, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores ``(N,)`` and maps ``(N, H, W)`` (None with ``maps=False``) for uint8 images ``(N, H, W, 3)``."""
        handle = self._live()
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise EdgeadError(f"expected a uint8 array (N, H, W, 3), found "
                              f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
        n, height, width = images.shape[:3]
        s0, s1, s2, s3 = images.strides
        if not (s3 == 1 and s2 == 3 and s1 >= width * 3 and s0 == height * s1):
            images = np.ascontiguousarray(images)
            s1 = width * 3
        scores = np.empty(n, np.float32)
        out_maps = np.empty((n, height, width), np.float32) if maps else None
        status = self.lib.raw.edgead_predict(
            handle, images.ctypes.data_as(_u8p), n, height, width, s1, scores.ctypes.data_as(_f32p),
            out_maps.ctypes.data_as(_f32p) if out_maps is not None else None, out_maps.size if maps else 0,
        )
        self.lib.check(status, handle)
        return scores, out_maps

    def predict_frame(self, frame: np.ndarray, maps: bool = True) -> tuple[float, np.ndarray | None]:
        """Score and ``(H, W)`` map (None with ``maps=False``) of one uint8 ``(H, W, 3)`` frame of any size, by the
        artifact's tiling plan (``edgead_predict_frame``); a row-strided view is passed without a copy."""
        handle = self._live()
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise EdgeadError(f"expected a uint8 frame (H, W, 3), found "
                              f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}")
        height, width = frame.shape[:2]
        s0, s1, s2 = frame.strides
        if not (s2 == 1 and s1 == 3 and s0 >= width * 3):
            frame = np.ascontiguousarray(frame)
            s0 = width * 3
        score = ctypes.c_float()
        out = np.empty((height, width), np.float32) if maps else None
        status = self.lib.raw.edgead_predict_frame(
            handle, frame.ctypes.data_as(_u8p), height, width, s0, ctypes.byref(score),
            out.ctypes.data_as(_f32p) if out is not None else None, out.size if out is not None else 0,
        )
        self.lib.check(status, handle)
        return float(score.value), out

    def close(self) -> None:
        if self.handle is not None:
            self.lib.raw.edgead_close(self.handle)
            self.handle = None

    def __enter__(self) -> CHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
