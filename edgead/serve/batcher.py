"""Dynamic batching: gather concurrent requests for a few milliseconds into one engine call.

``DynamicBatcher`` is independent of the web framework: callers ``submit`` a uint8 ``(n, H, W, 3)`` block and get a
``concurrent.futures.Future`` of ``Predictions`` for exactly their images. One worker thread takes the oldest
request, then keeps taking queued requests until the batch holds ``max_batch`` images or ``max_delay_s`` has passed
since that first request, runs ``predict`` once on the concatenation, and splits the result. A request is never
split across batches (a block larger than ``max_batch`` runs alone; the runner chunks it). The queue holds at most
``max_queue`` images; beyond that ``submit`` raises ``QueueFullError`` at once instead of letting latency grow.

The same object serves ``edgead serve`` (awaited with ``asyncio.wrap_future``) and a Ray Serve replica.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from edgead.errors import EdgeadError
from edgead.runtimes.base import Predictions

PredictFn = Callable[[np.ndarray], Predictions]


class QueueFullError(EdgeadError):
    """More images are waiting than the batcher's queue limit allows."""


@dataclass
class _Request:
    images: np.ndarray
    future: Future
    enqueued: float


class DynamicBatcher:
    """Merge concurrent ``submit`` calls into batches of at most ``max_batch`` images for ``predict``.

    ``max_delay_s=0`` or ``max_batch=1`` turns merging off: each request runs on its own, in arrival order.
    ``on_batch(images, seconds)`` is called after each engine call (for metrics).
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch: int = 8,
        max_delay_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise EdgeadError(f"expected a maximum batch of at least 1, found {max_batch}")
        if max_delay_s < 0:
            raise EdgeadError(f"expected a batching delay >= 0, found {max_delay_s}")
        if max_queue < 1:
            raise EdgeadError(f"expected a queue limit of at least 1 image, found {max_queue}")
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_s)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_images = 0
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="edgead-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def submit(self, images: np.ndarray) -> Future:
        """Queue a uint8 ``(n, H, W, 3)`` block; the future resolves to its ``Predictions`` (or the engine's error)."""
        n = int(images.shape[0])
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise EdgeadError("the batcher is closed")
            if self._queued_images + n > self.max_queue:
                raise QueueFullError(
                    f"expected at most {self.max_queue} queued images, found {self._queued_images} waiting and "
                    f"{n} more arriving; retry later"
                )
            self._queue.append(_Request(images, fut, time.perf_counter()))
            self._queued_images += n
            self._cv.notify()
        return fut

    def close(self) -> None:
        """Stop the worker after the queued requests have run."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join(timeout=30)

    # -- worker -------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Request] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            batch = [self._queue.popleft()]
            size = batch[0].images.shape[0]
            deadline = batch[0].enqueued + self.max_delay_s
            while size < self.max_batch and self.max_delay_s > 0:
                if self._queue:
                    if size + self._queue[0].images.shape[0] > self.max_batch:
                        break
                    req = self._queue.popleft()
                    batch.append(req)
                    size += req.images.shape[0]
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self._closed:
                    break
                self._cv.wait(left)
            self._queued_images -= size
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
                t0 = time.perf_counter()
                preds = self.predict(images)
                seconds = time.perf_counter() - t0
            except BaseException as exc:  # noqa: BLE001 - every waiting caller must hear about the failure
                for r in batch:
                    r.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(int(images.shape[0]), seconds)
            start = 0
            for r in batch:
                stop = start + r.images.shape[0]
                labels = None if preds.labels is None else preds.labels[start:stop]
                r.future.set_result(Predictions(preds.scores[start:stop], preds.maps[start:stop], labels, seconds))
                start = stop
