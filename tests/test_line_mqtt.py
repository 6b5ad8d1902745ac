"""The MQTT sink against Debian's mosquitto on a loopback port: QoS 1 in order, the disk spool, a broker killed and
restarted mid-run. Every broker the tests start is killed by them."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from edgead.line.mqtt import MqttSink, MqttTarget
from edgead.line.run import Line, LineConfig
from edgead.line.spool import Spool
from tests.test_line_helpers import FixedRunner, ListSource, free_port, line_artifact, make_image

pytestmark = pytest.mark.timeout(120)
MOSQUITTO = shutil.which("mosquitto") or (shutil.which("mosquitto", path="/usr/sbin"))


class Broker:
    """Debian's mosquitto on 127.0.0.1:port, persistent (so a subscriber's session outlives a kill -9)."""

    def __init__(self, folder, port: int) -> None:
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        # mosquitto started as root drops to the user 'mosquitto', who may not write into a test's private folder
        user = pwd.getpwuid(os.getuid()).pw_name
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\npersistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\nautosave_on_changes true\n"
                             f"log_dest file {folder}/mosquitto.log\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto): the MQTT tests need a real broker")
    b = Broker(tmp_path / "broker", free_port())
    b.start()
    yield b
    b.kill()


class Subscriber:
    """A QoS 1 subscriber with a persistent session; ``frame_ids`` in arrival order (duplicates kept)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as m

        self.messages: list[dict] = []
        self._lock = threading.Lock()
        c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=f"edgead-test-sub-{port}", clean_session=False)
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_message = self._on_message
        c.reconnect_delay_set(0.05, 0.3)
        self.subscribed = threading.Event()
        c.on_subscribe = lambda *_: self.subscribed.set()
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(5)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        with self._lock:
            self.messages.append(json.loads(msg.payload))

    @property
    def frame_ids(self) -> list[str]:
        with self._lock:
            return [m["frame_id"] for m in self.messages]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def first_seen(ids: list[str]) -> list[str]:
    seen, out = set(), []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def wait_for(cond, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import edgead.runtimes as rt

    with rt.load(line_artifact(tmp_path_factory)) as r:
        yield r


# -- the spool alone ---------------------------------------------------------------------------------------
def test_spool_order_restart_and_bound(tmp_path):
    s = Spool(tmp_path / "sp", max_messages=3)
    assert [s.put(f"m{i}".encode()) for i in range(4)] == [0, 1, 2, None]
    assert s.refused == 1 and len(s) == 3
    s.remove(0)
    (tmp_path / "sp" / "000000000009.tmp").write_bytes(b"torn")  # a write cut short by a crash
    again = Spool(tmp_path / "sp", max_messages=3)
    assert again.head(10) == [(1, b"m1"), (2, b"m2")] and again.head(10, after=1) == [(2, b"m2")]
    assert again.put(b"m3") == 3 and not (tmp_path / "sp" / "000000000009.tmp").exists()
    assert again.bytes == 6


def test_target_parse():
    assert MqttTarget.parse("mqtt://127.0.0.1:1999/plant/line3") == MqttTarget("127.0.0.1", 1999, "plant/line3")
    assert MqttTarget.parse("mqtt://broker") == MqttTarget("broker", 1883, "edgead/line/verdicts")
    from edgead.errors import InputError

    with pytest.raises(InputError, match="without wildcards"):
        MqttTarget.parse("mqtt://h/a/#")


# -- against mosquitto -------------------------------------------------------------------------------------
def test_one_message_per_part_in_order(runner, broker, tmp_path):
    sub = Subscriber(broker.port, "line/v")
    try:
        sink = MqttSink(MqttTarget("127.0.0.1", broker.port, "line/v"), Spool(tmp_path / "spool"))
        s = Line(runner, ListSource([make_image(i) for i in range(20)]), tmp_path / "out", LineConfig(),
                 sinks=(sink,)).run()
        wait_for(lambda: len(sub.frame_ids) >= 20, 10)
        assert sub.frame_ids == [f"f{i}" for i in range(20)]
        m = sub.messages[3]
        assert set(m) >= {"frame_id", "trigger_time", "verdict_time", "score", "label", "threshold",
                          "artifact_sha256", "seq", "run_id", "deadline_missed", "status"}
        assert m["seq"] == 3 and m["threshold"] == pytest.approx(runner.spec.threshold) and m["status"] == "scored"
        assert m["trigger_time"].endswith("Z") and len(m["artifact_sha256"]) == 64
        assert s.anomalous == sum(x["label"] == "anomalous" for x in sub.messages)
        assert sink.delivered == 20 and len(sink.spool) == 0 and not list((tmp_path / "spool").iterdir())
    finally:
        sub.close()


def test_broker_killed_mid_run_nothing_lost_order_kept(runner, broker, tmp_path):
    n = 150
    sub = Subscriber(broker.port, "line/v")
    # the broker has saved the subscriber's session: a kill -9 then loses no subscription (only the broker's own
    # promise is tested there; what the sink must do is get every verdict a PUBACK)
    wait_for(lambda: (broker.folder / "mosquitto.db").is_file(), 5)
    try:
        sink = MqttSink(MqttTarget("127.0.0.1", broker.port, "line/v"), Spool(tmp_path / "spool"))
        line = Line(FixedRunner(runner), ListSource([make_image(i % 4) for i in range(n)], period_s=0.02),
                    tmp_path / "out", LineConfig(drain_s=20), sinks=(sink,))
        peak = []
        t = threading.Thread(target=line.run, daemon=True)
        t.start()
        wait_for(lambda: len(sub.frame_ids) >= 20, 10)
        broker.kill()
        down_at = line.metrics.snapshot()["verdicts_out"]
        time.sleep(3.0)  # the broker is away for 3 s: the verdicts go to the disk spool
        peak.append(len(sink.spool))
        spooled_files = len(list((tmp_path / "spool").glob("*.msg")))
        broker.start()
        t.join(30)
        wait_for(lambda: len(set(sub.frame_ids)) >= n, 20)
        assert first_seen(sub.frame_ids) == [f"f{i}" for i in range(n)]  # none lost, order kept
        assert len(sub.frame_ids) - n == len(sub.frame_ids) - len(set(sub.frame_ids))  # extra ones are duplicates
        assert peak[0] >= 100 and spooled_files == peak[0]  # 3 s at 50 parts/s waited on disk
        assert line.metrics.snapshot()["verdicts_out"] - down_at >= 100
        assert len(sink.spool) == 0 and not list((tmp_path / "spool").glob("*.msg"))  # spool emptied
        assert sink.connects >= 2 and sink.delivered >= n
    finally:
        sub.close()


def test_spool_survives_a_restart_and_is_delivered_first(runner, broker, tmp_path):
    port = broker.port
    broker.kill()
    sink = MqttSink(MqttTarget("127.0.0.1", port, "line/v"), Spool(tmp_path / "spool"))
    Line(runner, ListSource([make_image(i) for i in range(5)]), tmp_path / "out", LineConfig(drain_s=0.3),
         sinks=(sink,)).run()
    assert len(list((tmp_path / "spool").glob("*.msg"))) == 5 and sink.delivered == 0
    broker.start()
    sub = Subscriber(port, "line/v")
    try:
        sink2 = MqttSink(MqttTarget("127.0.0.1", port, "line/v"), Spool(tmp_path / "spool"))
        wait_for(lambda: len(sub.frame_ids) >= 5, 10)
        sink2.close(5)
        assert sub.frame_ids == [f"f{i}" for i in range(5)] and sink2.delivered == 5
        assert not list((tmp_path / "spool").glob("*.msg"))
    finally:
        sub.close()


def test_run_line_wires_folder_mqtt_and_opcua(runner, broker, tmp_path):
    """``run_line`` (what the CLI calls) with a hot folder, an MQTT sink and an OPC UA sink."""
    pytest.importorskip("asyncua")
    from edgead.line.wiring import SourceOptions, run_line
    from tests.test_line_helpers import write_png

    folder = tmp_path / "hot"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"p{i}.png", make_image(i))
    sub = Subscriber(broker.port, "w/v")
    health = []
    try:
        s = run_line(runner.folder, f"folder:{folder}", tmp_path / "out",
                     [f"mqtt://127.0.0.1:{broker.port}/w/v", f"opc.tcp://127.0.0.1:{free_port()}"],
                     config=LineConfig(max_frames=4), opts=SourceOptions(settle_s=0.02),
                     on_start=lambda line: health.append(line.metrics.health()))
        wait_for(lambda: len(sub.frame_ids) >= 4, 10)
    finally:
        sub.close()
    assert (s.frames_in, s.log_rows) == (4, 4) and sub.frame_ids == [f"p{i}.png" for i in range(4)]
    assert health == ["ok"] and s.counters["mqtt_delivered"] == 4 and s.counters["mqtt_redelivered"] == 0
    from edgead.errors import InputError

    with pytest.raises(InputError, match="expected a sink mqtt://HOST"):
        run_line(runner.folder, f"folder:{folder}", tmp_path / "out2", ["http://x"])


