"""Where frames come from: a hot folder, a video file or stream (OpenCV), a GigE Vision camera (``camera.py``).

A source yields ``Frame`` objects until it is stopped or runs out, and is told with ``done(frame)`` once the frame's
verdict has its row in the log, so a source that keeps state (the hot folder's list of processed files) records a
frame only when nothing about it can be lost any more. Each source names the queue policy that suits it.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from edgead.errors import EdgeadError, InputError
from edgead.imageio import IMAGE_SUFFIXES, decode_image, to_rgb8
from edgead.line.frames import Frame, now_ns
from edgead.line.queue import BLOCK, DROP_OLDEST

#: names a writer uses while a file is still being written (atomic-rename writers use these or a leading dot)
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")


class Source(ABC):
    """A stream of frames. ``policy`` is the queue policy that fits it (a camera cannot wait, a folder can)."""

    policy: ClassVar[str] = DROP_OLDEST
    name: str = ""

    @abstractmethod
    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Yield frames until ``stop`` is set or the source is exhausted."""

    def done(self, frame: Frame) -> None:  # noqa: B027 - optional hook
        """The frame's verdict is in the log."""

    def counters(self) -> dict[str, int]:
        """Source-side counts (reconnects, frames the camera lost), for the metrics and the summary."""
        return {}

    def health(self) -> str | None:
        """What is wrong with the source now (camera gone), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or files."""


class HotFolderSource(Source):
    """New image files in ``folder`` (not its sub-folders), each picked up once and only when completely written.

    Complete means: the name is final (no leading dot, no ``.tmp``/``.part`` suffix: a writer that renames a finished
    file into place is seen at once) and the size and modification time have not changed for ``settle_s`` seconds
    (a writer that writes in place, in chunks). A size-stable file that still does not decode is given
    ``grace_s`` more seconds (a writer that paused longer than ``settle_s``) before it becomes an error frame.
    Processed names are appended to ``state`` (one a line, fsync'ed) after their verdict is logged; a restart skips
    them, and the names in ``known`` (the log's frame ids) too. With ``done_dir`` a processed file is then moved
    there (same file system: a rename), which keeps the watched folder small; without it files stay where they are.
    """

    policy = BLOCK

    def __init__(self, folder: str | Path, state: str | Path, settle_s: float = 0.2, poll_s: float = 0.02,
                 grace_s: float = 2.0, known: Iterable[str] = (), done_dir: str | Path | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"expected a hot folder to watch, found no folder at {self.folder}")
        self.done_dir = None if done_dir is None else Path(done_dir)
        if self.done_dir is not None:
            if self.done_dir.resolve() == self.folder.resolve():
                raise InputError(f"expected --done-dir apart from the hot folder, found the hot folder itself "
                                 f"({self.done_dir})")
            self.done_dir.mkdir(parents=True, exist_ok=True)
        self.name = f"folder:{self.folder}"
        self.settle_s, self.poll_s, self.grace_s = settle_s, poll_s, grace_s
        self.state = Path(state)
        self.processed: set[str] = set(known)
        if self.state.is_file():
            raw = self.state.read_text(encoding="utf-8")
            self.processed.update(line for line in raw[: raw.rfind("\n") + 1].splitlines() if line)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self._state_fh = open(self.state, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, monotonic when first seen so)
        self._taken: set[str] = set()  # yielded, verdict not logged yet
        self._undecodable_since: dict[str, float] = {}

    @staticmethod
    def candidate(name: str) -> bool:
        low = name.lower()
        return (not name.startswith(".") and not low.endswith(PARTIAL_SUFFIXES)
                and os.path.splitext(low)[1] in IMAGE_SUFFIXES)

    def _ready(self) -> list[tuple[int, str]]:
        """Names complete now, with their mtime, oldest first."""
        now = time.monotonic()
        ready = []
        present = set()
        with os.scandir(self.folder) as it:
            for entry in it:
                name = entry.name
                if name in self.processed or name in self._taken or not self.candidate(name):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if not entry.is_file():
                    continue
                present.add(name)
                key = (st.st_size, st.st_mtime_ns)
                old = self._seen.get(name)
                if old is None or old[:2] != key:
                    self._seen[name] = (*key, now)
                    if self.settle_s > 0:
                        continue
                elif now - old[2] < self.settle_s:
                    continue
                if st.st_size > 0:
                    ready.append((st.st_mtime_ns, name))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return sorted(ready)

    def _read(self, name: str) -> Frame | None:
        path = self.folder / name
        t = now_ns()
        try:
            image = decode_image(path.read_bytes(), str(path))
        except FileNotFoundError:
            return None
        except (EdgeadError, OSError) as exc:
            first = self._undecodable_since.setdefault(name, time.monotonic())
            if time.monotonic() - first < self.grace_s:
                self._seen.pop(name, None)  # wait for it to change or settle again
                return None
            return Frame(name, t, None, self.name, error=" ".join(str(exc).split()), meta={"path": str(path)})
        self._undecodable_since.pop(name, None)
        return Frame(name, t, image, self.name, meta={"path": str(path)})

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        while not stop.is_set():
            found = False
            for _, name in self._ready():
                if stop.is_set():
                    return
                frame = self._read(name)
                if frame is None:
                    continue
                found = True
                self._taken.add(name)
                self._seen.pop(name, None)
                yield frame
            if not found:
                stop.wait(self.poll_s)

    def done(self, frame: Frame) -> None:
        self._state_fh.write(frame.frame_id + "\n")
        self._state_fh.flush()
        os.fsync(self._state_fh.fileno())
        self.processed.add(frame.frame_id)
        self._taken.discard(frame.frame_id)
        if self.done_dir is not None:
            try:
                os.replace(self.folder / frame.frame_id, self.done_dir / frame.frame_id)
            except FileNotFoundError:  # the writer took it back: it is listed as processed all the same
                pass

    def close(self) -> None:
        if not self._state_fh.closed:
            self._state_fh.close()


class VideoSource(Source):
    """Frames of a video file (every frame, none dropped: the queue blocks) or a stream URL (live: drop-oldest),
    read with OpenCV. A stream that stops is reopened with backoff; each reopen is counted."""

    def __init__(self, uri: str, max_backoff_s: float = 5.0) -> None:
        self.uri = uri
        self.live = "://" in uri
        self.policy = DROP_OLDEST if self.live else BLOCK  # type: ignore[misc] - per instance
        if not self.live and not Path(uri).is_file():
            raise InputError(f"expected a video file or a stream URL (rtsp://, http://), found nothing at {uri}")
        self.name = f"video:{uri}"
        self.stem = Path(uri).stem if not self.live else "stream"
        self.max_backoff_s = max_backoff_s
        self.reopens = 0
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"expected a video OpenCV can open, found none it can read at {self.uri}")
        return cap

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        backoff = 0.1
        index = 0
        session = 0
        while not stop.is_set():
            try:
                self._cap = self._open()
            except InputError:
                if not self.live or index == 0 and session == 0:
                    raise
                self.reopens += 1
                stop.wait(backoff)
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            backoff = 0.1
            while not stop.is_set():
                ok, bgr = self._cap.read()
                t = now_ns()
                if not ok:
                    break
                fid = f"{self.stem}:{index}" if not self.live else f"{self.stem}:{session}:{index}"
                yield Frame(fid, t, to_rgb8(np.asarray(bgr), self.uri, bgr=True), self.name, meta={"index": index})
                index += 1
            self._cap.release()
            self._cap = None
            if not self.live:
                return
            session += 1
            self.reopens += 1

    def counters(self) -> dict[str, int]:
        return {"source_reopens": self.reopens}

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
