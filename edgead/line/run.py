"""The line loop: a source thread fills a bounded queue, the runner scores one part at a time, every frame gets
exactly one verdict, and the verdict goes to every sink and to the log.

Order of work for one frame: fit it to the model (``imageio.prepare``) and ``runner.predict`` it, or, for an
artifact with a tiling plan, ``runner.predict_frames`` on the whole frame (tiles, stitched), stamp the verdict
(deadline judged here: a late verdict is published with ``deadline_missed``, never held back), count it, hand it to
the sinks (OPC UA, MQTT's spool), append its log row, tell the source it is done, then queue it for the archive
if anomalous (written by the archive's own thread).
``stop()`` (SIGTERM) ends the source; the frames already queued still get their verdicts, then the sinks drain.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from edgead.errors import InputError, require
from edgead.imageio import prepare
from edgead.line.archive import Archive
from edgead.line.frames import DROPPED, ERROR, SCORED, Frame, Verdict, label_of, now_ns
from edgead.line.log import VerdictLog, lock_folder, write_parquet
from edgead.line.metrics import COUNTERS, LineMetrics
from edgead.line.queue import FrameQueue
from edgead.line.sources import Source
from edgead.score import artifact_digest

ARCHIVE = "archive"


class Sink(Protocol):
    def publish(self, v: Verdict) -> None: ...
    def close(self, drain_s: float) -> None: ...


@dataclass(frozen=True)
class LineConfig:
    """How the line treats parts: the deadline, the queue, the archive's limits, how long to drain at stop."""

    deadline_ms: float | None = None
    queue: int = 8
    policy: str | None = None  # None: the source's own (drop-oldest for live sources, block for files)
    archive_max_bytes: int = 1 << 30
    archive_max_age_s: float | None = 30 * 86400.0
    drain_s: float = 10.0
    max_frames: int | None = None  # stop after this many frames (benches, tests); None: run until stopped
    parquet: bool = False  # at stop, also write verdicts.parquet from the log

    def check(self) -> LineConfig:
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise InputError(f"expected --deadline-ms above 0, found {self.deadline_ms}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"expected --max-frames of at least 1, found {self.max_frames}")
        if self.archive_max_bytes < 0:
            raise InputError(f"expected a non-negative archive size limit, found {self.archive_max_bytes}")
        return self


@dataclass(frozen=True)
class LineSummary:
    frames_in: int
    verdicts_out: int
    scored: int
    anomalous: int
    dropped: int
    errors: int
    deadline_missed: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    overhead_p50_ms: float | None
    engine_p50_ms: float | None
    seconds: float
    frames_per_s: float
    log_rows: int
    counters: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: collections.deque[float], q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, float), q)) if values else None


