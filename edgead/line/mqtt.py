"""The MQTT sink: one JSON message per part, QoS 1, through a disk spool, in order, at least once.

Every verdict is first written to the spool (``spool.py``); a sender thread publishes from the spool's head with a
small window of messages in flight and deletes a message only when the broker's PUBACK for it arrives. When the
broker goes away, the thread reconnects with backoff (a fresh client each time, clean session) and publishes again
from the oldest message not acknowledged, so nothing is lost and the order is kept; a message whose PUBACK was lost
with the connection is sent twice (counted in ``redelivered``): subscribers de-duplicate on ``frame_id``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgead.errors import InputError, require
from edgead.line.frames import Verdict
from edgead.line.spool import Spool

DEFAULT_TOPIC = "edgead/line/verdicts"


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    topic: str

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        """``mqtt://HOST[:PORT][/TOPIC]`` (port 1883, topic ``edgead/line/verdicts`` by default)."""
        u = urlsplit(url)
        if u.scheme != "mqtt" or not u.hostname:
            raise InputError(f"expected an MQTT sink as mqtt://HOST[:PORT][/TOPIC], found '{url}'")
        topic = u.path.lstrip("/") or DEFAULT_TOPIC
        if "#" in url or "+" in topic or u.query:
            topic += "#" if "#" in url else ""
            raise InputError(f"expected an MQTT topic without wildcards (# +) to publish to, found '{topic}'")
        try:
            port = u.port or 1883
        except ValueError:
            raise InputError(f"expected a port number in the MQTT sink '{url}'") from None
        return cls(u.hostname, port, topic)


class MqttSink:
    """Publishes verdicts to ``target`` through ``spool``; ``close(drain_s)`` waits for the spool to empty."""

    def __init__(self, target: MqttTarget, spool: Spool, window: int = 32, keepalive: int = 10,
                 max_backoff_s: float = 2.0, client_id: str = "") -> None:
        self.mqtt = require("paho.mqtt.client", "line", "the MQTT sink")
        self.target = target
        self.spool = spool
        self.window = window
        self.keepalive = keepalive
        self.max_backoff_s = max_backoff_s
        self.client_id = client_id or f"edgead-line-{socket.gethostname()}-{id(self) & 0xFFFF:04x}"
        self.delivered = 0  # PUBACKs received
        self.redelivered = 0  # messages sent again after a reconnect (their PUBACK never came)
        self.connects = 0
        self.connected = False
        self._inflight: dict[int, int] = {}  # mid -> spool key
        self._last_sent = -1
        self._alive = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread = threading.Thread(target=self._run, name="edgead-mqtt", daemon=True)
        self._thread.start()

    # -- the line's side -----------------------------------------------------------------------------------
    def publish(self, v: Verdict) -> None:
        self.spool.put(v.to_json().encode())
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.spool)

    def close(self, drain_s: float = 5.0) -> None:
        """Deliver what the spool holds for up to ``drain_s`` seconds; what is left stays for the next start."""
        self._drain_until = time.monotonic() + drain_s
        self._stop.set()
        self._wake.set()
        self._thread.join(drain_s + 2.0)

    # -- the sender thread ---------------------------------------------------------------------------------
    def _client(self):  # noqa: ANN202 - paho.mqtt.client.Client
        m = self.mqtt
        c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                     protocol=m.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.max_inflight_messages_set(self.window)
        c.connect(self.target.host, self.target.port, keepalive=self.keepalive)
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._alive = not reason_code.is_failure

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._alive = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        key = self._inflight.pop(mid, None)
        if key is not None:
            self.spool.remove(key)
            self.delivered += 1

    def _finished(self) -> bool:
        return self._stop.is_set() and (len(self.spool) == 0 or time.monotonic() > self._drain_until)

    def _run(self) -> None:
        client = None
        backoff = 0.05
        while not self._finished():
            if client is None:
                try:
                    client = self._client()
                except OSError:
                    self.connected = False
                    self._pause(backoff)
                    backoff = min(2 * backoff, self.max_backoff_s)
                    continue
                self._alive = None  # waiting for CONNACK
                waited = time.monotonic()
                while self._alive is None and time.monotonic() - waited < 5.0:
                    client.loop(timeout=0.01)
                if not self._alive:  # no CONNACK, or the broker refused us: back off as for a refused connection
                    client = self._drop(client)
                    self._pause(backoff)
                    backoff = min(2 * backoff, self.max_backoff_s)
                    continue
                self.connects += 1
                self.connected = True
                backoff = 0.05
            room = self.window - len(self._inflight)
            sent = 0
            if room > 0 and self._alive:
                for key, payload in self.spool.head(room, after=self._last_sent):
                    info = client.publish(self.target.topic, payload, qos=1)  # written to the socket at once
                    if info.rc != self.mqtt.MQTT_ERR_SUCCESS:
                        break
                    self._inflight[info.mid] = key
                    self._last_sent = key
                    sent += 1
            # read PUBACKs (and keepalives); waits briefly only while something is in flight
            rc = client.loop(timeout=0.002 if self._inflight else 0.0)
            if rc != self.mqtt.MQTT_ERR_SUCCESS or not self._alive:
                client = self._drop(client)
                continue
            if not sent and not self._inflight:
                self._wake.clear()  # cleared before looking again, so a verdict spooled meanwhile is not missed
                if not self.spool.head(1, after=self._last_sent):
                    self._wake.wait(0.05)
        if client is not None:
            client.disconnect()
            client.loop(timeout=0.05)
        self.connected = False

    def _pause(self, backoff: float) -> None:
        if self._stop.is_set():  # draining: keep trying, in short steps, until the drain deadline
            time.sleep(min(backoff, 0.1))
        else:
            self._stop.wait(backoff)

    def _drop(self, client) -> None:  # noqa: ANN001
        """The connection is gone: forget it and what was in flight; the spool still holds those messages."""
        try:
            client.socket() and client.disconnect()
        except Exception:  # noqa: BLE001 - the connection is already broken; nothing to report
            pass
        self.redelivered += len(self._inflight)
        self._inflight.clear()
        self._last_sent = -1
        self.connected = False
        self._alive = False
        return None
