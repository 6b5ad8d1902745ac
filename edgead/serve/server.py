"""Run the app with uvicorn in a background thread on a free loopback port (for tests, benchmarks, notebooks).

``edgead serve`` itself runs uvicorn in the foreground; this helper is the same server, started and stopped from
Python, so a load test or a browser test drives the real HTTP stack.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from edgead.errors import EdgeadError, require


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on ``host`` (port 0: any free port) while the block runs; yields the base URL."""
    uvicorn = require("uvicorn", "serve", "edgead serve")
    config = uvicorn.Config(app, host=host, port=port, log_level="error", lifespan="on", timeout_graceful_shutdown=2)
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
