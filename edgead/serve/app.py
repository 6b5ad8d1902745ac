"""The ``edgead serve`` application: one FastAPI app over a predict callable, a dynamic batcher and a spec.

``create_app`` takes the pieces, not a file: any ``predict(uint8 (N, H, W, 3)) -> Predictions`` (a ``Runner``'s, or
a remote one), the ``DetectorSpec`` that describes its input and threshold, and a ``ServeConfig``. ``app_for_runner``
wires a loaded runner; a Ray Serve deployment builds the same app inside its replica. Routes:

- KServe v2 / Open Inference Protocol: ``/v2``, ``/v2/health/{live,ready}``, ``/v2/models/{name}[/versions/{v}]``,
  ``.../ready``, ``POST .../infer`` (JSON tensors and the binary tensor extension);
- ``POST /predict``: image files (multipart ``files``), any size, fitted by the shared ``prepare``, or, for an
  artifact with a tiling plan, cut into tiles (``edgead.runtimes.tiling``) that go through the batcher like any
  images and are stitched back: the map of each file comes back at the file's own size;
- ``/metrics`` (Prometheus), ``/`` the inspection page and its small JSON API under ``/api``; with
  ``ServeConfig.line_status``, ``/api/line`` and the ``edgead_line_*`` gauges carry the live state of ``edgead line``
  processes (``serve.line``).

Every refused request gets the v2 error body ``{"error": "..."}`` with a 4xx status (503 when the queue is full);
an engine failure is a 500 with the same one-line body. No traceback, and no local path, ever leaves the process.
Labels follow the runners' rule (anomalous unless ``score <= threshold``, so a NaN score is anomalous) and JSON out is
strict (a NaN score is ``null``). Uploads go through ``imageio.decode_image``, the checks ``read_image`` makes, with
a per-upload pixel cap. ``access.AccessMiddleware`` checks ``Host`` and the optional token; ``server`` adds read
deadlines to uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edgead.errors import EdgeadError, InputError
from edgead.imageio import IMAGE_SUFFIXES, decode_image, list_images, prepare
from edgead.runtimes.base import Predictions, Runner
from edgead.serve.access import LOOPBACK_HOSTS, AccessMiddleware
from edgead.serve.batcher import DynamicBatcher, PredictFn, QueueFullError
from edgead.serve.limits import BodyLimitMiddleware, BodyTooLarge
from edgead.serve.line import LineWatch
from edgead.serve.metrics import ServeMetrics
from edgead.serve.protocol import (
    HEADER_LENGTH,
    ModelInfo,
    ProtocolError,
    decode_infer,
    encode_infer,
    parse_json,
    server_metadata,
)
from edgead.serve.server import TIMEOUTS_KEY
from edgead.spec import DetectorSpec
from edgead.viz import heatmap_overlay, panel_vmax, render_panel

log = logging.getLogger("edgead.serve")


@dataclass(frozen=True)
class ServeConfig:
    """How the service batches and what it accepts. ``max_delay_ms=0`` turns dynamic batching off."""

    name: str = "edgead"
    max_batch: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 64  # images waiting for the engine; more is answered 503, a request of more 413
    max_body_mb: float = 64.0  # request bodies above this are answered 413
    max_files: int = 64  # images per /predict request
    max_upload_mpx: float = 16.8  # pixels per uploaded image, from its header before decoding (4096 x 4096 fits)
    folder: Path | None = None  # a server-side image folder the page may score
    recent: int = 50  # verdicts kept for the page's live list
    info: dict[str, Any] = field(default_factory=dict)  # shown on the page and in the model metadata
    token: str | None = None  # when set, every route but the health probes and the page's HTML needs it (Bearer)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # names a request's Host header may carry; "*": any
    header_timeout_s: float = 10.0  # request headers must arrive within this (edgead.serve.server)
    body_timeout_s: float = 60.0  # and the whole body within this after them; else 408 and the connection closes
    max_connections: int = 256  # open connections (and running requests); more are answered 503 by uvicorn
    line_status: tuple[str, ...] = ()  # edgead line /status addresses shown on the page and /metrics (serve.line)
    line_timeout_s: float = 1.0  # for each of those fetches, the whole answer


def _encode_png(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise EdgeadError("could not encode a PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _finite(x: float) -> float | None:
    """A score for strict JSON: NaN and infinities are ``null``."""
    return float(x) if math.isfinite(x) else None


_PATH = re.compile(r"(?<![\w.])(?:/|~/|[A-Za-z]:\\)[^\s'\",:;()]+")


def _redact(text: str) -> str:
    """``text`` with local paths (``/a/b``, ``~/a``, ``C:\\a``) replaced by ``<path>``: errors never reveal them."""
    return _PATH.sub("<path>", text)


class Service:
    """The state behind the routes: model description, batcher, metrics and the recent verdicts."""

    def __init__(
        self, predict: PredictFn, spec: DetectorSpec, config: ServeConfig, batch_range: tuple[int, int | None]
    ) -> None:
        self.config = config
        self.max_upload_pixels = int(config.max_upload_mpx * 1e6)
        self.decoding = asyncio.Semaphore(os.cpu_count() or 1)  # decoded frames in memory: at most this many
        self.model = ModelInfo(config.name, spec, extra={k: v for k, v in config.info.items() if k != "name"})
        self.tiling = spec.tiling  # uploads and v2 tensors are frames tiled by the artifact's plan
        self.metrics = ServeMetrics()
        max_batch = config.max_batch if batch_range[1] is None else min(config.max_batch, batch_range[1])
        self.batcher = DynamicBatcher(predict, max_batch=max_batch, max_delay_s=config.max_delay_ms / 1000.0,
                                      max_queue=config.max_queue, on_batch=self.metrics.observe_batch)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.recent)
        self.started = time.time()
        self.lines = LineWatch(config.line_status, config.line_timeout_s) if config.line_status else None
        if self.lines is not None:
            self.metrics.registry.register(self.lines)

    @property
    def threshold(self) -> float | None:
        return self.model.spec.threshold

    def labels(self, scores: np.ndarray) -> np.ndarray | None:
        """The runners' rule (``Runner.predict``), for the served threshold: a NaN score is anomalous."""
        thr = self.threshold
        return None if thr is None else ~(scores <= thr)

    def check_fits(self, n: int) -> None:
        """Refuse (413) a request of more images than the queue can ever hold; retrying could never help it."""
        if n > self.batcher.max_queue:
            raise ProtocolError(f"expected at most {self.batcher.max_queue} images in one request (--max-queue), "
                                f"found {n}", status=413)

    async def run(self, images: np.ndarray) -> Predictions:
        self.check_fits(images.shape[0])
        try:
            fut = self.batcher.submit(images)
            self.metrics.queued.set(self.batcher.queued_images)
            p = await asyncio.wrap_future(fut)
        finally:
            self.metrics.queued.set(self.batcher.queued_images)
        return Predictions(p.scores, p.maps, self.labels(p.scores), p.seconds)

    async def run_frames(self, images: np.ndarray | list[np.ndarray]) -> Predictions:
        """Predictions for decoded uploads (``decode``): the prepared batch as it is, or with a tiling plan each
        frame's tiles through the batcher (at most a queue's worth at a time) and their maps stitched back; then
        ``maps`` holds one ``(H, W)`` map per frame, and frames may differ in size."""
        if self.tiling is None:
            return await self.run(images)  # type: ignore[arg-type]
        from edgead.runtimes.tiling import cut, stitch_frames, tile_grid

        scores, maps = [], []
        for frame in images:
            grid = tile_grid(frame.shape[:2], self.tiling)
            tiles = cut(frame[None], grid)
            step = min(self.batcher.max_queue, len(tiles))
            parts = [(await self.run(tiles[i : i + step])).maps for i in range(0, len(tiles), step)]
            s, m = await run_in_threadpool(stitch_frames, np.concatenate(parts), grid,
                                           self.model.spec.post.score_fraction)
            scores.append(s[0])
            maps.append(m[0])
        out = np.asarray(scores, np.float32)
        return Predictions(out, maps, self.labels(out))  # type: ignore[arg-type]  # a list: sizes may differ

    async def decode(self, names: list[str], frames: list[bytes], cap: int | None) -> np.ndarray | list[np.ndarray]:
        """Decode (``imageio.decode_image``, ``cap`` pixels each; None: ``EDGEAD_MAX_PIXELS``) and prepare encoded
        images (with a tiling plan: keep the decoded frames, ``run_frames`` tiles them); at most one request per
        CPU decodes at a time, so full-size frames in memory stay bounded."""
        option = "EDGEAD_MAX_PIXELS" if cap is None else "--max-upload-mpx"

        def work() -> np.ndarray | list[np.ndarray]:
            decoded = [decode_image(d, n, cap, option) for n, d in zip(names, frames, strict=True)]
            if self.tiling is not None:
                return decoded
            return np.stack([prepare(f, self.model.spec) for f in decoded])

        async with self.decoding:
            return await run_in_threadpool(work)

    def remember(self, source: str, names: list[str], p: Predictions) -> None:
        now = time.time()
        labels = [None] * len(p) if p.labels is None else p.labels.tolist()
        for n, s, lab in zip(names, p.scores.tolist(), labels, strict=True):
            self.recent.appendleft({"time": now, "source": source, "name": n, "score": _finite(s), "anomalous": lab})

    def image_rows(self, names: list[str], images: np.ndarray, p: Predictions, panel: bool, overlay: bool):
        thr = self.threshold
        rows = []
        for i, name in enumerate(names):
            s = float(p.scores[i])
            label = None if p.labels is None else ("anomalous" if p.labels[i] else "normal")
            row: dict[str, Any] = {"name": name, "score": _finite(s), "label": label}
            vmax = panel_vmax(p.maps[i], thr)
            if panel:
                row["heatmap"] = _encode_png(render_panel(images[i], p.maps[i], 0.0, vmax, s, thr))
            if overlay:
                row["image"] = _encode_png(images[i])
                row["overlay"] = _encode_png(heatmap_overlay(images[i], p.maps[i], 0.0, vmax))
            rows.append(row)
        return rows


