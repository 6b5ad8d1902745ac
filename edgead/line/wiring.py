"""From the command line's words to a running line: parse ``--source`` and ``--sink``, build them, run.

Sources: ``folder:PATH`` (or a plain folder path), ``video:PATH`` or ``video:rtsp://...``, ``camera:`` (the first
GigE Vision / USB3 Vision camera Aravis finds), ``camera:ID`` (a device id such as ``Aravis-Fake-GV01`` or an IP
address). Sinks: ``mqtt://HOST[:PORT][/TOPIC]`` and ``opc.tcp://HOST:PORT[/PATH]``; the CSV log and the archive
are always written into ``--out``, beside the hot folder's state and the MQTT spool.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgead.errors import InputError
from edgead.line.log import LOG, lock_folder
from edgead.line.metrics import LineMetrics, serve_metrics
from edgead.line.run import Line, LineConfig, LineSummary, Sink
from edgead.line.sources import HotFolderSource, Source, VideoSource

STATE = "processed.txt"
SPOOL = "spool"


@dataclass(frozen=True)
class SourceOptions:
    settle_s: float = 0.2  # hot folder: how long a file must stay unchanged
    done_dir: Path | None = None  # hot folder: move processed files here
    camera_fps: float | None = None  # camera: free-run frame rate (None: the camera's)
    camera_trigger: str = "free-run"  # camera: free-run | software
    camera_timeout_s: float = 2.0  # camera: no frame for this long means it is gone: reconnect


def make_source(text: str, out: Path, opts: SourceOptions, known: Sequence[str] = ()) -> Source:
    kind, _, rest = text.partition(":")
    if kind == "folder" or (kind not in ("video", "camera") and Path(text).is_dir()):
        return HotFolderSource(rest if kind == "folder" else text, out / STATE, settle_s=opts.settle_s, known=known,
                               done_dir=opts.done_dir)
    if kind == "video":
        if not rest:
            raise InputError("expected video:PATH or video:URL, found an empty video source")
        return VideoSource(rest)
    if kind == "camera":
        from edgead.line.camera import AravisCamera, AravisSource

        return AravisSource(AravisCamera(rest or None), fps=opts.camera_fps, trigger=opts.camera_trigger,
                            timeout_s=opts.camera_timeout_s)
    raise InputError(f"expected --source folder:PATH, video:PATH|URL or camera:[ID], found '{text}'")


def make_sinks(urls: Sequence[str], out: Path, metrics: LineMetrics, threshold: float | None, sha: str,
               spool_max_bytes: int) -> list[Sink]:
    sinks: list[Sink] = []
    for url in urls:
        if url.startswith("mqtt://"):
            from edgead.line.mqtt import MqttSink, MqttTarget
            from edgead.line.spool import Spool

            if any(type(s).__name__ == "MqttSink" for s in sinks):
                raise InputError(f"expected one MQTT sink, found a second: {url}")
            sink = MqttSink(MqttTarget.parse(url), Spool(out / SPOOL, max_bytes=spool_max_bytes))
            metrics.gauges["mqtt_pending"] = lambda s=sink: s.pending
            metrics.gauges["mqtt_connected"] = lambda s=sink: float(s.connected)
            metrics.extra.update({"mqtt_delivered": lambda s=sink: s.delivered,
                                  "mqtt_redelivered": lambda s=sink: s.redelivered,
                                  "mqtt_spool_refused": lambda s=sink: s.spool.refused})
            metrics.checks.append(lambda s=sink: None if s.connected or not s.pending else
                                  f"MQTT broker unreachable, {s.pending} verdicts spooled")
            sinks.append(sink)
        elif url.startswith("opc.tcp://"):
            from edgead.line.opcua import OpcUaSink

            sinks.append(OpcUaSink(url, metrics, threshold, sha))
        else:
            raise InputError(f"expected a sink mqtt://HOST[:PORT][/TOPIC] or opc.tcp://HOST:PORT, found '{url}'")
    return sinks


def known_frames(out: Path) -> list[str]:
    """Frame ids the log in ``out`` already has rows for (a restarted hot folder skips them)."""
    from edgead.line.log import read_log

    return [r["frame_id"] for r in read_log(out / LOG)] if (out / LOG).is_file() else []


def run_line(artifact: str | Path, source: str, out: str | Path, sinks: Sequence[str] = (), *,
             engine: str | None = None, config: LineConfig = LineConfig(), opts: SourceOptions = SourceOptions(),
             spool_max_bytes: int = 256 << 20, metrics_port: int | None = None,
             on_start: Callable[[Line], None] | None = None) -> LineSummary:
    """Run ``edgead line`` until the source ends, ``config.max_frames`` is reached, or SIGTERM/SIGINT."""
    import edgead.runtimes as rt
    from edgead.score import artifact_digest

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"expected --out to name a folder, found a file at {out}")
    out.mkdir(parents=True, exist_ok=True)
    config.check()
    lock = lock_folder(out)  # before the source and the spool touch anything in OUT
    metrics = LineMetrics()
    sha = artifact_digest(artifact)
    http = serve_metrics(metrics, metrics_port) if metrics_port is not None else None
    built: list[Sink] = []
    try:
        with rt.load(artifact, engine) as runner:
            src = make_source(source, out, opts, known_frames(out))
            try:
                built = make_sinks(sinks, out, metrics, runner.spec.threshold, sha, spool_max_bytes)
                line = Line(runner, src, out, config, tuple(built), metrics, lock)
            except BaseException:
                for s in built:
                    s.close(0.0)
                src.close()
                raise
            restore = _on_signals(line.stop)
            try:
                if on_start is not None:
                    on_start(line)
                return line.run()
            finally:
                restore()
    finally:
        if http is not None:
            http.shutdown()
        lock.close()  # released (a no-op when the line closed it already)


def _on_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM and SIGINT end the source; the line drains. Returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, lambda *_: stop())

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
