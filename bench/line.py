"""``edgead line`` on the bench: sustained frames per second at batch 1, the line's overhead beyond the engine, and
the issue-29 soak run (fake GigE Vision camera, mosquitto, OPC UA, a broker killed and a camera stopped mid-run).

    python -m edgead.bench.line throughput [--artifact A] [--frames 1500]
    python -m edgead.bench.line soak [--artifact A] [--seconds 60] [--fps 25]

Without ``--artifact`` the tiny random-init test detector (56 px, ONNX Runtime) is built in a temporary folder
(needs the torch extra). Prints one JSON object with the machine (``machine_info``: CPU model and flags). Not for
pytest: the tests pin a fake CPU, and timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgead.bench.machine import machine_info
from edgead.line.frames import Frame, now_ns
from edgead.line.log import read_log
from edgead.line.metrics import LineMetrics
from edgead.line.queue import BLOCK
from edgead.line.run import Line, LineConfig
from edgead.line.sources import Source


def tiny_artifact(root: Path) -> Path:
    """The tests' tiny FBFT detector (random init, 56 px) exported to ONNX, with a threshold."""
    import torch

    from edgead.export import export_onnx
    from edgead.models import build_detector, detector_spec
    from edgead.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    det = build_detector(detector_spec("fbft", "vit_tiny_test_patch14", "layernorm", input_size=56))
    det.spec = det.spec.with_threshold(1e9)  # every part normal; the throughput run also measures all-anomalous
    save_checkpoint(det, root / "ckpt")
    export_onnx(det, root / "export", source=root / "ckpt")
    return root / "export"


class MemorySource(Source):
    """``n`` camera-sized frames from memory, every ``period_s`` seconds (0: as fast as the queue takes them)."""

    policy = BLOCK

    def __init__(self, n: int, period_s: float = 0.0, size: tuple[int, int] = (512, 512)) -> None:
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(8)]
        self.n, self.period_s, self.name = n, period_s, "memory"

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        t_next = time.perf_counter()
        for i in range(self.n):
            if stop.is_set():
                return
            if self.period_s:
                t_next += self.period_s
                time.sleep(max(0.0, t_next - time.perf_counter()))
            yield Frame(f"m{i}", now_ns(), self.images[i % len(self.images)], self.name)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _latencies(out: Path) -> dict[str, float | None]:
    rows = [r for r in read_log(out / "verdicts.csv") if r["status"] == "scored"]
    lat = [float(r["latency_ms"]) for r in rows]
    eng = [float(r["engine_ms"]) for r in rows]
    over = [a - b for a, b in zip(lat, eng, strict=True)]
    return {"trigger_to_verdict_p50_ms": _pct(lat, 50), "trigger_to_verdict_p99_ms": _pct(lat, 99),
            "engine_p50_ms": _pct(eng, 50), "overhead_p50_ms": _pct(over, 50), "overhead_p99_ms": _pct(over, 99)}


class _Threshold:
    """The runner with another threshold (to make every part anomalous, so each one is archived)."""

    def __init__(self, runner, threshold: float) -> None:  # noqa: ANN001
        self.runner, self.folder, self.manifest = runner, runner.folder, runner.manifest
        self.spec = runner.spec.with_threshold(threshold)

    def predict(self, x):  # noqa: ANN001, ANN201
        return self.runner.predict(x)


