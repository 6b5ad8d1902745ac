"""What travels down the line: a ``Frame`` from a source, and the ``Verdict`` every sink receives for it.

A verdict is made for every frame that entered the line, whatever happened to it: ``status`` says whether it was
scored, dropped by the queue, or could not be scored (``error``). Its JSON form is strict (a NaN score is ``null``,
and such a verdict is labelled anomalous), so every MQTT client and PLC gateway can parse it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

SCORED = "scored"
DROPPED = "dropped"
ERROR = "error"


@dataclass
class Frame:
    """One part's image as a source delivered it.

    ``frame_id`` is unique within the source and stable (the hot folder's file name, the camera's serial, session
    and block id); ``trigger_ns`` is when the part was seen (camera: the buffer's host timestamp; hot folder: when
    the file was found complete), on the wall clock, in nanoseconds. ``image`` is RGB uint8 (H, W, 3) at the
    camera's resolution, or None with ``error`` set when it could not be read.
    """

    frame_id: str
    trigger_ns: int
    image: np.ndarray | None
    source: str = ""
    error: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = -1  # set by the line: the frame's place in this run


@dataclass(frozen=True)
class Verdict:
    """The line's answer for one frame; ``label`` is None when the artifact has no threshold or no score exists."""

    frame_id: str
    seq: int
    run_id: str
    source: str
    status: str  # scored | dropped | error
    trigger_ns: int
    verdict_ns: int
    score: float | None
    label: str | None  # "normal" | "anomalous" | None
    threshold: float | None
    artifact_sha256: str
    deadline_ms: float | None
    deadline_missed: bool
    engine_ms: float | None = None  # the runner's own time for this frame
    error: str = ""

    @property
    def latency_ms(self) -> float:
        """Trigger to verdict, milliseconds."""
        return (self.verdict_ns - self.trigger_ns) / 1e6

    @property
    def anomalous(self) -> bool:
        return self.label == "anomalous"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as strict-JSON-ready values (no NaN, times as ISO 8601 UTC)."""
        return {
            "frame_id": self.frame_id, "seq": self.seq, "run_id": self.run_id, "source": self.source,
            "status": self.status, "trigger_time": iso_utc(self.trigger_ns), "verdict_time": iso_utc(self.verdict_ns),
            "latency_ms": round(self.latency_ms, 3), "score": finite_or_none(self.score), "label": self.label,
            "threshold": finite_or_none(self.threshold), "artifact_sha256": self.artifact_sha256,
            "deadline_ms": self.deadline_ms, "deadline_missed": self.deadline_missed,
            "engine_ms": None if self.engine_ms is None else round(self.engine_ms, 3), "error": self.error or None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def label_of(score: float, threshold: float | None) -> str | None:
    """The runners' rule: anomalous strictly above the threshold, or when the score is not a number."""
    if threshold is None:
        return None
    return "normal" if score <= threshold else "anomalous"


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_ns() -> int:
    return time.time_ns()
