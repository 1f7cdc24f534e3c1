"""ASGI middleware in front of the service's own endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from service import metrics

JSON = b"application/json"


class EndpointMiddleware:
    """For the service's own paths: read every POST body as JSON, and count failed requests.

    JSON whatever the Content-Type: `curl -d` sends form encoding by default, which BentoML would
    parse as a form and answer with a confusing "field required". The endpoints take only JSON.

    Errors: every response of status >= 400 counts in rnnserve_errors_total{endpoint, kind}. A
    request cancelled from outside is counted as a timeout: BentoML's timeout middleware (outside
    this one) cancels the request and answers 504 itself.
    """

    def __init__(self, app: Any, endpoints: Mapping[str, str]):
        self.app = app
        self.endpoints = endpoints  # path -> endpoint label

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint = self.endpoints.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", JSON)]}
        status = 0

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except asyncio.CancelledError:
            metrics.errors.labels(endpoint, "timeout").inc()
            raise
        except Exception:
            metrics.errors.labels(endpoint, "internal").inc()
            raise
        kind = metrics.error_kind(status)
        if kind is not None:
            metrics.errors.labels(endpoint, kind).inc()
