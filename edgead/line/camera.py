"""A GigE Vision / USB3 Vision camera through Aravis (PyGObject): free-run or software trigger, reconnect with
backoff, every lost frame counted.

Two layers, so the logic is tested without a camera: ``AravisCamera`` only talks to the device (open, configure,
pop a buffer, fire a software trigger) and returns ``RawFrame`` objects; ``AravisSource`` owns what the line needs
from any camera: frame ids (serial, connection session, block id), reconnecting with backoff when frames stop,
and the counts of what was lost: block ids skipped inside a session (the camera or the network dropped them),
incomplete buffers, and across a reconnect the frames the camera would have sent during the gap (its frame rate
times the time without frames): a gap is counted, never hidden.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from edgead.errors import EdgeadError, InputError, require
from edgead.line.frames import Frame, now_ns
from edgead.line.queue import DROP_OLDEST
from edgead.line.sources import Source

FREE_RUN = "free-run"
SOFTWARE = "software"
#: GigE Vision 1.x block ids are 16 bits and skip 0 when they wrap
BLOCK_ID_WRAP = 65535

# PFNC pixel format codes (GenICam) of the formats converted here, and how to make RGB of each
_MONO8, _RGB8, _BGR8 = 0x01080001, 0x02180014, 0x02180015
_BAYER = {0x01080008: cv2.COLOR_BayerGR2RGB, 0x01080009: cv2.COLOR_BayerRG2RGB, 0x0108000A: cv2.COLOR_BayerGB2RGB,
          0x0108000B: cv2.COLOR_BayerBG2RGB}


class CameraError(EdgeadError):
    """The camera could not be opened or stopped answering."""


@dataclass
class RawFrame:
    """One buffer from the camera: its block id, host timestamp (ns, wall clock), pixels, and whether it is whole."""

    block_id: int
    timestamp_ns: int
    width: int
    height: int
    pixel_format: int
    data: bytes
    complete: bool = True


class CameraSession(Protocol):
    """An open, streaming connection to one camera."""

    serial: str
    frame_rate: float

    def pop(self, timeout_s: float) -> RawFrame | None: ...
    def trigger(self) -> None: ...
    def close(self) -> None: ...


class CameraDevice(Protocol):
    def open(self, fps: float | None, trigger: str) -> CameraSession: ...


def to_rgb(raw: RawFrame) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a Mono8, RGB8, BGR8 or Bayer 8-bit buffer."""
    h, w, fmt = raw.height, raw.width, raw.pixel_format
    buf = np.frombuffer(raw.data, np.uint8)
    if fmt == _MONO8 or fmt in _BAYER:
        if buf.size < h * w:
            raise InputError(f"expected {h * w} bytes for a {w}x{h} frame, found {buf.size}")
        img = buf[: h * w].reshape(h, w)
        return cv2.cvtColor(img, _BAYER[fmt]) if fmt in _BAYER else np.repeat(img[:, :, None], 3, axis=2)
    if fmt in (_RGB8, _BGR8):
        if buf.size < h * w * 3:
            raise InputError(f"expected {h * w * 3} bytes for a {w}x{h} RGB frame, found {buf.size}")
        img = buf[: h * w * 3].reshape(h, w, 3)
        return np.ascontiguousarray(img if fmt == _RGB8 else img[:, :, ::-1])
    raise InputError(f"expected a Mono8, RGB8, BGR8 or Bayer 8-bit frame, found pixel format 0x{fmt:08X}; set the "
                     f"camera's PixelFormat to one of them")


def skipped(last: int, block_id: int) -> int:
    """Block ids missing between ``last`` and ``block_id`` (16-bit ids wrap from 65535 to 1)."""
    if block_id > last:
        return block_id - last - 1
    if last <= BLOCK_ID_WRAP and block_id >= 1:  # wrapped
        return (BLOCK_ID_WRAP - last) + (block_id - 1)
    return 0


