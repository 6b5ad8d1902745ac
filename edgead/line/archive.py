"""The archive of anomalous frames: the frame as the camera gave it and a heat-map panel, under a retention limit.

``OUT/archive/<frame>.png`` (full resolution) and ``<frame>.heatmap.png`` (``edgead.viz`` panel at the model's
input size). After each write the oldest files go until the archive is within ``max_bytes`` and nothing is older
than ``max_age_s``: a disk never fills because a line had a bad day.

PNG encoding a camera frame takes longer than scoring it (about 20 ms for 512x512 on the bench machine against
1 ms for the tiny model), so ``submit`` hands the work to one writer thread through a bounded queue: the line
never waits for the archive; when the writer falls behind, frames are left out of the archive and counted
(``skipped``), their verdicts and log rows are unaffected.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgead.fsutil import atomic_file
from edgead.line.frames import Verdict

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def archive_stem(frame_id: str) -> str:
    """A file name per frame id: readable and unique (a short hash keeps ids that differ only in odd characters)."""
    safe = _UNSAFE.sub("_", frame_id)[-80:].strip("._") or "frame"
    return f"{safe}-{hashlib.sha1(frame_id.encode()).hexdigest()[:8]}"


class Archive:
    def __init__(self, folder: str | Path, max_bytes: int, max_age_s: float | None, backlog: int = 16) -> None:
        self.folder = Path(folder)
        self.skipped = 0
        self._todo: queue.Queue = queue.Queue(maxsize=backlog)
        self._writer: threading.Thread | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.saved = 0
        self.pruned = 0
        files = [(e.stat().st_mtime, e.path, e.stat().st_size) for e in os.scandir(self.folder) if e.is_file()]
        self._files: collections.deque[tuple[float, str, int]] = collections.deque(sorted(files))
        self.bytes = sum(f[2] for f in files)
        self.prune()

    def _write(self, path: Path, rgb: np.ndarray) -> None:
        ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
        if not ok:
            return
        with atomic_file(path) as tmp:
            tmp.write_bytes(enc.tobytes())
        self._files.append((time.time(), str(path), len(enc)))
        self.bytes += len(enc)

    def save(self, v: Verdict, frame: np.ndarray, prepared: np.ndarray, amap: np.ndarray) -> None:
        from edgead.viz import panel_vmax, render_panel

        stem = archive_stem(v.frame_id)
        self._write(self.folder / f"{stem}.png", frame)
        thr = v.threshold
        score = float("nan") if v.score is None else v.score
        self._write(self.folder / f"{stem}.heatmap.png",
                    render_panel(prepared, amap, 0.0, panel_vmax(amap, thr), score, thr))
        self.saved += 1
        self.prune()

    def submit(self, v: Verdict, frame: np.ndarray, prepared: np.ndarray, amap: np.ndarray) -> bool:
        """Archive in the writer thread; False (and counted in ``skipped``) when its backlog is full."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="edgead-archive", daemon=True)
            self._writer.start()
        try:
            self._todo.put_nowait((v, frame, prepared, amap))
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def _write_loop(self) -> None:
        while (job := self._todo.get()) is not None:
            try:
                self.save(*job)
            except Exception:  # a full disk, an encoder error: the verdict is out already; the archive is best
                self.skipped += 1  # effort, and a dead writer would leave close() waiting on a full backlog

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._writer is not None:
            self._todo.put(None)
            self._writer.join()
            self._writer = None

    def prune(self) -> None:
        """Delete the oldest files until within the size and age limits."""
        now = time.time()
        while self._files and (self.bytes > self.max_bytes
                               or (self.max_age_s is not None and now - self._files[0][0] > self.max_age_s)):
            _, path, size = self._files.popleft()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.bytes -= size
            self.pruned += 1
