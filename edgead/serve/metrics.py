"""Prometheus metrics of one served model: requests, errors, latency, batch sizes, queue depth.

Each app owns its own ``CollectorRegistry`` (two apps in one process, as in tests or a Ray replica, never share
counters). ``/metrics`` renders it in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgead_requests", "HTTP requests by route and status code.",
                                ("route", "code"), registry=r)
        self.errors = Counter("edgead_request_errors", "HTTP requests answered with a 4xx or 5xx status.",
                              ("route", "code"), registry=r)
        self.latency = Histogram("edgead_request_duration_seconds", "Wall time from request to response.",
                                 ("route",), buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgead_batch_size", "Images per engine call after dynamic batching.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("edgead_inference_duration_seconds", "Wall time of one engine call.",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("edgead_images", "Images scored.", registry=r)
        self.queued = Gauge("edgead_queue_images", "Images waiting for the engine.", registry=r)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        if code >= 400:
            self.errors.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.inference.observe(seconds)
        self.images.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