class AravisSource(Source):
    """Frames from ``device``; on ``timeout_s`` without a frame (or a failed open) it reconnects with backoff."""

    policy = DROP_OLDEST

    def __init__(self, device: CameraDevice, fps: float | None = None, trigger: str = FREE_RUN,
                 timeout_s: float = 2.0, max_backoff_s: float = 2.0) -> None:
        if trigger not in (FREE_RUN, SOFTWARE):
            raise InputError(f"expected --camera-trigger free-run or software, found '{trigger}'")
        if trigger == SOFTWARE and not fps:
            raise InputError("expected --camera-fps with --camera-trigger software: it sets how often edgead "
                             "triggers")
        self.device = device
        self.fps, self.trigger, self.timeout_s, self.max_backoff_s = fps, trigger, timeout_s, max_backoff_s
        self.name = f"camera:{getattr(device, 'device_id', None) or 'first'}"
        self.connected = False
        self.counts = {"camera_frames": 0, "camera_reconnects": 0, "camera_open_failures": 0,
                       "camera_frames_missed": 0, "camera_gap_frames": 0, "camera_incomplete": 0,
                       "camera_gap_ms": 0}
        self._session: CameraSession | None = None
        self._last_error = ""

    def counters(self) -> dict[str, int]:
        return dict(self.counts)

    def health(self) -> str | None:
        if self.connected:
            return None
        return f"camera not connected ({self._last_error or 'connecting'})"

    def _open(self, stop: threading.Event) -> CameraSession | None:
        backoff = 0.1
        while not stop.is_set():
            try:
                return self.device.open(self.fps, self.trigger)
            except CameraError as exc:
                self.counts["camera_open_failures"] += 1
                self._last_error = str(exc)
                stop.wait(backoff)
                backoff = min(2 * backoff, self.max_backoff_s)
        return None

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        session_no = 0
        last_ts: int | None = None  # host time of the newest frame, across sessions
        rate = 0.0
        while not stop.is_set():
            session = self._open(stop)
            if session is None:
                return
            self._session = session
            self.connected = True
            rate = session.frame_rate or self.fps or rate
            if session_no:
                self.counts["camera_reconnects"] += 1
            try:
                yield from self._stream(session, session_no, last_ts, rate, stop)
            except CameraError as exc:
                self._last_error = str(exc)
            finally:
                self.connected = False
                self._session = None
                session.close()
            last_ts = self._newest_ts or last_ts
            session_no += 1

    _newest_ts: int | None = None

    def _stream(self, session: CameraSession, session_no: int, last_ts: int | None, rate: float,
                stop: threading.Event) -> Iterator[Frame]:
        """One connection's frames; raises ``CameraError`` when frames stop for ``timeout_s``."""
        last_block: int | None = None
        last_seen = next_trigger = time.monotonic()
        while not stop.is_set():
            t_trig = 0
            if self.trigger == SOFTWARE:
                stop.wait(max(0.0, next_trigger - time.monotonic()))
                next_trigger = max(next_trigger + 1.0 / self.fps, time.monotonic())
                t_trig = now_ns()
                session.trigger()
            raw = session.pop(min(self.timeout_s, 0.2))
            if raw is None:
                if time.monotonic() - last_seen > self.timeout_s:
                    raise CameraError(f"no frame for {self.timeout_s:g} s")
                continue
            last_seen = time.monotonic()
            if not raw.complete:
                self.counts["camera_incomplete"] += 1
                continue
            if last_block is not None:
                self.counts["camera_frames_missed"] += skipped(last_block, raw.block_id)
            elif last_ts is not None:  # the first frame after a reconnect: the gap is counted
                gap_ns = max(raw.timestamp_ns - last_ts, 0)
                self.counts["camera_gap_ms"] += gap_ns // 1_000_000
                missed = max(round(gap_ns / 1e9 * rate) - 1, 0) if rate else 0
                self.counts["camera_gap_frames"] += missed
                self.counts["camera_frames_missed"] += missed
            last_block = raw.block_id
            self._newest_ts = raw.timestamp_ns
            self.counts["camera_frames"] += 1
            try:
                image, error = to_rgb(raw), ""
            except InputError as exc:
                image, error = None, str(exc)
            yield Frame(f"{session.serial}:{session_no}:{raw.block_id}", t_trig or raw.timestamp_ns, image,
                        self.name, error=error, meta={"block_id": raw.block_id, "session": session_no})

    def close(self) -> None:
        s = self._session
        if s is not None:
            s.close()


# -- the Aravis device ---------------------------------------------------------------------------------------
def aravis():  # noqa: ANN201 - the gi.repository.Aravis module
    gi = require("gi", "camera", "the GigE Vision camera source (PyGObject)")
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError):
        raise InputError("expected Aravis 0.8's introspection data for the camera source, found none; install it "
                         "with: apt-get install gir1.2-aravis-0.8") from None
    return Aravis


class _AravisSession:
    def __init__(self, Aravis, cam, n_buffers: int) -> None:  # noqa: ANN001, N803
        self.Aravis, self.cam = Aravis, cam
        self.serial = cam.get_device_serial_number() or cam.get_device_id()
        self.frame_rate = float(cam.get_frame_rate()) if cam.is_frame_rate_available() else 0.0
        self.stream = cam.create_stream(None, None)
        payload = cam.get_payload()
        for _ in range(n_buffers):
            self.stream.push_buffer(Aravis.Buffer.new_allocate(payload))
        cam.start_acquisition()
        self._closed = False

    def pop(self, timeout_s: float) -> RawFrame | None:
        buf = self.stream.timeout_pop_buffer(int(timeout_s * 1e6))
        if buf is None:
            return None
        try:
            ok = buf.get_status() == self.Aravis.BufferStatus.SUCCESS
            return RawFrame(int(buf.get_frame_id()), int(buf.get_system_timestamp()), buf.get_image_width(),
                            buf.get_image_height(), int(buf.get_image_pixel_format()),
                            bytes(buf.get_image_data()) if ok else b"", ok)
        finally:
            self.stream.push_buffer(buf)

    def trigger(self) -> None:
        self.cam.software_trigger()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.cam.stop_acquisition()
        except Exception:  # noqa: BLE001 - the camera may be gone already; closing must not fail
            pass
        self.stream = None
        self.cam = None


class AravisCamera:
    """Opens ``device_id`` (an Aravis device id, a serial, an IP address; None: the first camera found)."""

    def __init__(self, device_id: str | None = None, n_buffers: int = 8) -> None:
        self.Aravis = aravis()
        self.device_id = device_id
        self.n_buffers = n_buffers

    def open(self, fps: float | None, trigger: str) -> _AravisSession:
        A = self.Aravis
        try:
            A.update_device_list()
            cam = A.Camera.new(self.device_id)
            if trigger == SOFTWARE:
                cam.set_trigger("Software")
            else:
                cam.clear_triggers()
                cam.set_acquisition_mode(A.AcquisitionMode.CONTINUOUS)
                if fps:
                    cam.set_frame_rate(float(fps))
            return _AravisSession(A, cam, self.n_buffers)
        except Exception as exc:  # noqa: BLE001 - GLib.Error and friends: the camera is not there (yet)
            msg = getattr(exc, "message", None) or str(exc)
            raise CameraError(f"could not open camera {self.device_id or '(first found)'}: {msg}") from None
