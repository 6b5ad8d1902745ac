"""The bounded queue between a source and the runner, with a stated drop policy.

``drop-oldest`` (live sources: a camera cannot be paused): when the queue is full, the oldest waiting frame loses
its image and is set aside; ``get`` hands it out before any newer frame, flagged ``dropped``, so the line publishes
and logs it as a *dropped* verdict in frame order. The newest frame always gets in, because the oldest one is the
most likely to miss its deadline anyway. ``block`` (sources that keep
their frames, such as a hot folder or a video file): the source waits, nothing is dropped.
"""

from __future__ import annotations

import collections
import threading

from edgead.errors import InputError
from edgead.line.frames import Frame

DROP_OLDEST = "drop-oldest"
BLOCK = "block"
POLICIES = (DROP_OLDEST, BLOCK)


class FrameQueue:
    """A bounded FIFO of frames (at most ``size`` with images; dropped ones keep only their ids and times)."""

    def __init__(self, size: int, policy: str) -> None:
        if size < 1:
            raise InputError(f"expected --queue of at least 1 frame, found {size}")
        if policy not in POLICIES:
            raise InputError(f"expected a drop policy among {', '.join(POLICIES)}, found '{policy}'")
        self.size = size
        self.policy = policy
        self._items: collections.deque[Frame] = collections.deque()
        self._dropped: collections.deque[Frame] = collections.deque()
        self.dropped = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        """Queue ``frame``; True when that pushed the oldest waiting frame out (drop-oldest, queue full)."""
        with self._cond:
            dropped = False
            if self.policy == BLOCK:
                while len(self._items) >= self.size and not (stop is not None and stop.is_set()):
                    self._cond.wait(0.05)
            elif len(self._items) >= self.size:
                old = self._items.popleft()
                old.image = None
                old.meta["dropped"] = True
                self._dropped.append(old)
                self.dropped += 1
                dropped = True
            self._items.append(frame)
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float) -> Frame | None:
        """The oldest frame (a dropped one has ``meta["dropped"]``), or None after ``timeout`` seconds (at once
        when closed and empty)."""
        with self._cond:
            if not self._items and not self._dropped and not self._closed:
                self._cond.wait(timeout)
            if self._dropped:
                return self._dropped.popleft()
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames will come: ``get`` returns what is left, then None without waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._cond:
            return self._closed and not self._items and not self._dropped

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
