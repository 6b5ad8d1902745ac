"""``edgead serve``: run an artifact as a KServe v2 service with an inspection page (uvicorn over FastAPI)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from edgead.cli.common import RunEngine, console
from edgead.errors import InputError, require

_ENV = "EDGEAD_SERVE_CONFIG"


def serve(
    artifact: Annotated[Path, typer.Argument(help="Artifact (or checkpoint) folder to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own runner.")] = 1,
    engine: RunEngine = None,
    name: Annotated[str, typer.Option(help="Model name in the v2 protocol.")] = "edgead",
    max_batch: Annotated[int, typer.Option(help="Most images per engine call (within the artifact's range).")] = 8,
    batch_delay_ms: Annotated[float, typer.Option(help="How long to gather requests into a batch; 0: no batching.")]
    = 5.0,
    max_queue: Annotated[int, typer.Option(help="Images allowed to wait; more are answered 503.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body; larger ones are answered 413.")] = 64.0,
    max_upload_mpx: Annotated[float, typer.Option(help="Largest uploaded image in megapixels, read from its header "
                                                  "before decoding; larger ones are answered 400.")] = 16.8,
    token: Annotated[str | None, typer.Option(envvar="EDGEAD_TOKEN", show_default=False,
                                              help="Require 'Authorization: Bearer TOKEN' on every route but the "
                                              "health probes and the page (prefer the EDGEAD_TOKEN variable: a "
                                              "command line is visible to other users).")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(help="A name the Host header may carry (repeat; '*': "
                                                           "any). Default: the loopback names when --host is "
                                                           "loopback, else any.")] = None,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request's headers.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request's body after them.")]
    = 60.0,
    max_connections: Annotated[int, typer.Option(help="Open connections per process; more are answered 503.")]
    = 256,
    folder: Annotated[Path | None, typer.Option(help="Image folder on this machine the page may score.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the artifact's threshold for the labels.")]
    = None,
    line_status: Annotated[list[str] | None, typer.Option(help="An edgead line's /status address (edgead line "
                                                          "--metrics-port PORT: http://127.0.0.1:PORT/status; "
                                                          "repeat for several lines): the page and /metrics show "
                                                          "its live state.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Deploy the same app on Ray Serve (a local Ray instance unless "
                                      "--address).")] = False,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to join; implies --ray.")] = None,
    replicas: Annotated[int, typer.Option(help="Ray Serve replicas, each holding one runner.")] = 2,
    ray_cpus: Annotated[float, typer.Option(help="CPUs reserved per Ray Serve replica.")] = 1.0,
    min_replicas: Annotated[int | None, typer.Option(help="Autoscaling lower bound (with --max-replicas).")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Autoscaling upper bound (with --min-replicas).")] = None,
) -> None:
    """Serve an artifact: KServe v2 (/v2/...), POST /predict, /metrics and the inspection page at /."""
    uvicorn = require("uvicorn", "serve", "edgead serve")
    require("fastapi", "serve", "edgead serve")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, found {workers}")
    if max_batch < 1 or batch_delay_ms < 0 or max_queue < 1 or max_body_mb <= 0:
        raise InputError("expected --max-batch >= 1, --batch-delay-ms >= 0, --max-queue >= 1 and --max-body-mb > 0")
    if max_upload_mpx <= 0 or header_timeout <= 0 or body_timeout <= 0 or max_connections < 1:
        raise InputError("expected --max-upload-mpx, --header-timeout and --body-timeout > 0 and --max-connections "
                         ">= 1")
    if token is not None and not token.strip():
        raise InputError("expected a non-empty --token (or EDGEAD_TOKEN), found an empty one")
    if folder is not None and not folder.is_dir():
        raise InputError(f"expected --folder to be a folder of images, found no folder at {folder}")
    from edgead.serve.line import check_urls

    lines = list(check_urls(line_status or []))
    settings = {"artifact": str(artifact), "engine": engine, "threshold": threshold,
                "config": {"name": name, "max_batch": max_batch, "max_delay_ms": batch_delay_ms,
                           "max_queue": max_queue, "max_body_mb": max_body_mb, "max_upload_mpx": max_upload_mpx,
                           "folder": str(folder) if folder else None, "token": token.strip() if token else None,
                           "allowed_hosts": allowed_host or default_hosts(host), "header_timeout_s": header_timeout,
                           "body_timeout_s": body_timeout, "max_connections": max_connections,
                           "line_status": lines}}
    if ray or address is not None:
        _serve_on_ray(settings, host, port, address, replicas, ray_cpus, min_replicas, max_replicas)
        return
    app = build_app(settings)  # load once here, so a bad artifact is one clear line before anything listens
    console.print(f"serving [bold]{artifact}[/] as model '{name}' on http://{host}:{port}/ "
                  f"(max batch {app.state.service.batcher.max_batch}, batching delay {batch_delay_ms} ms, "
                  f"{workers} worker{'s' if workers > 1 else ''}; token {'required' if token else 'off'}, Host "
                  f"{', '.join(settings['config']['allowed_hosts'])})"
                  + (f"; line state from {', '.join(lines)}" if lines else ""))
    from edgead.serve.server import server_options

    options = server_options(app.state.service.config)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, **options)
        return
    app.state.service.batcher.close()
    os.environ[_ENV] = json.dumps(settings)
    uvicorn.run("edgead.cli.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", timeout_graceful_shutdown=5, **options)


def default_hosts(host: str) -> list[str]:
    """Loopback names for a loopback bind (DNS rebinding cannot reach it then); any name otherwise."""
    from edgead.serve.access import LOOPBACK_HOSTS

    return list(LOOPBACK_HOSTS) if host in LOOPBACK_HOSTS or host.startswith("127.") else ["*"]


def _serve_on_ray(settings: dict, host: str, port: int, address: str | None, replicas: int, cpus: float,
                  min_replicas: int | None, max_replicas: int | None) -> None:
    """The same application on Ray Serve: deploy, then keep the driver alive until interrupted."""
    from edgead.scale.ray_serve import run_on_ray
    from edgead.serve import ServeConfig

    cfg = _config_fields(settings["config"])
    build_app(settings).state.service.batcher.close()  # a bad artifact is one clear line before Ray starts
    console.print(f"serving [bold]{settings['artifact']}[/] on Ray Serve at http://{host}:{port}/ "
                  f"({replicas} replica{'s' if replicas > 1 else ''}, {cpus:g} CPU each)")
    run_on_ray(settings["artifact"], address=address, host=host, port=port, blocking=True,
               engine=settings.get("engine"), config=ServeConfig(**cfg), threshold=settings.get("threshold"),
               replicas=replicas, cpus_per_replica=cpus, min_replicas=min_replicas, max_replicas=max_replicas)


def build_app(settings: dict):
    from edgead.serve import ServeConfig, app_for_artifact

    cfg = _config_fields(settings["config"])
    return app_for_artifact(settings["artifact"], settings.get("engine"), ServeConfig(**cfg), settings.get("threshold"))


def _config_fields(config: dict) -> dict:
    cfg = dict(config)
    cfg["folder"] = Path(cfg["folder"]) if cfg.get("folder") else None
    for key in ("allowed_hosts", "line_status"):  # lists after their trip through JSON
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    return cfg


def app_from_env():
    """The app factory each uvicorn worker process calls (settings travel in an environment variable)."""
    return build_app(json.loads(os.environ[_ENV]))


__all__ = ["app_from_env", "build_app", "serve"]
