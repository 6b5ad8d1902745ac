"""``/metrics`` of the line process: Prometheus text whose numbers equal the log."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from edgead.line.log import read_log
from edgead.line.metrics import Histogram, LineMetrics, serve_metrics
from edgead.line.queue import DROP_OLDEST
from edgead.line.run import Line, LineConfig
from tests.test_line_helpers import FixedRunner, ListSource, free_port, line_artifact, make_image

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import edgead.runtimes as rt

    with rt.load(line_artifact(tmp_path_factory)) as r:
        yield r


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_histogram_buckets_are_cumulative():
    h = Histogram((0.001, 0.01))
    for x in (0.0005, 0.001, 0.005, 0.5):
        h.observe(x)
    assert h.lines("x") == ['x_bucket{le="0.001"} 2', 'x_bucket{le="0.01"} 3', 'x_bucket{le="+Inf"} 4',
                            "x_sum 0.506500", "x_count 4"]


def test_metrics_equal_the_log(runner, tmp_path):
    metrics = LineMetrics()
    port = free_port()
    server = serve_metrics(metrics, port)
    try:
        slow = FixedRunner(runner, score=1e6, delay_s=0.02)  # every part anomalous; 20 frames at once: drops
        line = Line(slow, ListSource([make_image(i) for i in range(20)], policy=DROP_OLDEST),
                    tmp_path / "out", LineConfig(queue=3, deadline_ms=50), metrics=metrics)
        s = line.run()
        m = scrape(port)
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
    finally:
        server.shutdown()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    scored = sum(r["status"] == "scored" for r in rows)
    dropped = sum(r["status"] == "dropped" for r in rows)
    late = sum(r["deadline_missed"] == "1" for r in rows)
    assert m["edgead_line_frames_in_total"] == len(rows) == 20
    assert m['edgead_line_verdicts_total{status="scored"}'] == scored == s.scored
    assert m['edgead_line_verdicts_total{status="dropped"}'] == m["edgead_line_dropped_total"] == dropped > 0
    assert m["edgead_line_deadline_misses_total"] == late == s.deadline_missed
    assert m["edgead_line_anomalous_total"] == scored
    assert m["edgead_line_trigger_to_verdict_seconds_count"] == scored
    assert m['edgead_line_trigger_to_verdict_seconds_bucket{le="+Inf"}'] == scored
    assert m['edgead_line_trigger_to_verdict_seconds_bucket{le="0.01"}'] == 0  # each prediction alone takes 20 ms
    assert m["edgead_line_overhead_seconds_count"] == scored
    assert m["edgead_line_queue_depth"] == 0 and m["edgead_line_healthy"] == 1
    assert status["counters"]["frames_in"] == 20 and status["counters"]["dropped"] == dropped
    assert status["health"] == "ok" and status["last_verdict"]["frame_id"] == rows[-1]["frame_id"] == "f19"


def test_metrics_port_taken_and_404(tmp_path):
    import socket
    import urllib.error

    from edgead.errors import InputError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=re.escape(f"expected --metrics-port {port} to be free on 127.0.0.1")):
            serve_metrics(LineMetrics(), port)
    port = free_port()
    server = serve_metrics(LineMetrics(), port)
    try:
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        server.shutdown()
