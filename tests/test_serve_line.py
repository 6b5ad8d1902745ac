"""``edgead serve --line-status``: a line's live state on ``/api/line`` and ``/metrics``, fetched from its ``/status``.

One test runs a real ``edgead line`` process on a hot folder (as tests/test_line.py's command test does). The others
use the line's real metrics server, ``edgead.line.metrics.serve_metrics`` (what ``edgead line --metrics-port``
starts), over a ``LineMetrics`` fed with verdicts of known latency, status and score, so every number below is known
in advance. Failures of the line (refused, silent, a redirect, too large, not a status) come from a small stand-in
HTTP server, a test harness. The page's panel is driven in headless Chromium in test_serve_page.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgead.errors import InputError  # noqa: E402
from edgead.line.frames import DROPPED, ERROR, SCORED, Verdict, label_of  # noqa: E402
from edgead.line.metrics import LineMetrics, serve_metrics  # noqa: E402
from edgead.serve import ServeConfig, create_app  # noqa: E402
from edgead.serve.line import MAX_AGE_S, check_urls  # noqa: E402
from edgead.serve.server import background_server  # noqa: E402
from edgead.spec import DetectorSpec  # noqa: E402
from tests.test_line_helpers import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(120)

THRESHOLD = 0.5
DEADLINE_MS = 30.0
#: what ``feed`` makes the line count; p50/p99 are the histogram's (bucket 3-5 ms holds 8, 30-50 ms holds 8)
EXPECTED = {"frames_in": 20, "verdicts_out": 20, "scored": 16, "anomalous": 8, "dropped": 3, "errors": 1,
            "deadline_missed": 8, "p50_ms": 5.0, "p99_ms": 49.6}


def _verdict(i: int, status: str, latency_ms: float, score: float | None) -> Verdict:
    t0 = 1_800_000_000_000_000_000 + i * 100_000_000
    label = label_of(score, THRESHOLD) if score is not None else None
    return Verdict(f"f{i}", i, "run", "test", status, t0, t0 + int(latency_ms * 1e6), score, label, THRESHOLD,
                   "ab" * 32, DEADLINE_MS, latency_ms > DEADLINE_MS, 1.0 if status == SCORED else None)


def feed(metrics: LineMetrics) -> None:
    """20 frames: 8 normal at 4 ms, 7 anomalous at 40 ms (late), 3 dropped, 1 error, and last a NaN score at 40 ms."""
    plan = ([(SCORED, 4.0, 0.1)] * 8 + [(SCORED, 40.0, 0.9)] * 7 + [(DROPPED, 1.0, None)] * 3
            + [(ERROR, 1.0, None)] + [(SCORED, 40.0, float("nan"))])
    for i, (status, ms, score) in enumerate(plan):
        metrics.frame_in()
        metrics.verdict(_verdict(i, status, ms, score))


@contextlib.contextmanager
def line_status_server(metrics: LineMetrics) -> Iterator[str]:
    """The line's own metrics server (``edgead line --metrics-port``) on loopback; yields its /status address."""
    port = free_port()
    server = serve_metrics(metrics, port)
    try:
        yield f"http://127.0.0.1:{port}/status"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fed_line() -> Iterator[tuple[LineMetrics, str]]:
    metrics = LineMetrics()
    feed(metrics)
    with line_status_server(metrics) as url:
        yield metrics, url


def app_with(**config):
    spec = DetectorSpec("fbft", "vit_tiny_test_patch14", "layernorm", (8,), (56, 56), threshold=THRESHOLD)
    return create_app(lambda x: None, spec, ServeConfig(name="m", max_delay_ms=0.0, **config))


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/status"  # nothing listens there once free_port has closed it


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def strict_json(body: bytes):
    def refuse(constant: str):
        raise AssertionError(f"expected strict JSON, found a bare {constant}")

    return json.loads(body, parse_constant=refuse)


