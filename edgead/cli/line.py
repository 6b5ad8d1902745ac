"""``edgead line``: run one artifact on a line: frames from a hot folder, a video or a camera; verdicts to MQTT,
OPC UA, a CSV log and an archive of anomalous frames.

Exit codes: 0 the source ended (or SIGTERM) and every frame has its log row; 1 an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import JsonFlag, OutDir, RunEngine, console, emit_json


def line(
    artifact: Annotated[Path, typer.Argument(help="Compiled artifact folder (with manifest.json).")],
    source: Annotated[str, typer.Option("--source", "-s", help="folder:PATH (hot folder), video:PATH|URL, or "
                                        "camera:ID (GigE Vision through Aravis; ID: device id or IP address).")],
    out: OutDir,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="mqtt://HOST:PORT/TOPIC or "
                                                   "opc.tcp://HOST:PORT; repeat for several.")] = None,
    engine: RunEngine = None,
    deadline_ms: Annotated[float | None, typer.Option(help="Trigger-to-verdict deadline per part; a late verdict "
                                                      "is published flagged deadline_missed.")] = None,
    queue: Annotated[int, typer.Option(help="Frames waiting for the runner at most.")] = 8,
    drop_policy: Annotated[str | None, typer.Option(help="drop-oldest or block (default: drop-oldest for cameras "
                                                    "and streams, block for folders and video files).")] = None,
    settle_ms: Annotated[float, typer.Option(help="Hot folder: a file must stay unchanged this long (0: trust "
                                             "writers that rename finished files into place).")] = 200.0,
    done_dir: Annotated[Path | None, typer.Option(help="Hot folder: move each processed file here (same file "
                                                  "system), so the watched folder stays small.")] = None,
    camera_fps: Annotated[float | None, typer.Option(help="Camera: free-run frame rate.")] = None,
    camera_trigger: Annotated[str, typer.Option(help="Camera: free-run or software.")] = "free-run",
    archive_max_mb: Annotated[float, typer.Option(help="Archive of anomalous frames: size limit.")] = 1024.0,
    archive_max_age_h: Annotated[float, typer.Option(help="Archive: files older than this go.")] = 720.0,
    spool_max_mb: Annotated[float, typer.Option(help="MQTT spool on disk while the broker is away.")] = 256.0,
    drain_s: Annotated[float, typer.Option(help="At stop: how long to wait for the MQTT spool to empty.")] = 10.0,
    parquet: Annotated[bool, typer.Option("--parquet", help="At stop, also write OUT/verdicts.parquet (needs "
                                          "pyarrow).")] = False,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on 127.0.0.1:PORT.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Score parts as they come: one verdict per frame, to every sink and to OUT/verdicts.csv.

    OUT: verdicts.csv (one row per frame), archive/ (anomalous frames and heat maps), processed.txt (hot folder),
    spool/ (MQTT messages not yet acknowledged). SIGTERM stops the source and drains the parts in flight."""
    from edgead.line.run import LineConfig
    from edgead.line.wiring import SourceOptions, run_line

    config = LineConfig(deadline_ms=deadline_ms, queue=queue, policy=drop_policy,
                        archive_max_bytes=int(archive_max_mb * (1 << 20)), archive_max_age_s=archive_max_age_h * 3600,
                        drain_s=drain_s, max_frames=max_frames, parquet=parquet)
    opts = SourceOptions(settle_s=settle_ms / 1e3, done_dir=done_dir, camera_fps=camera_fps,
                         camera_trigger=camera_trigger)
    s = run_line(artifact, source, out, sink or (), engine=engine, config=config, opts=opts,
                 spool_max_bytes=int(spool_max_mb * (1 << 20)), metrics_port=metrics_port)
    if json_out:
        emit_json(s.to_dict())
        return
    p50 = "-" if s.latency_p50_ms is None else f"{s.latency_p50_ms:.1f}"
    p99 = "-" if s.latency_p99_ms is None else f"{s.latency_p99_ms:.1f}"
    console.print(f"{s.frames_in} frames: {s.scored} scored ({s.anomalous} anomalous), {s.dropped} dropped, "
                  f"{s.errors} errors, {s.deadline_missed} past the deadline; trigger-to-verdict p50 {p50} ms, "
                  f"p99 {p99} ms; {s.log_rows} rows in [bold]{Path(out) / 'verdicts.csv'}[/]", soft_wrap=True)
