"""The live state of ``edgead line`` processes, as ``edgead serve`` shows it: fetched from their ``GET /status``.

``edgead serve --line-status URL`` (repeatable) names each line's status address (``edgead line --metrics-port
PORT`` answers ``http://127.0.0.1:PORT/status``). ``LineWatch`` fetches them server-side, so the page never talks
to the line and the line's port need not be reachable from the browser: at most once per ``MAX_AGE_S`` however
many pages poll and scrapers scrape (concurrent callers share one fetch), each fetch bounded by a timeout on the
whole answer and a size cap, redirects never followed and proxies from the environment never used. Whatever goes
wrong (refused, timed out, not JSON, too large, a redirect) is that line's ``up: false`` with a one-line reason,
never an error of the service. The status is passed on as the line wrote it, with NaN and infinities as null.
``/api/line`` returns ``read()``; ``/metrics`` renders the same snapshot as gauges (``collect``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from edgead.errors import InputError

MAX_AGE_S = 0.5  # a snapshot this fresh is served again instead of fetching
MAX_BYTES = 1 << 20  # a /status answer is a few kilobytes
MAX_LINES = 16
#: the line's counters that become ``edgead_line_<name>`` gauges on serve's /metrics
GAUGES = {"frames_in": "Frames that entered the line.", "verdicts_out": "Verdicts the line published.",
          "scored": "Frames the line scored.", "anomalous": "Frames the line labelled anomalous.",
          "dropped": "Frames the line's queue dropped.", "errors": "Frames the line could not score.",
          "deadline_missed": "Verdicts later than the line's deadline."}


def check_urls(urls: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The ``--line-status`` addresses, checked: http or https with a host and no credentials, at most
    ``MAX_LINES``, duplicates dropped."""
    out: list[str] = []
    for url in urls:
        try:
            u = urllib.parse.urlsplit(url)
            u.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            u = None
        if u is None or u.scheme not in ("http", "https") or not u.hostname:
            raise InputError(f"expected --line-status to be an http:// or https:// address such as "
                             f"http://127.0.0.1:9100/status, found {url!r}")
        if u.username is not None or u.password is not None:
            raise InputError("expected --line-status without user:password@ (it is shown on the page and in "
                             "/metrics), found credentials in it")
        if url not in out:
            out.append(url)
    if len(out) > MAX_LINES:
        raise InputError(f"expected at most {MAX_LINES} --line-status addresses, found {len(out)}")
    return tuple(out)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # the 3xx then surfaces as an HTTPError
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _strict(x: Any) -> Any:
    """``x`` with every NaN and infinity replaced by None (strict JSON out)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_strict(v) for v in x]
    return x


def fetch_status(url: str, timeout_s: float, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """One line's status: the JSON object at ``url``, read within ``timeout_s`` in all. Raises ``OSError`` (with a
    one-line reason) or ``ValueError`` (the answer is not a status object)."""
    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "edgead-serve"})
    with _OPENER.open(req, timeout=timeout_s) as r:
        declared = r.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ValueError(f"an answer of {int(declared)} bytes, over the {max_bytes} byte cap")
        body = bytearray()
        while chunk := r.read1(65536):  # one socket read each: a server that drips bytes still meets the deadline
            body += chunk
            if len(body) > max_bytes:
                raise ValueError(f"an answer over the {max_bytes} byte cap")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer within {timeout_s:g} s")
    try:
        status = json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise ValueError("an answer that is not JSON") from None
    if not isinstance(status, dict) or not isinstance(status.get("counters"), dict):
        raise ValueError("JSON without the line's 'counters' object (is this an edgead line /status address?)")
    return _strict(status)


def _reason(exc: BaseException, timeout_s: float) -> str:
    """A one-line reason for a failed fetch, built from the kind of failure (never a traceback)."""
    if isinstance(exc, urllib.error.HTTPError):
        if 300 <= exc.code < 400:
            return f"the line answered HTTP {exc.code}, a redirect (not followed)"
        return f"the line answered HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is edgead line running with --metrics-port?)"
    if isinstance(exc, ValueError):
        return f"the line sent {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class LineWatch:
    """The state of the lines at ``urls``, fetched at most every ``MAX_AGE_S``; ``last`` is the newest snapshot."""

    def __init__(self, urls: tuple[str, ...], timeout_s: float = 1.0) -> None:
        self.urls = check_urls(urls)
        self.timeout_s = timeout_s
        self.last: list[dict[str, Any]] = [self._down(u, "not fetched yet") for u in self.urls]
        self._at = -math.inf
        self._lock: asyncio.Lock | None = None  # made in the event loop that first uses it

    @staticmethod
    def _down(url: str, reason: str) -> dict[str, Any]:
        return {"url": url, "up": False, "error": f"line unreachable: {reason}", "status": None}

    async def _one(self, url: str) -> dict[str, Any]:
        try:  # the deadline again around the thread: a line that drips its headers byte by byte is cut off too
            status = await asyncio.wait_for(run_in_threadpool(fetch_status, url, self.timeout_s),
                                            self.timeout_s + 0.25)
        except Exception as exc:  # noqa: BLE001 - every failure is this line's state, never the service's error
            return self._down(url, _reason(exc, self.timeout_s))
        return {"url": url, "up": True, "error": None, "status": status}

    async def read(self) -> list[dict[str, Any]]:
        """One entry per line, in ``--line-status`` order: ``url``, ``up``, ``error`` and the line's ``status``."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._at >= MAX_AGE_S:
                self.last = list(await asyncio.gather(*(self._one(u) for u in self.urls)))
                self._at = time.monotonic()
            return self.last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """``last`` as Prometheus gauges, one series per line (label ``line``: its status address). A line that is
        down has only ``edgead_line_up 0``: no stale numbers."""
        up = GaugeMetricFamily("edgead_line_up", "1 when the line's /status answered at the last fetch.",
                               labels=["line"])
        healthy = GaugeMetricFamily("edgead_line_healthy", "1 when the line reports health 'ok'.", labels=["line"])
        counts = {k: GaugeMetricFamily(f"edgead_line_{k}", f"{h[:-1]}: the line's counter, from its /status.",
                                       labels=["line"]) for k, h in GAUGES.items()}
        p = {q: GaugeMetricFamily(f"edgead_line_trigger_to_verdict_{q}_seconds",
                                  f"Trigger-to-verdict latency, {q} from the line's histogram.", labels=["line"])
             for q in ("p50", "p99")}
        for entry in self.last:
            url, status = entry["url"], entry["status"]
            up.add_metric([url], 1.0 if entry["up"] else 0.0)
            if status is None:
                continue
            healthy.add_metric([url], 1.0 if status.get("health") == "ok" else 0.0)
            for k, family in counts.items():
                value = status["counters"].get(k)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric([url], float(value))
            latency = status.get("latency_ms")
            for q, family in p.items():
                ms = latency.get(q) if isinstance(latency, dict) else None
                if isinstance(ms, (int, float)) and not isinstance(ms, bool):
                    family.add_metric([url], ms / 1e3)
        yield up
        yield healthy
        yield from counts.values()
        yield from p.values()

    def describe(self) -> list:
        return []  # the registry must not call collect() (and so read a stale snapshot) at registration


__all__ = ["LineWatch", "check_urls", "fetch_status"]
