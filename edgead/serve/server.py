"""The HTTP server under the app: uvicorn's h11 protocol with read deadlines, and a background server for tests.

uvicorn closes an idle keep-alive connection, but waits forever for a request's headers or body: a client that
sends half a request and stalls holds its connection (and, for a body, an app task) indefinitely. ``GuardedH11Protocol``
adds two deadlines: the request headers must arrive within ``header_timeout_s`` of the connection opening (or of the
first byte of the next request on a kept-alive connection), the whole body within ``body_timeout_s`` of the headers.
A connection that misses one is answered ``408`` and closed; one that never sent a byte (a browser's speculative
connection) is closed silently, as uvicorn closes an idle kept-alive one.

The deadlines are the app's (``ServeConfig``): its lifespan publishes them in uvicorn's app state, which every
connection of that server reads, in one process or in each ``--workers`` process alike. ``server_options`` gives the
uvicorn settings ``edgead serve`` and ``background_server`` both use; ``edgead serve`` runs uvicorn in the foreground,
``background_server`` starts and stops the same server from Python, so a test drives the real HTTP stack.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgead.errors import EdgeadError, require

#: Where the app's lifespan publishes ``(header_timeout_s, body_timeout_s)`` for the protocol.
TIMEOUTS_KEY = "edgead.timeouts"
DEFAULT_TIMEOUTS = (10.0, 60.0)
PROTOCOL = "edgead.serve.server:GuardedH11Protocol"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request headers and another on the request body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" or "body" while a deadline runs
        self._heard = False  # any byte received on this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body")
        elif state is h11.IDLE:
            if self._phase is None:  # the next request on a kept-alive connection has begun
                self._arm("headers")
        else:  # the request is complete (or the connection is done): the app's time, not the client's
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._disarm()
        header_s, body_s = self.app_state.get(TIMEOUTS_KEY, DEFAULT_TIMEOUTS)
        seconds = header_s if phase == "headers" else body_s
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expire, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expire(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        if self._heard and (self.cycle is None or not self.cycle.response_started):
            what = "request headers within {:g} s, found them" if phase == "headers" else \
                "request body within {:g} s, found it"
            body = json.dumps({"error": f"expected the {what.format(seconds)} incomplete; closing the connection"})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body.encode()))
        self.transport.close()


def server_options(config: Any) -> dict[str, Any]:
    """The uvicorn settings for a ``ServeConfig``: the guarded protocol and the connection limit."""
    return {"http": PROTOCOL, "limit_concurrency": config.max_connections, "timeout_keep_alive": 5}


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on ``host`` (port 0: any free port) while the block runs; yields the base URL."""
    uvicorn = require("uvicorn", "serve", "edgead serve")
    service = getattr(app.state, "service", None)
    options = server_options(service.config) if service is not None else {"http": PROTOCOL}
    config = uvicorn.Config(app, host=host, port=port, log_level="error", lifespan="on", timeout_graceful_shutdown=2,
                            **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="edgead-serve", daemon=True)
    thread.start()
    t0 = time.perf_counter()
    while not server.started:
        if not thread.is_alive() or time.perf_counter() - t0 > timeout:
            server.should_exit = True
            raise EdgeadError(f"expected the server to start on {host}:{port} within {timeout} s, found it did not")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
