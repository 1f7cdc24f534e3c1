"""Failed requests: the overload error, and the one place that counts every failure.

Every answer of status >= 400 to one of the service's endpoints counts once in
rnnserve_errors_total{endpoint, kind}, whichever layer gave it (validation in DirectEndpoints or
BentoML, a limit in service.transport.limits, overload, the timeout middleware, a bug). A stream
that fails after its first chunk can no longer change its status: its endpoint counts that
failure itself (`count`). Shed requests are counted, not logged one by one: under a flood a
traceback per 429 filled the log faster than the service answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

from service import metrics
from service.room import Room

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a shed request's Retry-After says
# scope["state"] keys: the task running a request, and whether its client went away
TASK = "rnnserve.task"
DISCONNECTED = "rnnserve.disconnected"


class Overloaded(BentoMLException):
    """A model's queue is full: HTTP 429 with Retry-After, retry later. `room`, when given, is
    where a caller may wait briefly to be woken when a request's worth of room frees, and ask
    again."""

    def __init__(self, message: str, room: Room | None = None):
        super().__init__(message, error_code=HTTPStatus.TOO_MANY_REQUESTS)
        self.room = room


class RateLimitedLog:
    """At most one warning per `every_s` seconds, saying how many events it stands for."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0):
        self._log = logger
        self._every_s = every_s
        self._next = 0.0
        self._events = 0

    def warning(self, message: str, *args: Any) -> None:
        self._events += 1
        now = time.monotonic()
        if now < self._next:
            return
        self._log.warning(message + " (%d such within %.0f s)", *args, self._events,
                          self._every_s)
        self._events = 0
        self._next = now + self._every_s


shed_log = RateLimitedLog(log)
_limit_log = RateLimitedLog(log)


def trip(limit: str, message: str) -> None:
    """A limit stopped a request or a connection: count it, and say so (rate-limited)."""
    metrics.limit_rejections.labels(limit).inc()
    _limit_log.warning("limit %s: %s", limit, message)


def count(endpoint: str, kind: str) -> None:
    metrics.errors.labels(endpoint, kind).inc()


class ErrorCounting:
    """ASGI middleware: counts the failed requests to `endpoints` (path -> endpoint label), and
    ends quietly a request whose client went away.

    It records the task running each request in its scope, for the HTTP protocol to cancel when
    the connection is lost (service.transport.limits). Such a request ends here, counted as
    disconnected. Any other cancellation counts as a timeout: BentoML's timeout middleware,
    outside this one, cancels the request and answers 504 itself.
    """

    def __init__(self, app: Any, endpoints: Mapping[str, str]):
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[TASK] = asyncio.current_task()
        endpoint = self.endpoints.get(scope.get("path", ""))
        if endpoint is None:
            try:
                await self.app(scope, receive, send)
            except asyncio.CancelledError:
                if not _disconnected(state):
                    raise
            return
        status = 0

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except asyncio.CancelledError:
            if not _disconnected(state):
                count(endpoint, "timeout")
                raise
            count(endpoint, "disconnected")
            return
        except Exception:
            count(endpoint, "internal")
            raise
        kind = metrics.error_kind(status)
        if kind is not None:
            count(endpoint, kind)


def _disconnected(state: dict[str, Any]) -> bool:
    """Whether the cancellation under way is the protocol's, for a lost connection; if so, it
    is taken back, and the request's task ends normally."""
    if not state.get(DISCONNECTED):
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True
