"""Optional bearer-token authorisation (RNNSERVE_AUTH_TOKEN).

Off by default: `make serve` binds loopback. Anyone who can reach the port of a server without a
token can use its models, so set one whenever that is more than trusted callers. The token is
compared in constant time (hmac.compare_digest), so the answer's timing does not tell how much of
a guess was right.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection
from typing import Any

from service.errors import trip

UNAUTHORIZED = json.dumps({"error": "missing or wrong bearer token: send `Authorization: Bearer "
                                    "<token>` (RNNSERVE_AUTH_TOKEN)"}).encode()


class BearerAuth:
    """ASGI middleware: 401 for a request without `Authorization: Bearer <token>`, but to `public`
    paths (and their subpaths)."""

    def __init__(self, app: Any, token: str, public: Collection[str]):
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.public = tuple(public)

    def is_public(self, path: str) -> bool:
        return any(path == prefix or (prefix != "/" and path.startswith(prefix + "/"))
                   for prefix in self.public)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        trip("unauthorized", f"{scope.get('method')} {scope.get('path')} without the bearer token")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(UNAUTHORIZED)).encode()),
                                (b"www-authenticate", b'Bearer realm="rnn-serve"')]})
        await send({"type": "http.response.body", "body": UNAUTHORIZED})
