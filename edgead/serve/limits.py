"""A request-body size limit enforced before and while the body is read (ASGI middleware), and ``send_error``."""

from __future__ import annotations

import json

from edgead.errors import InputError


async def send_error(send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with the v2 error body ``{"error": message}`` from ASGI middleware, and close the connection."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(InputError):
    """A request body over the configured limit."""


class BodyLimitMiddleware:
    """Answer 413 when Content-Length says the body is over ``max_bytes``; stop reading a streamed body past it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, found: str) -> str:
        return f"expected a request body of at most {self.max_bytes} bytes (--max-body-mb), found {found}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, 413, self._message(f"Content-Length {int(length)}"))
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message(f"more than that in a streamed body ({seen} bytes so far)"))
            return message

        await self.app(scope, limited_receive, send)
