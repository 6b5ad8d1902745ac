"""The ``Runner`` base class: one interface over every engine.

``predict`` validates the batch (dtype, rank, channels, size against the artifact's spec), splits it into chunks
the artifact accepts, runs the engine's ``_infer`` hook and returns typed ``Predictions``. Engines implement only
``_infer`` (and optionally ``_infer_stream`` for a native throughput mode). Imports no torch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgead import precisions
from edgead.errors import ArtifactError, InputError
from edgead.runtimes.manifest import Manifest, read_verified
from edgead.spec import DetectorSpec, TilePlan

#: tiles per engine call in ``predict_frames`` when the engine takes any batch (libedgead uses the same number):
#: a 20 Mpx frame of 56 px tiles is thousands of tiles, which one call would hold in memory at once
TILE_BATCH = 8


@dataclass(frozen=True)
class Predictions:
    """Image scores ``(N,)``, anomaly maps ``(N, H, W)`` (float32) and labels ``(N,)`` (True = anomalous).

    ``labels`` is None when the artifact carries no threshold. ``seconds`` is the wall time of the call.
    """

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray | None
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Runner(ABC):
    """Runs one artifact. Subclasses set ``engine`` and implement ``_infer``.

    Thread safety: ``predict`` may be called from several threads at once only when ``thread_safe`` is True;
    otherwise calls are serialised by a lock held for the whole call (correct, but not concurrent).
    """

    engine: ClassVar[str] = ""
    thread_safe: ClassVar[bool] = False

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.spec: DetectorSpec = manifest.spec
        #: how ``predict_frames`` fits a frame: the artifact's tiling plan, or None for the full-frame path
        #: (resize and centre crop by ``edgead.imageio.prepare``). Set it to choose the other path.
        self.tiling: TilePlan | None = self.spec.tiling
        self._lock = threading.Lock()

    def check_model_input(self, shape: list | tuple) -> None:
        """Refuse a model whose static (N, H, W, 3) input differs from the spec's input size: the engine would
        otherwise fail on the first batch with its own exception. Dynamic dimensions (None, -1, names) pass."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        want = (*self.spec.input_size, 3)
        if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want, strict=True)):
            raise ArtifactError(f"{self.folder / self.manifest.model} takes input {list(shape)}, but the manifest's "
                                f"spec says (N, {want[0]}, {want[1]}, 3); the manifest and the model disagree")

    def read_artifact(self, name: str) -> bytes:
        """The bytes of the listed file ``name``, checked against the manifest's sha256 as read. Engines compile
        from these bytes, never from a path: a file swapped after the check cannot be run unseen."""
        return read_verified(self.folder, self.manifest, name)

    # -- engine hooks -------------------------------------------------------------------------------------
    @abstractmethod
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one validated, contiguous uint8 chunk of at most ``max_batch`` images; return (scores, maps)."""

    #: batch axis fixed when the engine's session was built (``static_batch=N``); None: the manifest's range
    static_batch: int | None = None

    def fix_batch(self, n: int | None) -> int | None:
        """Record a static batch size for the session about to be built (validated); returns it."""
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise InputError(f"expected a positive static batch size, found {n!r}")
        self.static_batch = n
        return n

    @property
    def max_batch(self) -> int | None:
        """Largest batch one ``_infer`` call takes (None: any)."""
        return self.static_batch or self.manifest.batch[1]

    @property
    def min_batch(self) -> int:
        return self.static_batch or int(self.manifest.batch[0])

    def executed_precision(self) -> str:
        """The precision the engine computes its matrix products in, as the engine reports it.

        The default is the artifact's precision in the engine's spelling (``fp32`` -> ``f32``); an engine that
        can ask its compiled model (OpenVINO runs a bf16 request in f32 on a CPU without bf16) overrides this.
        Mixed models read like ``int8 79/93`` (79 of 93 products in int8).
        """
        return precisions.executed(self.manifest.precision)

    def profile_runs(self, images: np.ndarray, runs: int) -> list[list[tuple[str, str, float, str]]]:
        """Run ``images`` ``runs`` times with the engine's own profiler (the runner built with ``profiling=True``;
        registry rows with ``profiler``): per run, ``(node name, op type, ms, kernel)`` of every executed node in
        execution order. ``bench.profile`` groups them; engines without a profiler refuse."""
        raise InputError(f"the {self.engine} engine has no per-node profiler")

    def close(self) -> None:  # noqa: B027 - optional hook: most engines free everything on garbage collection
        """Release engine resources (sessions, device buffers)."""

    # -- public API ---------------------------------------------------------------------------------------
    def validate(self, images: np.ndarray) -> np.ndarray:
        """Check dtype, rank, channels and size; return a C-contiguous ``(N, H, W, 3)`` uint8 array."""
        if not isinstance(images, np.ndarray):
            raise InputError(f"expected a numpy uint8 array (N, H, W, 3), found {type(images).__name__}")
        if images.dtype != np.uint8:
            raise InputError(f"expected uint8 images, found dtype {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise InputError(f"expected images of rank 4 (N, H, W, 3), found rank {images.ndim} {images.shape}")
        if images.shape[-1] != 3:
            raise InputError(f"expected 3 RGB channels last (N, H, W, 3), found {images.shape[-1]} in {images.shape}")
        h, w = self.spec.input_size
        if images.shape[1:3] != (h, w):
            raise InputError(
                f"expected images of {h}x{w} (the artifact's input size), found {images.shape[1]}x{images.shape[2]}; "
                f"fit frames with edgead.imageio.prepare"
            )
        if images.shape[0] == 0:
            raise InputError("expected at least one image, found an empty batch")
        return np.ascontiguousarray(images)

    def predict(self, images: np.ndarray) -> Predictions:
        """Scores, maps and labels for a uint8 ``(N, H, W, 3)`` batch of any N."""
        images = self.validate(images)
        t0 = time.perf_counter()
        if self.thread_safe:
            scores, maps = self._run_chunks(images)
        else:
            with self._lock:
                scores, maps = self._run_chunks(images)
        return self._wrap(scores, maps, time.perf_counter() - t0)

    def predict_frames(self, frames: np.ndarray | Sequence[np.ndarray]) -> Predictions:
        """Scores, maps and labels of camera frames of any one size ``(H, W)``: maps come back ``(N, H, W)``.

        With a tiling plan (``self.tiling``, the artifact's by default) each frame is cut into tiles of the input
        size, the tiles run through the engine in calls of at most its max batch (``TILE_BATCH`` when it takes any),
        and ``edgead.runtimes.tiling`` stitches the maps and takes the score over the stitched map. Without one,
        each frame is fitted by
        ``edgead.imageio.prepare``, scored by the graph, and its map brought back onto the frame by
        ``edgead.geometry.map_to_frame``.
        """
        frames = self.validate_frames(frames)
        t0 = time.perf_counter()
        if self.tiling is None:
            from edgead.geometry import map_to_frame
            from edgead.imageio import prepare

            p = self.predict(np.stack([prepare(f, self.spec) for f in frames]))
            maps = np.stack([map_to_frame(m, frames.shape[1:3], self.spec) for m in p.maps])
            return self._wrap(p.scores, maps, time.perf_counter() - t0)
        from edgead.runtimes.tiling import cut, stitch_frames, tile_grid

        if self.tiling.tile != self.spec.input_size:
            raise InputError(f"expected a tiling plan with tiles of the input size {self.spec.input_size}, found "
                             f"{self.tiling.tile}")
        grid = tile_grid(frames.shape[1:3], self.tiling)
        tiles = cut(frames, grid)
        step = self._tiles_per_call()
        with contextlib.nullcontext() if self.thread_safe else self._lock:
            tile_maps = np.concatenate([self._run_chunks(tiles[i : i + step])[1] for i in range(0, len(tiles), step)])
        scores, maps = stitch_frames(tile_maps, grid, self.spec.post.score_fraction)
        return self._wrap(scores, maps, time.perf_counter() - t0)

    @staticmethod
    def validate_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Frames as one C-contiguous uint8 ``(N, H, W, 3)`` array; a list must hold frames of one size."""
        if not isinstance(frames, np.ndarray):
            frames = list(frames)
            if not frames or any(not isinstance(f, np.ndarray) for f in frames):
                raise InputError("expected a non-empty list of uint8 (H, W, 3) frames")
            shapes = {f.shape for f in frames}
            if len(shapes) > 1:
                raise InputError(f"expected frames of one size per call, found {sorted(shapes)}; call once per size")
            frames = np.stack(frames)
        if frames.dtype != np.uint8:
            raise InputError(f"expected uint8 frames, found dtype {frames.dtype}")
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise InputError(f"expected frames (N, H, W, 3) with N >= 1, found {frames.shape}")
        return np.ascontiguousarray(frames)

    def predict_stream(self, batches: Iterable[np.ndarray], workers: int = 2) -> Iterator[Predictions]:
        """Throughput mode: run a stream of batches, overlapping work where the engine allows; keeps order."""
        if not self.thread_safe or workers <= 1:
            for b in batches:
                yield self.predict(b)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = []
            for b in batches:
                pending.append(pool.submit(self.predict, b))
                if len(pending) >= 2 * workers:
                    yield pending.pop(0).result()
            for f in pending:
                yield f.result()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------------------
    def _tiles_per_call(self) -> int:
        """Tiles per ``_run_chunks`` call in ``predict_frames``: the engine's max batch, or ``TILE_BATCH`` when it
        takes any (an engine without a batch limit still gets bounded calls). An engine that runs one call's chunks
        concurrently (OpenVINO's throughput mode) hands it several chunks at once."""
        return self.max_batch or TILE_BATCH

    def _run_chunks(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        step = self.max_batch or n
        scores, maps = [], []
        for i in range(0, n, step):
            chunk = images[i : i + step]
            pad = self.min_batch - chunk.shape[0]
            if pad > 0:  # an engine profile with a minimum batch: pad by repeating the last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            s, m = self._infer(chunk)
            keep = chunk.shape[0] - max(pad, 0)
            scores.append(np.asarray(s, dtype=np.float32).reshape(-1)[:keep])
            maps.append(np.asarray(m, dtype=np.float32)[:keep])
        return np.concatenate(scores), np.concatenate(maps)

    def _wrap(self, scores: np.ndarray, maps: np.ndarray, seconds: float) -> Predictions:
        thr = self.spec.threshold
        labels = None if thr is None else ~(scores <= thr)  # a NaN score is anomalous, never normal
        return Predictions(scores, maps, labels, seconds)

    def describe(self) -> str:
        return f"{self.engine} {self.manifest.precision} ({self.folder})"
