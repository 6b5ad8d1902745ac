"""The verdict log: ``OUT/verdicts.csv``, exactly one row per frame that entered the line.

Its first columns are those ``edgead score`` writes (path, score, label, threshold, artifact_sha256, error), so the
same readers work on both; the line's own columns follow. Rows are appended and flushed one by one; a restart keeps
the rows, drops a torn last line, and hands back the frame ids already logged (a hot folder never scores them
again). One line process at a time writes into ``OUT`` (an ``flock``, as ``score`` takes).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter
from pathlib import Path
from typing import IO

from edgead.errors import InputError, OutputError
from edgead.fsutil import write_text_atomic
from edgead.line.frames import Verdict, iso_utc
from edgead.score import COLUMNS as SCORE_COLUMNS
from edgead.score import try_flock

LOG = "verdicts.csv"
LOCK = ".edgead-line.lock"
LINE_COLUMNS = ("frame_id", "seq", "run_id", "source", "status", "trigger_time", "verdict_time", "latency_ms",
                "engine_ms", "deadline_ms", "deadline_missed")
COLUMNS = SCORE_COLUMNS + LINE_COLUMNS


def lock_folder(out: Path) -> IO:
    fh = open(out / LOCK, "a+")  # noqa: SIM115 - held for the run
    if not try_flock(fh):
        fh.close()
        raise OutputError(f"expected {out} to be free, found another 'edgead line' process writing into it "
                          f"(lock {out / LOCK}); stop it or choose another --out")
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    fh.flush()
    return fh


def read_log(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of a verdict log (a torn last line is left out)."""
    raw = Path(path).read_bytes()
    text = raw[: raw.rfind(b"\n") + 1].decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


_FLOATS = ("score", "threshold", "latency_ms", "engine_ms", "deadline_ms")


def write_parquet(log: str | Path) -> Path:
    """``verdicts.parquet`` beside the log, the same rows typed (numbers as numbers, empty as null); needs pyarrow,
    which the ``ray`` extra brings. Written atomically from the CSV, which stays the log of record."""
    from edgead.errors import require
    from edgead.fsutil import atomic_file

    pa = require("pyarrow", "ray", "Parquet output")
    pq = require("pyarrow.parquet", "ray", "Parquet output")
    rows = read_log(log)
    cols: dict[str, object] = {}
    for c in COLUMNS:
        vals = [r[c] for r in rows]
        if c in _FLOATS:
            cols[c] = pa.array([float(v) if v else None for v in vals], pa.float64())
        elif c == "seq":
            cols[c] = pa.array([int(v) for v in vals], pa.int64())
        elif c == "deadline_missed":
            cols[c] = pa.array([v == "1" for v in vals], pa.bool_())
        else:
            cols[c] = pa.array([v or None for v in vals], pa.string())
    target = Path(log).with_suffix(".parquet")
    with atomic_file(target) as tmp:
        pq.write_table(pa.table(cols), str(tmp))
    return target


class VerdictLog:
    """Appends one row per verdict to ``OUT/verdicts.csv``; ``known`` holds the frame ids logged so far."""

    def __init__(self, out: str | Path, sync_every_s: float = 0.5) -> None:
        self.out = Path(out)
        self.path = self.out / LOG
        self.sync_every_s = sync_every_s
        self.known: Counter[str] = Counter()
        self.rows = 0
        self._last_sync = time.monotonic()
        if self.path.exists():
            raw = self.path.read_bytes()
            complete = raw[: raw.rfind(b"\n") + 1]
            reader = csv.DictReader(io.StringIO(complete.decode("utf-8")))
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise InputError(f"expected {self.path} to have the columns {','.join(COLUMNS)}, found "
                                 f"{','.join(reader.fieldnames or ())}; choose another --out")
            for row in reader:
                self.known[row["frame_id"]] += 1
            self.rows = sum(self.known.values())
            if len(complete) != len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(len(complete))
        else:
            write_text_atomic(self.path, ",".join(COLUMNS) + "\n")
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._fh)

    def add(self, v: Verdict, path: str = "", sync: bool = False) -> None:
        """Append ``v``'s row and flush it (fsync when ``sync``, or every ``sync_every_s`` seconds)."""
        self._csv.writerow([
            path, "" if v.score is None else repr(float(v.score)), v.label or "",
            "" if v.threshold is None else repr(float(v.threshold)), v.artifact_sha256, v.error,
            v.frame_id, v.seq, v.run_id, v.source, v.status, iso_utc(v.trigger_ns), iso_utc(v.verdict_ns),
            f"{v.latency_ms:.3f}", "" if v.engine_ms is None else f"{v.engine_ms:.3f}",
            "" if v.deadline_ms is None else f"{v.deadline_ms:g}", "1" if v.deadline_missed else "0",
        ])
        self._fh.flush()
        self.known[v.frame_id] += 1
        self.rows += 1
        if sync or time.monotonic() - self._last_sync > self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