def throughput(artifact: Path, frames: int, work: Path, rate: float = 50.0) -> dict:
    """Batch 1: (a) frames per second with the queue always full (latencies then are queueing: not reported);
    (b) the overhead at a line's rate (``rate`` frames/s, the queue mostly empty): trigger-to-verdict minus the
    engine's own time per frame; (c) and (d): (a) and (b) with every part anomalous, so every frame also goes to
    the archive (PNG encoding in the archive's thread)."""
    import edgead.runtimes as rt

    with rt.load(artifact) as runner:
        x = np.zeros((1, *runner.spec.input_size, 3), np.uint8)
        for _ in range(20):
            runner.predict(x)
        t = []
        for _ in range(200):
            t0 = time.perf_counter()
            runner.predict(x)
            t.append((time.perf_counter() - t0) * 1e3)
        full = Line(runner, MemorySource(frames), work / "full", LineConfig(queue=8)).run()
        paced_n = int(rate * 10)
        paced = Line(runner, MemorySource(paced_n, period_s=1.0 / rate), work / "paced", LineConfig(queue=8)).run()
        line = Line(_Threshold(runner, -1e9), MemorySource(frames), work / "anomalous", LineConfig(queue=8))
        bad = line.run()
        line2 = Line(_Threshold(runner, -1e9), MemorySource(paced_n, period_s=1.0 / rate), work / "anomalous-paced",
                     LineConfig(queue=8))
        line2.run()
        return {
            "engine": runner.describe(), "frame": "512x512 RGB from memory, prepared to the 56 px input",
            "predict_alone_p50_ms": _pct(t, 50),
            "sustained": {"frames": full.frames_in, "frames_per_s": round(full.frames_per_s, 1),
                          "rows": full.log_rows, "dropped": full.dropped},
            f"paced_{rate:g}_fps": {"frames": paced.frames_in, **_latencies(work / "paced")},
            "all_anomalous_sustained": {"frames": bad.frames_in, "frames_per_s": round(bad.frames_per_s, 1),
                                        "archived": line.archive.saved, "archive_skipped": line.archive.skipped},
            f"all_anomalous_paced_{rate:g}_fps": {"frames": paced_n, "archived": line2.archive.saved,
                                                  "archive_skipped": line2.archive.skipped,
                                                  **_latencies(work / "anomalous-paced")},
        }


# -- the soak run ----------------------------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Proc:
    def __init__(self, argv: list[str]) -> None:
        self.argv, self.proc = argv, None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


