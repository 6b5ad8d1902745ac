"""Who may call the service: a ``Host`` allow-list (against DNS rebinding) and an optional bearer token (ASGI).

A browser page on another site can reach a service bound to 127.0.0.1 by re-pointing its own domain name at
127.0.0.1 (DNS rebinding); its requests then carry that foreign name in ``Host``, which the allow-list refuses.
The token, when set, is required on every route except the health probes and the inspection page's HTML (which holds
no data; its JavaScript sends the token with each call). Compared in constant time. TLS is a proxy's job (docs).
"""

from __future__ import annotations

import hmac

from edgead.serve.limits import send_error

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
TOKEN_HELP = "an 'Authorization: Bearer <token>' header (edgead serve --token or EDGEAD_TOKEN)"


def host_name(value: str) -> str:
    """The name in a ``Host`` header or an allow-list entry: lower case, without port or IPv6 brackets."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1 : v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


class AccessMiddleware:
    """Answer 400 to a ``Host`` outside ``allowed_hosts`` (``"*"``: any) and 401 to a missing or wrong token."""

    def __init__(self, app, allowed_hosts: tuple[str, ...], token: str | None) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.any_host and host_name(host) not in self.hosts:
            await send_error(send, 400, f"expected a Host header naming this server (--allowed-host), found {host!r}")
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
                found = "a wrong token" if given or scheme else "none"
                await send_error(send, 401, f"expected {TOKEN_HELP}, found {found}",
                                 [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)