def scrape(url: str) -> dict[str, float]:
    code, body = get(url + "/metrics")
    assert code == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("edgead_line_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# -- /api/line ----------------------------------------------------------------------------------------------
def test_api_line_equals_the_lines_status_and_follows_it(fed_line):
    metrics, line_url = fed_line
    with background_server(app_with(line_status=(line_url,))) as url:
        code, body = get(url + "/api/line")
        direct = json.loads(urllib.request.urlopen(line_url, timeout=5).read())
        assert code == 200
        got = strict_json(body)
        assert got == {"lines": [{"url": line_url, "up": True, "error": None, "status": direct}]}
        status = got["lines"][0]["status"]
        assert {k: status["counters"][k] for k in EXPECTED if k in status["counters"]} == \
            {k: v for k, v in EXPECTED.items() if not k.startswith("p")}
        assert status["latency_ms"] == {"count": 16, "p50": EXPECTED["p50_ms"], "p99": EXPECTED["p99_ms"]}
        assert status["health"] == "ok"
        last = status["last_verdict"]
        assert last["frame_id"] == "f19" and last["score"] is None and last["label"] == "anomalous"  # NaN on the line
        assert strict_json(get(url + "/api/info")[1])["lines"] == 1

        metrics.frame_in()  # the line goes on: the next read (after the snapshot's age) shows it
        time.sleep(MAX_AGE_S + 0.1)
        assert strict_json(get(url + "/api/line")[1])["lines"][0]["status"]["counters"]["frames_in"] == 21


def test_concurrent_readers_share_one_fetch(fed_line):
    """However many pages poll, the line is asked at most once per MAX_AGE_S."""
    _, line_url = fed_line
    hits = []
    seen = urllib.request.urlopen(line_url, timeout=5).read()

    class Counting(BaseHTTPRequestHandler):  # test harness: a line status that counts its callers
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            time.sleep(0.2)  # the fetch is still in flight while the other readers arrive
            self.send_response(200)
            self.send_header("Content-Length", str(len(seen)))
            self.end_headers()
            self.wfile.write(seen)

        def log_message(self, *args) -> None:
            pass

    with stand_in(Counting) as base, background_server(app_with(line_status=(base + "/status",))) as url:
        start = threading.Barrier(12)
        answers: list[int] = []

        def reader() -> None:
            start.wait()
            answers.append(strict_json(get(url + "/api/line")[1])["lines"][0]["status"]["counters"]["frames_in"])

        threads = [threading.Thread(target=reader) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(hits) == 1 and answers == [EXPECTED["frames_in"]] * 12


def test_a_real_line_process_on_the_page_api_and_metrics(tmp_path, tmp_path_factory):
    """``edgead line --metrics-port`` on a hot folder of 3 parts: serve shows what its log holds, then, once the
    line has stopped, that it is unreachable."""
    import os
    import signal

    from edgead.line.log import read_log
    from tests.test_line_helpers import line_artifact, make_image, write_png

    folder, out, port = tmp_path / "hot", tmp_path / "out", free_port()
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"p{i}.png", make_image(i))
    proc = subprocess.Popen([sys.executable, "-m", "edgead.cli.app", "line", str(line_artifact(tmp_path_factory)),
                             "--source", f"folder:{folder}", "-o", str(out), "--settle-ms", "20",
                             "--metrics-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True)
    line_url = f"http://127.0.0.1:{port}/status"
    try:
        with background_server(app_with(line_status=(line_url,))) as url:
            end = time.monotonic() + 60
            state: dict = {}
            while time.monotonic() < end and (state.get("status") or {}).get("counters", {}).get("verdicts_out") != 3:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(MAX_AGE_S)
                state = strict_json(get(url + "/api/line")[1])["lines"][0]
            rows = read_log(out / "verdicts.csv")
            c = state["status"]["counters"]
            assert state["up"] is True and len(rows) == c["frames_in"] == c["verdicts_out"] == c["scored"] == 3
            assert c["anomalous"] == sum(r["label"] == "anomalous" for r in rows)
            assert state["status"]["last_verdict"]["frame_id"] == rows[-1]["frame_id"]
            assert state["status"]["latency_ms"]["count"] == 3 and state["status"]["latency_ms"]["p50"] > 0
            m = scrape(url)
            lab = f'{{line="{line_url}"}}'
            assert (m[f"edgead_line_up{lab}"], m[f"edgead_line_frames_in{lab}"], m[f"edgead_line_dropped{lab}"]) == \
                (1, 3, 0)

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            time.sleep(MAX_AGE_S + 0.1)
            state = strict_json(get(url + "/api/line")[1])["lines"][0]
            assert state["up"] is False and state["error"].startswith("line unreachable: connection refused")
            assert scrape(url) == {f"edgead_line_up{lab}": 0}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- /metrics -----------------------------------------------------------------------------------------------
def test_metrics_carry_the_line_gauges(fed_line):
    _, line_url = fed_line
    down = closed_port_url()
    with background_server(app_with(line_status=(line_url, down))) as url:
        m = scrape(url)
    lab = f'{{line="{line_url}"}}'
    assert m[f"edgead_line_up{lab}"] == 1 and m[f"edgead_line_healthy{lab}"] == 1
    for k in ("frames_in", "verdicts_out", "scored", "anomalous", "dropped", "errors", "deadline_missed"):
        assert m[f"edgead_line_{k}{lab}"] == EXPECTED[k], k
    assert m[f"edgead_line_trigger_to_verdict_p50_seconds{lab}"] == pytest.approx(EXPECTED["p50_ms"] / 1e3)
    assert m[f"edgead_line_trigger_to_verdict_p99_seconds{lab}"] == pytest.approx(EXPECTED["p99_ms"] / 1e3)
    assert m[f'edgead_line_up{{line="{down}"}}'] == 0  # and nothing stale about it
    assert [k for k in m if down in k] == [f'edgead_line_up{{line="{down}"}}']


# -- a line that cannot be read -----------------------------------------------------------------------------
@contextlib.contextmanager
def stand_in(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A test harness: a loopback HTTP server answering as ``handler`` says (what a broken line might do)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


RECORDED = {"counters": {"frames_in": 3, "verdicts_out": 3, "dropped": 0, "deadline_missed": 0}, "gauges": {},
            "health": "ok", "latency_ms": {"count": 3, "p50": 4.0, "p99": 4.98},
            "last_verdict": {"frame_id": "f2", "status": "scored", "score": float("nan"), "label": "anomalous",
                             "threshold": THRESHOLD}}


class Broken(BaseHTTPRequestHandler):  # test harness
    target_hits = 0

    def do_GET(self) -> None:  # noqa: N802
        route = self.path
        if route == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route == "/target":
            Broken.target_hits += 1
        if route == "/silent":
            time.sleep(5)
            return
        body = {"/big": b"[" + b"0," * (1 << 20) + b"0]", "/text": b"<html>not a status</html>",
                "/list": b"[1, 2]", "/nan": json.dumps(RECORDED).encode()}.get(route, b"{}")
        self.send_response(200 if route != "/missing" else 404)
        if route != "/big":  # that one streams until the connection closes: the cap must count as it reads
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_an_unreachable_line_is_a_state_never_an_error():
    with stand_in(Broken) as base:
        urls = {"refused": closed_port_url(), "silent": base + "/silent", "redirect": base + "/redirect",
                "big": base + "/big", "text": base + "/text", "list": base + "/list", "missing": base + "/missing",
                "nan": base + "/nan"}
        with background_server(app_with(line_status=tuple(urls.values()), line_timeout_s=0.5)) as url:
            t0 = time.perf_counter()
            code, body = get(url + "/api/line")
            took = time.perf_counter() - t0
            m = scrape(url)
    assert code == 200 and took < 3.0  # the silent one is cut off at its 0.5 s timeout, not after 5 s
    got = {e["url"]: e for e in strict_json(body)["lines"]}
    errors = {k: got[u]["error"] for k, u in urls.items()}
    assert errors == {
        "refused": "line unreachable: connection refused (is edgead line running with --metrics-port?)",
        "silent": "line unreachable: no answer within 0.5 s",
        "redirect": "line unreachable: the line answered HTTP 302, a redirect (not followed)",
        "big": "line unreachable: the line sent an answer over the 1048576 byte cap",
        "text": "line unreachable: the line sent an answer that is not JSON",
        "list": "line unreachable: the line sent JSON without the line's 'counters' object (is this an edgead "
                "line /status address?)",
        "missing": "line unreachable: the line answered HTTP 404",
        "nan": None}
    assert Broken.target_hits == 0  # the redirect was not followed
    assert all(got[u]["up"] is False and got[u]["status"] is None for k, u in urls.items() if k != "nan")
    nan = got[urls["nan"]]["status"]  # a bare NaN from the line leaves as null (strict_json above refused none)
    assert nan["last_verdict"]["score"] is None and nan["counters"]["frames_in"] == 3
    assert {k: m[f'edgead_line_up{{line="{u}"}}'] for k, u in urls.items()} == {k: float(k == "nan") for k in urls}
    assert m[f'edgead_line_frames_in{{line="{urls["nan"]}"}}'] == 3


# -- without --line-status, and behind the access checks ----------------------------------------------------
def test_without_line_status_there_is_no_line_route_and_no_line_gauges():
    with background_server(app_with()) as url:
        code, body = get(url + "/api/line")
        assert code == 404 and strict_json(body) == {
            "error": "expected the server to be started with --line-status URL (an edgead line /status address), "
                     "found none"}
        assert scrape(url) == {}
        assert strict_json(get(url + "/api/info")[1])["lines"] == 0


def test_api_line_needs_the_token_and_a_known_host(fed_line):
    _, line_url = fed_line
    with background_server(app_with(line_status=(line_url,), token="s3cret")) as url:
        assert get(url + "/api/line")[0] == 401
        assert get(url + "/metrics")[0] == 401
        assert get(url + "/api/line", {"Host": "evil.example", "Authorization": "Bearer s3cret"})[0] == 400
        code, body = get(url + "/api/line", {"Authorization": "Bearer s3cret"})
        assert code == 200 and strict_json(body)["lines"][0]["status"]["counters"]["frames_in"] == 20


# -- the addresses ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["file:///etc/passwd", "ftp://127.0.0.1/status", "http://", "127.0.0.1:9100/status",
                                 "http://127.0.0.1:port/status", "gopher://x"])
def test_only_http_addresses_are_accepted(bad):
    with pytest.raises(InputError, match="expected --line-status to be an http:// or https:// address"):
        check_urls([bad])


def test_addresses_without_credentials_and_deduplicated():
    with pytest.raises(InputError, match="without user:password@"):
        check_urls(["http://u:p@127.0.0.1:9100/status"])
    assert check_urls(["http://a:1/status", "https://b/status", "http://a:1/status"]) == \
        ("http://a:1/status", "https://b/status")
    with pytest.raises(InputError, match="at most 16"):
        check_urls([f"http://a:{p}/status" for p in range(1, 18)])


def test_cli_refuses_a_file_address_in_one_line():
    script = ("import sys\nsys.argv = ['edgead', 'serve', '.', '--line-status', 'file:///etc/passwd']\n"
              "from edgead.cli.app import main\nmain()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0] == "error: expected --line-status to be an http:// or https:// address such as " \
                       "http://127.0.0.1:9100/status, found 'file:///etc/passwd'"