class Line:
    """One runner, one source, some sinks; ``run()`` until the source ends or ``stop()``."""

    def __init__(self, runner, source: Source, out: str | Path, config: LineConfig = LineConfig(),  # noqa: ANN001
                 sinks: tuple[Sink, ...] = (), metrics: LineMetrics | None = None, lock: IO | None = None) -> None:
        """``lock``: the output folder's lock (``log.lock_folder``) when the caller took it before building the
        source and sinks; taken here otherwise."""
        self.runner = runner
        self.source = source
        self.config = config.check()
        self.sinks = tuple(sinks)
        if config.parquet:  # refuse at start, not after a shift of work
            require("pyarrow.parquet", "ray", "Parquet output")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_fh = lock if lock is not None else lock_folder(self.out)
        self.log = VerdictLog(self.out)
        self.archive = Archive(self.out / ARCHIVE, config.archive_max_bytes, config.archive_max_age_s)
        self.sha = artifact_digest(runner.folder)
        self.threshold = runner.spec.threshold
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.metrics = metrics or LineMetrics()
        self.queue = FrameQueue(config.queue, config.policy or source.policy)
        self.metrics.gauges["queue_depth"] = lambda: len(self.queue)
        self.metrics.extra.update({"archived": lambda: self.archive.saved,
                                   "archive_skipped": lambda: self.archive.skipped})
        self.metrics.extra.update({k: (lambda k=k: source.counters().get(k, 0)) for k in source.counters()})
        self.metrics.checks.append(source.health)
        self._keeps_state = hasattr(source, "processed")
        self._stop = threading.Event()
        self._seq = itertools.count()
        self._lat: collections.deque[float] = collections.deque(maxlen=100_000)
        self._over: collections.deque[float] = collections.deque(maxlen=100_000)
        self._eng: collections.deque[float] = collections.deque(maxlen=100_000)
        self._producer_error: BaseException | None = None

    def stop(self) -> None:
        """End the source; what is queued still gets its verdicts (``run`` returns when they are out)."""
        self._stop.set()

    # -- producer ------------------------------------------------------------------------------------------
    def _produce(self) -> None:
        n = 0
        try:
            for frame in self.source.frames(self._stop):
                frame.seq = next(self._seq)
                self.metrics.frame_in()
                self.queue.put(frame, self._stop)
                n += 1
                if self.config.max_frames is not None and n >= self.config.max_frames:
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it after the drain
            self._producer_error = exc
        finally:
            self.queue.close()

    # -- verdicts ------------------------------------------------------------------------------------------
    def _verdict(self, f: Frame, status: str, score: float | None = None, engine_ms: float | None = None,
                 error: str = "") -> Verdict:
        t = now_ns()
        deadline = self.config.deadline_ms
        label = label_of(score, self.threshold) if score is not None else None
        return Verdict(f.frame_id, f.seq, self.run_id, f.source or self.source.name, status, f.trigger_ns, t,
                       score, label, self.threshold, self.sha, deadline,
                       deadline is not None and (t - f.trigger_ns) / 1e6 > deadline, engine_ms, error)

    def _score(self, f: Frame) -> tuple[Verdict, np.ndarray | None, np.ndarray | None]:
        if f.meta.get("dropped"):
            return self._verdict(f, DROPPED, error="dropped: the queue was full (drop-oldest)"), None, None
        if f.image is None:
            return self._verdict(f, ERROR, error=f.error or "no image"), None, None
        try:
            if getattr(self.runner, "tiling", None) is not None:  # the artifact's plan: tiles of the whole frame
                x = f.image
                p = self.runner.predict_frames(x[None])
            else:
                x = prepare(f.image, self.runner.spec)
                p = self.runner.predict(x[None])
        except Exception as exc:  # noqa: BLE001 - one bad part must not stop the line; its verdict says why
            return self._verdict(f, ERROR, error=" ".join(f"{type(exc).__name__}: {exc}".split())), None, None
        return self._verdict(f, SCORED, float(p.scores[0]), p.seconds * 1e3), x, p.maps[0]

    def _finish(self, f: Frame, v: Verdict, prepared: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.metrics.verdict(v)
        if v.status == SCORED:
            self._lat.append(v.latency_ms)
            if v.engine_ms is not None:
                self._eng.append(v.engine_ms)
                self._over.append(v.latency_ms - v.engine_ms)
        for sink in self.sinks:
            sink.publish(v)
        self.log.add(v, f.meta.get("path", ""), sync=self._keeps_state)
        self.source.done(f)
        if v.anomalous and prepared is not None and f.image is not None and amap is not None:
            self.archive.submit(v, f.image, prepared, amap)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> LineSummary:
        t0 = time.perf_counter()
        producer = threading.Thread(target=self._produce, name="edgead-line-source", daemon=True)
        producer.start()
        try:
            while True:
                f = self.queue.get(0.05)
                if f is None:
                    if self.queue.closed_and_empty:
                        break
                    continue
                self._finish(f, *self._score(f))
            producer.join()
        finally:
            self._close()
        if self._producer_error is not None:
            raise self._producer_error
        return self.summary(time.perf_counter() - t0)

    def _close(self) -> None:
        self._stop.set()
        for sink in self.sinks:
            sink.close(self.config.drain_s)
        self.source.close()
        self.archive.close()
        self.log.close()
        if self.config.parquet:
            write_parquet(self.log.path)
        self._lock_fh.close()

    def summary(self, seconds: float) -> LineSummary:
        c = self.metrics.snapshot()
        scored = c["scored"]
        return LineSummary(
            frames_in=c["frames_in"], verdicts_out=c["verdicts_out"], scored=scored, anomalous=c["anomalous"],
            dropped=c["dropped"], errors=c["errors"], deadline_missed=c["deadline_missed"],
            latency_p50_ms=_percentile(self._lat, 50), latency_p99_ms=_percentile(self._lat, 99),
            overhead_p50_ms=_percentile(self._over, 50), engine_p50_ms=_percentile(self._eng, 50),
            seconds=seconds, frames_per_s=(c["verdicts_out"] / seconds) if seconds > 0 else 0.0,
            log_rows=self.log.rows, counters={k: v for k, v in c.items() if k not in COUNTERS},
        )