def _internal_message(exc: BaseException) -> str:
    if os.environ.get("EDGEAD_DEBUG") == "1":
        log.exception("request failed")
    else:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    first = _redact((str(exc).splitlines() or [""])[0])[:200]
    return f"internal error: {type(exc).__name__}: {first}" if first else f"internal error: {type(exc).__name__}"


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def create_app(
    predict: PredictFn,
    spec: DetectorSpec,
    config: ServeConfig | None = None,
    batch_range: tuple[int, int | None] = (1, None),
) -> FastAPI:
    """The service over ``predict`` for a model described by ``spec`` (see the module docstring)."""
    config = config or ServeConfig()
    svc = Service(predict, spec, config, batch_range)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield {TIMEOUTS_KEY: (config.header_timeout_s, config.body_timeout_s)}  # read by server.GuardedH11Protocol
        svc.batcher.close()

    app = FastAPI(title="edgead serve", version=svc.model.version, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.service = svc
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(config.max_body_mb * 1024 * 1024))
    app.add_middleware(AccessMiddleware, allowed_hosts=config.allowed_hosts, token=config.token)  # outside the limit

    def err(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ProtocolError)
    async def _protocol(_: Request, exc: ProtocolError) -> JSONResponse:
        return err(exc.status, str(exc))

    @app.exception_handler(QueueFullError)
    async def _queue(_: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return err(413, str(exc))

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return err(400, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        return err(400, "expected a complete request body, found the connection closed before its end")

    @app.exception_handler(EdgeadError)
    async def _edgead(_: Request, exc: EdgeadError) -> JSONResponse:
        log.error("engine error: %s", exc)
        return err(500, _redact(f"inference failed: {exc}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return err(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return err(400, f"expected a valid request, found: {first.get('msg', 'invalid input')} at "
                        f"{'.'.join(str(x) for x in first.get('loc', ()))}")

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is one 500 line, and the server goes on
            response = err(500, _internal_message(exc))
        if request.url.path != "/metrics":
            svc.metrics.observe_request(_route_of(request), response.status_code, time.perf_counter() - t0)
        return response

    def check_model(name: str, version: str | None = None) -> None:
        if name != svc.model.name:
            raise ProtocolError(f"expected model '{svc.model.name}', found unknown model '{name}'", status=404)
        if version is not None and version != svc.model.version:
            raise ProtocolError(f"expected version {svc.model.version} of model '{name}', found '{version}'",
                                status=404)

    # -- Open Inference Protocol ------------------------------------------------------------------------
    @app.get("/v2")
    async def v2_server() -> dict[str, Any]:
        return server_metadata()

    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_model(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return svc.model.metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_ready(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        body = await request.body()
        req = await run_in_threadpool(decode_infer, body, request.headers.get(HEADER_LENGTH), svc.model)
        p = await svc.run_frames(list(req.images)) if svc.tiling is not None else await svc.run(req.images)
        svc.remember("v2", [f"{req.id or 'infer'}[{i}]" for i in range(len(p))], p)
        maps = np.stack(p.maps)  # tiled: one frame size per tensor, so the stitched maps stack
        payload, header_len = await run_in_threadpool(encode_infer, svc.model, req, p.scores, maps, p.labels)
        if header_len is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_len)})

    # -- convenience API and page -----------------------------------------------------------------------
    @app.post("/predict")
    async def predict_files(request: Request, heatmap: bool = False, overlay: bool = False) -> dict[str, Any]:
        form = await request.form(max_files=config.max_files, max_fields=16)
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InputError("expected image files in a multipart form field 'files', found none")
        svc.check_fits(len(uploads))
        names, frames = [], []
        for up in uploads:
            data = await up.read()
            names.append(up.filename or f"upload{len(names)}")
            frames.append(data)
        images = await svc.decode(names, frames, svc.max_upload_pixels)
        p = await svc.run_frames(images)
        svc.remember("predict", names, p)
        rows = await run_in_threadpool(svc.image_rows, names, images, p, heatmap, overlay)
        return {"model": svc.model.name, "threshold": svc.threshold, "results": rows}

    @app.get("/metrics")
    async def metrics() -> Response:
        if svc.lines is not None:
            await svc.lines.read()  # the line gauges render this snapshot
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("edgead.serve").joinpath("static/index.html").read_text())

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        spec = svc.model.spec
        return {"model": svc.model.name, "threshold": svc.threshold, "input_size": list(spec.input_size),
                "family": f"{spec.family} {spec.backbone} {spec.norm}", "max_batch": svc.batcher.max_batch,
                "max_delay_ms": config.max_delay_ms, "folder": config.folder.name if config.folder else None,
                "tiling": None if svc.tiling is None else {"tile": list(svc.tiling.tile),
                                                           "overlap": svc.tiling.overlap},
                "lines": len(config.line_status), **config.info}

    @app.get("/api/line")
    async def line_state() -> dict[str, Any]:
        if svc.lines is None:
            raise ProtocolError("expected the server to be started with --line-status URL (an edgead line "
                                "/status address), found none", status=404)
        return {"lines": await svc.lines.read()}

    @app.get("/api/recent")
    async def recent() -> dict[str, Any]:
        return {"threshold": svc.threshold, "recent": list(svc.recent)}

    def folder_files() -> dict[str, Path]:
        if config.folder is None:
            raise ProtocolError("expected the server to be started with --folder, found no folder", status=404)
        try:
            return {p.name: p for p in list_images(config.folder)}
        except InputError:  # its message names the local path
            raise ProtocolError(f"expected image files ({', '.join(IMAGE_SUFFIXES)}) in the served folder "
                                f"'{config.folder.name}', found none", status=404) from None

    @app.get("/api/folder")
    async def folder_list() -> dict[str, Any]:
        files = await run_in_threadpool(folder_files)
        return {"folder": config.folder.name, "images": sorted(files)}  # type: ignore[union-attr]

    @app.post("/api/folder/predict")
    async def folder_predict(request: Request) -> dict[str, Any]:
        expected = 'a JSON body {"names": [image names from /api/folder]}'
        body = parse_json(await request.body(), expected)
        wanted = body.get("names") if isinstance(body, dict) else None
        if not isinstance(wanted, list) or not wanted or not all(isinstance(n, str) for n in wanted):
            raise InputError(f"expected {expected}, found none")
        if len(wanted) > config.max_files:
            raise InputError(f"expected at most {config.max_files} names per request, found {len(wanted)}")
        files = await run_in_threadpool(folder_files)
        unknown = [n for n in wanted if n not in files]
        if unknown:
            raise ProtocolError(f"expected names of images in the served folder, found unknown {unknown[:3]}", 404)
        svc.check_fits(len(wanted))
        frames = await run_in_threadpool(lambda: [files[n].read_bytes() for n in wanted])
        images = await svc.decode(wanted, frames, None)  # the server's own files: only EDGEAD_MAX_PIXELS applies
        p = await svc.run_frames(images)
        svc.remember("folder", wanted, p)
        rows = await run_in_threadpool(svc.image_rows, wanted, images, p, False, True)
        return {"model": svc.model.name, "threshold": svc.threshold, "results": rows}

    return app


def app_for_runner(runner: Runner, config: ServeConfig | None = None, threshold: float | None = None) -> FastAPI:
    """The service over a loaded runner; ``threshold`` overrides the artifact's for the labels."""
    config = config or ServeConfig()
    spec = runner.spec if threshold is None else runner.spec.with_threshold(threshold)
    info = {"engine": runner.engine, "precision": runner.manifest.precision, "artifact": Path(runner.folder).name,
            **config.info}  # the folder's name only: answers never reveal local paths
    return create_app(runner.predict, spec, replace(config, info=info), (runner.min_batch, runner.max_batch))


def app_for_artifact(
    path: str | Path, engine: str | None = None, config: ServeConfig | None = None, threshold: float | None = None
) -> FastAPI:
    """Load an artifact through ``edgead.runtimes.load`` and build the service over it.

    A zero-argument closure over this is an app builder for ``ray.serve.ingress``: each replica loads its own runner.
    """
    import edgead.runtimes as rt

    return app_for_runner(rt.load(path, engine), config, threshold)


__all__ = ["IMAGE_SUFFIXES", "ServeConfig", "app_for_artifact", "app_for_runner", "create_app"]