class _KeepOpen:
    """Hands verdicts to an OPC UA sink but keeps its server up after the line ends, so it can be read."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner

    def publish(self, v) -> None:  # noqa: ANN001
        self.inner.publish(v)

    def close(self, drain_s: float) -> None:
        self.inner.refresh()


def soak(artifact: Path, seconds: float, fps: float, work: Path, broker_down: tuple[float, float],
         camera_down: tuple[float, float]) -> dict:
    import asyncio

    import paho.mqtt.client as m
    from asyncua import Client

    import edgead.runtimes as rt
    from edgead.line.camera import AravisCamera, AravisSource
    from edgead.line.mqtt import MqttSink, MqttTarget
    from edgead.line.opcua import COUNTER_NODES, OpcUaSink
    from edgead.line.spool import Spool

    mport, oport = _port(), _port()
    bdir = work / "broker"
    bdir.mkdir()
    import pwd

    (bdir / "m.conf").write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\n"
                                 f"user {pwd.getpwuid(os.getuid()).pw_name}\npersistence true\n"
                                 f"persistence_location {bdir}/\nautosave_interval 1\nautosave_on_changes true\n")
    broker = _Proc([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(bdir / "m.conf")])
    camera = _Proc([shutil.which("arv-fake-gv-camera-0.8") or "arv-fake-gv-camera-0.8", "-i", "127.0.0.1",
                    "-s", "SOAK01"])
    broker.start()
    camera.start()
    received: list[tuple[str, int]] = []
    sub = None
    try:
        time.sleep(0.5)
        sub = m.Client(m.CallbackAPIVersion.VERSION2, client_id="edgead-soak-sub", clean_session=False)
        sub.on_connect = lambda c, *_: c.subscribe("soak/v", qos=1)
        sub.on_message = lambda c, u, msg: received.append((json.loads(msg.payload)["frame_id"], now_ns()))
        sub.reconnect_delay_set(0.05, 0.3)
        sub.connect("127.0.0.1", mport)
        sub.loop_start()
        while not (bdir / "mosquitto.db").is_file():
            time.sleep(0.05)
        metrics = LineMetrics()
        with rt.load(artifact) as runner:
            from edgead.score import artifact_digest

            opc = OpcUaSink(f"opc.tcp://127.0.0.1:{oport}", metrics, runner.spec.threshold, artifact_digest(artifact))
            mqtt = MqttSink(MqttTarget("127.0.0.1", mport, "soak/v"), Spool(work / "out" / "spool"))
            src = AravisSource(AravisCamera("127.0.0.1"), fps=fps, timeout_s=0.5, max_backoff_s=0.2)
            line = Line(runner, src, work / "out", LineConfig(queue=8, deadline_ms=200, drain_s=30),
                        sinks=(_KeepOpen(opc), mqtt), metrics=metrics)
            metrics.checks.append(src.health)
            events: list[str] = []

            def faults() -> None:
                t0 = time.monotonic()
                plan = sorted([(broker_down[0], "broker down", broker.kill),
                               (broker_down[0] + broker_down[1], "broker up", broker.start),
                               (camera_down[0], "camera down", camera.kill),
                               (camera_down[0] + camera_down[1], "camera up", camera.start),
                               (seconds, "stop", line.stop)], key=lambda p: p[0])
                peak = 0
                for at, what, act in plan:
                    while time.monotonic() - t0 < at:
                        peak = max(peak, mqtt.pending)
                        time.sleep(0.05)
                    act()
                    events.append(f"{time.monotonic() - t0:.1f}s {what} (spool peak so far {peak})")

            ft = threading.Thread(target=faults, daemon=True)
            ft.start()
            summary = line.run()
            ft.join()
            end = time.monotonic() + 30
            logged = [r["frame_id"] for r in read_log(work / "out" / "verdicts.csv")]
            while len({f for f, _ in received}) < len(logged) and time.monotonic() < end:
                time.sleep(0.1)

            async def read_counters() -> dict[str, int]:
                async with Client(f"opc.tcp://127.0.0.1:{oport}", timeout=5) as c:
                    idx = await c.get_namespace_index("urn:edgead:line")
                    return {k: await c.get_node(f"ns={idx};s=edgead.line.Counters.{n}").read_value()
                            for n, k in COUNTER_NODES.items()}

            opc_counts = asyncio.run(read_counters())
            opc.close()
        rows = read_log(work / "out" / "verdicts.csv")
        trig = {r["frame_id"]: r["trigger_time"] for r in rows}
        seen, order = set(), []
        for f, _ in received:
            if f not in seen:
                seen.add(f)
                order.append(f)
        from datetime import datetime

        def ns(iso: str) -> int:
            return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)

        first_arrival: dict[str, int] = {}
        for f, t in received:
            first_arrival.setdefault(f, t)
        deliver_ms = [(first_arrival[f] - ns(trig[f])) / 1e6 for f in logged if f in first_arrival]
        log_counts = {"frames_in": len(rows), "verdicts_out": len(rows),
                      "scored": sum(r["status"] == "scored" for r in rows),
                      "anomalous": sum(r["label"] == "anomalous" for r in rows),
                      "dropped": sum(r["status"] == "dropped" for r in rows),
                      "errors": sum(r["status"] == "error" for r in rows),
                      "deadline_missed": sum(r["deadline_missed"] == "1" for r in rows)}
        return {
            "seconds": seconds, "camera_fps": fps, "events": events,
            "frames_in": summary.frames_in, "log_rows": len(rows), "unique_log_frame_ids": len(set(logged)),
            "mqtt_messages": len(received), "mqtt_unique_frame_ids": len(seen),
            "mqtt_equals_log": seen == set(logged), "mqtt_order_kept": order == logged,
            "mqtt_redelivered": mqtt.redelivered, "spool_left": len(mqtt.spool),
            "opcua_counters": opc_counts, "log_counts": log_counts, "opcua_equals_log": opc_counts == log_counts,
            "camera": src.counters(), **_latencies(work / "out"),
            "trigger_to_mqtt_delivery_p50_ms": _pct(deliver_ms, 50),
            "trigger_to_mqtt_delivery_p99_ms": _pct(deliver_ms, 99),
        }
    finally:
        if sub is not None:
            sub.loop_stop()
        broker.kill()
        camera.kill()


def main(argv: list[str] | None = None) -> int:
    if "PYTEST_CURRENT_TEST" in os.environ:
        print("bench/line.py measures this machine; run it outside pytest", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="python -m edgead.bench.line", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("throughput", "soak"))
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=25.0, help="soak: the camera's rate")
    ap.add_argument("--rate", type=float, default=50.0, help="throughput: the paced runs' frames per second")
    ap.add_argument("--broker-down", type=float, nargs=2, default=(20.0, 10.0), metavar=("AT_S", "FOR_S"))
    ap.add_argument("--camera-down", type=float, nargs=2, default=(40.0, 3.0), metavar=("AT_S", "FOR_S"))
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgead-line-bench-") as tmp:
        work = Path(tmp)
        artifact = a.artifact or tiny_artifact(work / "artifact")
        if a.what == "throughput":
            result = throughput(artifact, a.frames, work, a.rate)
        else:
            result = soak(artifact, a.seconds, a.fps, work, tuple(a.broker_down), tuple(a.camera_down))
    info = machine_info()
    result["machine"] = info
    result["loadavg_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
