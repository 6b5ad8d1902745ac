"""The line's counters and latency histograms: ``/metrics`` in the Prometheus text format and ``/status`` as JSON.

One ``LineMetrics`` object is the only place the line counts: the summary, the OPC UA counters, ``/metrics`` and
``/status`` all read it, so they cannot disagree. ``/status`` (counters, health, the last verdict) is what a page
such as ``edgead serve``'s inspection page can poll to show the line's live state. Written by hand (a few dozen
lines) so a line PC needs no Prometheus client.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgead.errors import InputError
from edgead.line.frames import DROPPED, ERROR, Verdict

#: seconds; trigger-to-verdict on a line runs from about a millisecond to a deadline of some hundred
BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
           2.0, 5.0)
COUNTERS = ("frames_in", "verdicts_out", "scored", "anomalous", "dropped", "errors", "deadline_missed")


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, x)] += 1
        self.sum += x
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{le:g}"}} {acc}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.n}"]
        return out

    def quantile(self, q: float) -> float | None:
        """Prometheus' ``histogram_quantile``: linear within the bucket that holds rank ``q * n`` (the last finite
        bound when that is the ``+Inf`` bucket); None without observations."""
        if self.n == 0:
            return None
        rank, acc = q * self.n, 0
        for i, c in enumerate(self.counts[:-1]):
            if acc + c >= rank and c:
                lo = self.buckets[i - 1] if i else 0.0
                return lo + (self.buckets[i] - lo) * (rank - acc) / c
            acc += c
        return self.buckets[-1]


class LineMetrics:
    """Counts of everything that happened to frames, plus gauges read at render time (queue depth, spool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.latency = Histogram()  # trigger to verdict
        self.overhead = Histogram()  # trigger to verdict minus the engine's own time
        self.gauges: dict[str, Callable[[], float]] = {}
        self.extra: dict[str, Callable[[], int]] = {}  # source and sink counters, read at render time
        self.checks: list[Callable[[], str | None]] = []  # each says what is wrong, or None
        self.last: dict | None = None  # the last verdict, as its JSON dict

    def health(self) -> str:
        """``ok``, or ``degraded: `` and what the checks found wrong (broker away, camera gone)."""
        problems = [p for p in (check() for check in self.checks) if p]
        return "ok" if not problems else "degraded: " + "; ".join(problems)

    def frame_in(self) -> None:
        with self._lock:
            self.counts["frames_in"] += 1

    def verdict(self, v: Verdict) -> None:
        with self._lock:
            c = self.counts
            c["verdicts_out"] += 1
            if v.status == DROPPED:
                c["dropped"] += 1
            elif v.status == ERROR:
                c["errors"] += 1
            else:
                c["scored"] += 1
                c["anomalous"] += v.anomalous
                self.latency.observe(v.latency_ms / 1e3)
                if v.engine_ms is not None:
                    self.overhead.observe(max(v.latency_ms - v.engine_ms, 0.0) / 1e3)
            c["deadline_missed"] += v.deadline_missed
            self.last = v.to_dict()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counts)
        out.update({k: int(f()) for k, f in self.extra.items()})
        return out

    def status(self) -> dict:
        """Counters, gauges, health, trigger-to-verdict p50/p99 (ms, from the histogram) and the last verdict, for
        ``GET /status``."""
        with self._lock:
            last = self.last
            ms = {f"p{round(q * 100)}": None if (x := self.latency.quantile(q)) is None else round(x * 1e3, 3)
                  for q in (0.5, 0.99)}
            latency = {"count": self.latency.n, **ms}
        return {"counters": self.snapshot(), "gauges": {k: f() for k, f in sorted(self.gauges.items())},
                "health": self.health(), "latency_ms": latency, "last_verdict": last}

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        p = "edgead_line"
        with self._lock:
            c = dict(self.counts)
            lines = [f"# TYPE {p}_frames_in_total counter", f"{p}_frames_in_total {c['frames_in']}",
                     f"# TYPE {p}_verdicts_total counter"]
            lines += [f'{p}_verdicts_total{{status="{s}"}} {c[k]}'
                      for s, k in (("scored", "scored"), ("dropped", "dropped"), ("error", "errors"))]
            lines += [f"# TYPE {p}_anomalous_total counter", f"{p}_anomalous_total {c['anomalous']}",
                      f"# TYPE {p}_dropped_total counter", f"{p}_dropped_total {c['dropped']}",
                      f"# TYPE {p}_deadline_misses_total counter", f"{p}_deadline_misses_total {c['deadline_missed']}",
                      f"# TYPE {p}_trigger_to_verdict_seconds histogram",
                      *self.latency.lines(f"{p}_trigger_to_verdict_seconds"),
                      f"# TYPE {p}_overhead_seconds histogram", *self.overhead.lines(f"{p}_overhead_seconds")]
        for name, f in sorted(self.gauges.items()):
            lines += [f"# TYPE {p}_{name} gauge", f"{p}_{name} {f():g}"]
        for name, f in sorted(self.extra.items()):
            lines += [f"# TYPE {p}_{name}_total counter", f"{p}_{name}_total {int(f())}"]
        lines += [f"# TYPE {p}_healthy gauge", f"{p}_healthy {int(self.health() == 'ok')}"]
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: LineMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` and ``GET /status`` on ``host:port`` from a daemon thread; ``shutdown()`` the returned
    server to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            route = self.path.split("?")[0]
            if route == "/metrics":
                body, kind = metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
            elif route == "/status":
                body = json.dumps(metrics.status(), allow_nan=False).encode()
                kind = "application/json"
            else:
                self.send_error(404, "only /metrics and /status are here")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # quiet: a scrape every few seconds is not news
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise InputError(f"expected --metrics-port {port} to be free on {host}, found it taken ({exc.strerror})") \
            from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="edgead-metrics", daemon=True).start()
    return server
