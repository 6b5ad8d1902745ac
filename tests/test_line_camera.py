"""The camera source: reconnect and gap counting against a named fake harness (``ScriptedCamera``), then the real
GigE Vision path: Aravis's ``arv-fake-gv-camera-0.8`` streaming to edgead over loopback, stopped and restarted."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from edgead.line.camera import CameraError, RawFrame, skipped, to_rgb
from edgead.line.log import read_log
from edgead.line.run import Line, LineConfig
from tests.test_line_helpers import FixedRunner, line_artifact

pytestmark = pytest.mark.timeout(120)
MONO8 = 0x01080001


class ScriptedSession:
    """A fake camera connection: pops the scripted frames (None: nothing this time), then nothing at all."""

    frame_rate = 10.0

    def __init__(self, serial: str, frames: list[RawFrame | None]) -> None:
        self.serial, self.frames, self.closed, self.triggers = serial, list(frames), False, 0

    def pop(self, timeout_s: float) -> RawFrame | None:
        if self.frames:
            return self.frames.pop(0)
        time.sleep(timeout_s)
        return None

    def trigger(self) -> None:
        self.triggers += 1

    def close(self) -> None:
        self.closed = True


class ScriptedCamera:
    """The named fake harness: ``open`` plays the scripted outcomes in turn (a session, or a CameraError)."""

    device_id = "scripted"

    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.opens = 0

    def open(self, fps, trigger):  # noqa: ANN001, ANN201
        self.opens += 1
        o = self.outcomes.pop(0) if self.outcomes else CameraError("gone for good")
        if isinstance(o, Exception):
            raise o
        return o


def raw(block: int, t_s: float, complete: bool = True) -> RawFrame:
    img = np.full((8, 8), block % 256, np.uint8)
    return RawFrame(block, int(t_s * 1e9), 8, 8, MONO8, img.tobytes(), complete)


def test_block_id_gaps_and_wrap():
    assert skipped(5, 6) == 0 and skipped(5, 9) == 3
    assert skipped(65535, 1) == 0 and skipped(65534, 2) == 2


def test_pixel_formats():
    r = raw(7, 0.0)
    assert to_rgb(r).shape == (8, 8, 3) and int(to_rgb(r)[0, 0, 2]) == 7
    bayer = RawFrame(1, 0, 4, 4, 0x0108000B, bytes(range(16)))
    assert to_rgb(bayer).shape == (4, 4, 3)
    from edgead.errors import InputError

    with pytest.raises(InputError, match="found pixel format 0x01100007"):
        to_rgb(RawFrame(1, 0, 4, 4, 0x01100007, bytes(32)))


def test_reconnect_counts_the_gap(tmp_path):
    from edgead.line.camera import AravisSource

    t0 = 1_700_000_000.0
    first = ScriptedSession("CAM1", [raw(1, t0), raw(2, t0 + 0.1), raw(4, t0 + 0.3), raw(5, t0 + 0.4, False),
                                     raw(6, t0 + 0.5)])
    # the camera is away: two failed opens, then it is back 1.5 s after its last frame, its block ids restarted
    second = ScriptedSession("CAM1", [raw(1, t0 + 2.0), raw(2, t0 + 2.1)])
    cam = ScriptedCamera([first, CameraError("no answer"), CameraError("no answer"), second])
    src = AravisSource(cam, timeout_s=0.2, max_backoff_s=0.05)
    stop = threading.Event()
    got = []
    for f in src.frames(stop):
        got.append(f)
        if len(got) == 6:
            stop.set()
    c = src.counters()
    assert [f.frame_id for f in got] == ["CAM1:0:1", "CAM1:0:2", "CAM1:0:4", "CAM1:0:6", "CAM1:1:1", "CAM1:1:2"]
    assert c["camera_incomplete"] == 1  # block 5 came torn: not scored, counted
    assert c["camera_frames_missed"] == 1 + 1 + 14  # block 3; block 5's id skipped; 1.5 s at 10 fps less one
    assert c["camera_gap_frames"] == 14 and c["camera_gap_ms"] == 1500
    assert c["camera_reconnects"] == 1 and c["camera_open_failures"] == 2 and first.closed
    assert got[0].trigger_ns == int(t0 * 1e9) and got[0].image.shape == (8, 8, 3)


def test_software_trigger_fires_at_the_rate():
    from edgead.line.camera import SOFTWARE, AravisSource

    s = ScriptedSession("CAM2", [raw(i, 0.0) for i in range(1, 6)])
    src = AravisSource(ScriptedCamera([s]), fps=50, trigger=SOFTWARE, timeout_s=0.5)
    stop = threading.Event()
    t = time.monotonic()
    got = []
    for f in src.frames(stop):
        got.append(f)
        if len(got) == 5:
            stop.set()
    assert s.triggers == 5 and time.monotonic() - t >= 4 / 50 * 0.9
    assert all(f.trigger_ns > 0 and f.trigger_ns != 0 for f in got)  # the trigger time, not the camera's stamp


def test_camera_health_while_disconnected():
    from edgead.line.camera import AravisSource

    src = AravisSource(ScriptedCamera([]), timeout_s=0.1, max_backoff_s=0.02)
    assert src.health() == "camera not connected (connecting)"
    stop = threading.Event()
    t = threading.Thread(target=lambda: list(src.frames(stop)))
    t.start()
    time.sleep(0.15)
    stop.set()
    t.join(2)
    assert src.health() == "camera not connected (gone for good)" and src.counters()["camera_open_failures"] >= 2


# -- the real thing: Aravis's fake GigE Vision camera on loopback ----------------------------------------------
FAKE = shutil.which("arv-fake-gv-camera-0.8")


def _aravis_ready() -> str | None:
    if FAKE is None:
        return "arv-fake-gv-camera-0.8 is not installed (apt-get install aravis-tools)"
    try:
        from edgead.line.camera import aravis

        aravis()
    except Exception as exc:  # noqa: BLE001 - the reason is the skip line
        return f"Aravis through PyGObject is not usable here: {exc}"
    return None


class FakeGvCamera:
    def __init__(self, serial: str) -> None:
        self.serial = serial
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([FAKE, "-i", "127.0.0.1", "-s", self.serial], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def fake_camera():
    why = _aravis_ready()
    if why:
        pytest.skip(why)
    cam = FakeGvCamera("EDGEADTEST")
    cam.start()
    yield cam
    cam.kill()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import edgead.runtimes as rt

    with rt.load(line_artifact(tmp_path_factory)) as r:
        yield r


def test_fake_gige_camera_frames_scored_one_row_each(runner, fake_camera, tmp_path):
    from edgead.line.camera import AravisCamera, AravisSource

    src = AravisSource(AravisCamera("127.0.0.1"), fps=20, timeout_s=1.0)
    s = Line(runner, src, tmp_path / "out", LineConfig(max_frames=20, queue=4)).run()
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    assert s.frames_in == 20 == len(rows) == s.scored + s.dropped
    blocks = [int(r["frame_id"].rsplit(":", 1)[1]) for r in rows]
    assert all(r["frame_id"].startswith("EDGEADTEST:0:") for r in rows)
    assert sum(skipped(a, b) for a, b in zip(blocks, blocks[1:], strict=False)) == src.counts["camera_frames_missed"]
    assert all(r["status"] in ("scored", "dropped") and r["score"] != "" for r in rows if r["status"] == "scored")


def test_fake_gige_camera_stopped_and_restarted(runner, fake_camera, tmp_path):
    from edgead.line.camera import AravisCamera, AravisSource

    src = AravisSource(AravisCamera("127.0.0.1"), fps=20, timeout_s=0.5, max_backoff_s=0.2)
    line = Line(FixedRunner(runner), src, tmp_path / "out", LineConfig(queue=8))
    t = threading.Thread(target=line.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while src.counts["camera_frames"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        fake_camera.kill()
        time.sleep(1.5)
        assert src.health().startswith("camera not connected (")  # the OPC UA health node says so meanwhile
        fake_camera.start()
        while src.counts["camera_reconnects"] < 1 or src.counts["camera_frames"] < 20:
            assert time.monotonic() < deadline, src.counters()
            time.sleep(0.05)
    finally:
        line.stop()
        t.join(15)
    c = src.counters()
    print("camera counters after a 1.5 s outage:", c)
    rows = read_log(tmp_path / "out" / "verdicts.csv")
    sessions = sorted({r["frame_id"].split(":")[1] for r in rows})
    assert sessions[:2] == ["0", "1"] and c["camera_reconnects"] >= 1
    # at least 1.5 s without frames at the camera's rate: the gap is counted in frames and milliseconds
    assert c["camera_gap_ms"] >= 1500 and c["camera_gap_frames"] >= int(1.5 * 20) - 2
    assert len(rows) == line.metrics.snapshot()["frames_in"] == c["camera_frames"]


def test_cli_camera_source(runner, fake_camera, tmp_path):
    import json
    import sys

    r = subprocess.run([sys.executable, "-m", "edgead.cli.app", "line", str(runner.folder), "--source",
                        "camera:127.0.0.1", "--camera-fps", "20", "--max-frames", "15", "-o", str(tmp_path / "o"),
                        "--json"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    rows = read_log(tmp_path / "o" / "verdicts.csv")
    assert s["frames_in"] == 15 == len(rows) and s["counters"]["camera_frames"] >= 15
    assert all(row["frame_id"].startswith("EDGEADTEST:0:") and row["source"] == "camera:127.0.0.1" for row in rows)