def test_spool_refuses_when_the_disk_does(tmp_path, monkeypatch):
    import builtins

    s = Spool(tmp_path / "sp")
    real_open = builtins.open

    def full(path, mode="r", *a, **k):  # noqa: ANN001, ANN202
        if str(path).endswith(".tmp") and "w" in mode:
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full)
    assert s.put(b"x") is None and s.refused == 1 and len(s) == 0
    monkeypatch.setattr(builtins, "open", real_open)
    assert s.put(b"y") == 0 and s.head(5) == [(0, b"y")]


def test_a_second_run_line_on_a_held_out_touches_nothing(runner, tmp_path):
    """The folder lock comes before the source and the spool: a second process on the same --out is refused while
    the first's half-written spool message stays (before, Spool() deleted it, then the lock refused)."""
    from edgead.errors import OutputError
    from edgead.line.log import lock_folder
    from edgead.line.wiring import run_line

    out, folder = tmp_path / "out", tmp_path / "hot"
    folder.mkdir()
    (out / "spool").mkdir(parents=True)
    partial = out / "spool" / "000000000007.tmp"
    partial.write_bytes(b'{"frame_id": "p7"')  # the first process is writing it
    held = lock_folder(out)
    try:
        with pytest.raises(OutputError, match="another 'edgead line' process"):
            run_line(runner.folder, f"folder:{folder}", out, [f"mqtt://127.0.0.1:{free_port()}/w/v"])
        assert partial.read_bytes() == b'{"frame_id": "p7"'
        assert not (out / "processed.txt").exists()
    finally:
        held.close()
