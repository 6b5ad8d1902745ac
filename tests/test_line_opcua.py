"""The OPC UA sink: an asyncua client reads the last verdict, the counters and health from edgead's server on
loopback; the counters equal the log."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from edgead.line.log import read_log
from edgead.line.metrics import LineMetrics
from edgead.line.run import Line, LineConfig
from edgead.line.sources import Source
from tests.test_line_helpers import FixedRunner, ListSource, free_port, line_artifact, make_image

pytest.importorskip("asyncua", reason="asyncua is not installed (pip install 'edgead[line]')")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import edgead.runtimes as rt

    with rt.load(line_artifact(tmp_path_factory)) as r:
        yield r


def read_nodes(url: str, paths: list[str]) -> dict[str, object]:
    from asyncua import Client

    async def go() -> dict[str, object]:
        async with Client(url, timeout=5) as c:
            idx = await c.get_namespace_index("urn:edgead:line")
            out = {}
            for p in paths:
                out[p] = await c.get_node(f"ns={idx};s=edgead.line.{p}").read_value()
            return out

    return asyncio.run(go())


COUNTERS = ["FramesIn", "VerdictsOut", "Scored", "Anomalous", "Dropped", "Errors", "DeadlineMissed"]
RESULT = ["ResultId", "ResultState", "CreationTime", "PartId", "Outcome", "Score", "Threshold", "DeadlineMissed",
          "InternalRecipeId", "IsPartial", "ProcessingTimes.ProcessingDuration"]


def test_client_reads_last_verdict_counters_equal_log(runner, tmp_path):
    from edgead.line.opcua import OpcUaSink

    url = f"opc.tcp://127.0.0.1:{free_port()}/edgead"
    metrics = LineMetrics()
    metrics.checks.append(lambda: None)
    sink = OpcUaSink(url, metrics, runner.spec.threshold, "ab" * 32)
    images = [make_image(i) for i in range(12)]
    src = ListSource(images, period_s=0.01, hold=True)
    line = Line(runner, src, tmp_path / "out", LineConfig(deadline_ms=60_000), sinks=(sink,),
                metrics=metrics)
    t = threading.Thread(target=line.run, daemon=True)
    t.start()
    try:
        end = time.monotonic() + 15
        while True:
            got = read_nodes(url, [f"Counters.{c}" for c in COUNTERS] + [f"LastResult.{r}" for r in RESULT]
                             + ["Health.State", "Health.Ok"])
            if got["Counters.VerdictsOut"] == 12 or time.monotonic() > end:
                break
            time.sleep(0.05)
        rows = read_log(tmp_path / "out" / "verdicts.csv")
    finally:
        line.stop()
        t.join(15)
    assert len(rows) == 12
    anomalous = sum(r["label"] == "anomalous" for r in rows)
    assert [got[f"Counters.{c}"] for c in COUNTERS] == [12, 12, 12, anomalous, 0, 0, 0]
    last = rows[-1]
    assert got["LastResult.PartId"] == "f11" == last["frame_id"]
    assert got["LastResult.ResultId"] == f"{last['run_id']}/11"
    assert got["LastResult.ResultState"] == 1  # OPC 40100-1: Completed
    assert got["LastResult.Outcome"] == {"normal": "OK", "anomalous": "NOK"}[last["label"]]
    assert got["LastResult.Score"] == pytest.approx(float(last["score"]), rel=1e-6)
    assert got["LastResult.Threshold"] == pytest.approx(runner.spec.threshold)
    assert got["LastResult.InternalRecipeId"] == last["artifact_sha256"]
    assert got["LastResult.IsPartial"] is False and got["LastResult.DeadlineMissed"] is False
    assert got["LastResult.ProcessingTimes.ProcessingDuration"] == pytest.approx(float(last["latency_ms"]), abs=2e-3)
    assert got["Health.State"] == "ok" and got["Health.Ok"] is True
    assert 0 < anomalous < 12


class Failing(Source):
    name = "broken"

    def frames(self, stop):  # noqa: ANN001, ANN201
        from edgead.line.frames import Frame, now_ns

        yield Frame("bad-1", now_ns(), None, self.name, error="camera sent an empty buffer")
        stop.wait()

    def health(self) -> str | None:
        return "camera gone"


def test_error_verdict_and_degraded_health(runner, tmp_path):
    from edgead.line.opcua import OpcUaSink

    url = f"opc.tcp://127.0.0.1:{free_port()}"
    metrics = LineMetrics()
    sink = OpcUaSink(url, metrics, None, "cd" * 32)
    line = Line(FixedRunner(runner), Failing(), tmp_path / "out", LineConfig(), sinks=(sink,), metrics=metrics)
    t = threading.Thread(target=line.run, daemon=True)
    t.start()
    try:
        end = time.monotonic() + 15
        while True:
            got = read_nodes(url, ["Counters.Errors", "LastResult.ResultState", "LastResult.Outcome",
                                   "LastResult.Score", "Health.State", "Health.Ok"])
            if got["Counters.Errors"] == 1 or time.monotonic() > end:
                break
            time.sleep(0.05)
    finally:
        line.stop()
        t.join(15)
    assert got["Counters.Errors"] == 1 and got["LastResult.ResultState"] == 4  # Failed
    assert got["LastResult.Outcome"] == "ERROR" and math.isnan(got["LastResult.Score"])
    assert got["Health.State"] == "degraded: camera gone" and got["Health.Ok"] is False


def test_port_taken_is_one_line(runner):
    import socket

    from edgead.errors import InputError
    from edgead.line.opcua import OpcUaSink

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"expected to serve OPC UA at opc.tcp://127.0.0.1:{port}"):
            OpcUaSink(f"opc.tcp://127.0.0.1:{port}", LineMetrics(), None, "00" * 32)
