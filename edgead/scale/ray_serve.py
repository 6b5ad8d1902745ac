"""``edgead serve --ray``: the ``edgead serve`` application deployed with Ray Serve, one runner per replica.

Each replica materialises the artifact shipped through Ray's object store (nodes need no copy of it) in a
temporary folder that lives only while it loads one runner (a killed replica leaves no copy behind), and builds
exactly the application ``edgead serve`` runs (``edgead.serve.app_for_runner``: the KServe v2 endpoints,
``/predict``, ``/metrics`` and the inspection page), with its own dynamic batcher. Ray Serve's HTTP proxy spreads
requests over the replicas; replicas that die (a node lost) are replaced by the Serve controller on the nodes that
remain. Each replica adds its Ray node id to the model metadata (``parameters.node``), so a client can
see which node answered.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgead.errors import InputError, require
from edgead.scale.ray_data import artifact_copy, artifact_files, connect

APP_NAME = "edgead"


class EdgeadReplica:
    """One Ray Serve replica: a runner over the shipped artifact and the ``edgead serve`` app around it."""

    def __init__(self, files_ref: list[Any], engine: str | None, config: dict[str, Any], threshold: float | None,
                 threads: int) -> None:
        import ray

        import edgead.runtimes as rt
        from edgead.serve import ServeConfig, app_for_runner

        files: dict[str, bytes] = ray.get(files_ref[0])
        with artifact_copy(files) as folder:  # gone once loaded: a killed replica leaves no copy behind
            self.runner = rt.load(folder, engine, **({"threads": threads} if threads else {}))
        node = ray.get_runtime_context().get_node_id()
        cfg = dict(config)
        cfg["folder"] = Path(cfg["folder"]) if cfg.get("folder") else None
        cfg["info"] = {**dict(cfg.get("info") or {}), "node": node}
        self._app = app_for_runner(self.runner, ServeConfig(**cfg), threshold=threshold)

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve asks for the ASGI app after __init__
        return self._app


def build_application(artifact: str | Path, *, engine: str | None = None, config: Any = None,
                      threshold: float | None = None, replicas: int = 2, cpus_per_replica: float = 1.0,
                      min_replicas: int | None = None, max_replicas: int | None = None) -> Any:
    """A bound Ray Serve application of ``replicas`` edgead replicas (autoscaling when both bounds are given)."""
    ray = require("ray", "ray", "serving on Ray")
    serve = require("ray.serve", "ray", "serving on Ray")
    from edgead.serve import ServeConfig

    if replicas < 1:
        raise InputError(f"expected --replicas of at least 1, found {replicas}")
    if (min_replicas is None) != (max_replicas is None):
        raise InputError("expected both --min-replicas and --max-replicas for autoscaling, found only one")
    if min_replicas is not None and not (0 < min_replicas <= max_replicas):  # type: ignore[operator]
        raise InputError(f"expected 0 < --min-replicas <= --max-replicas, found {min_replicas} and {max_replicas}")
    cfg = asdict(config or ServeConfig())
    cfg["folder"] = str(cfg["folder"]) if cfg.get("folder") else None
    files_ref = ray.put(artifact_files(artifact))
    options: dict[str, Any] = {"name": APP_NAME, "ray_actor_options": {"num_cpus": cpus_per_replica}}
    if min_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "initial_replicas": max(min_replicas, min(replicas, max_replicas))}
    else:
        options["num_replicas"] = replicas
    deployment = serve.deployment(serve.ingress()(EdgeadReplica), **options)
    return deployment.bind([files_ref], engine, cfg, threshold, max(1, int(cpus_per_replica)))


def run_on_ray(artifact: str | Path, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
               blocking: bool = True, **app_options: Any) -> Any:
    """Start (or join) Ray, start Serve's HTTP proxy on the head at ``host:port`` and deploy the application."""
    connect(address)
    serve = require("ray.serve", "ray", "serving on Ray")
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    app = build_application(artifact, **app_options)
    return serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
