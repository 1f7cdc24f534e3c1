"""BentoML's TimeoutMiddleware with its timer cancelled once the request is done.

BentoML 1.4's own leaves every request's timer handle scheduled for the full timeout (60 s by
default), each holding a future, a context and a bound method: at thousands of requests a second
that is over a hundred thousand live timers, which every full garbage collection walks, so under
steady load the worker stalled longer at each one. Also unlike BentoML's, the app runs in the
request's own task under asyncio.timeout, not in a second task with a future to wait on: less
work per request, and a request that ends without answering releases the middleware at once.
docs/transport.md has what it bought.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse


async def timeout_middleware_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """TimeoutMiddleware.__call__: 504 when no answer has started after `self.timeout` seconds."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    deadline = asyncio.timeout(self.timeout)

    async def send_and_release(message: dict[str, Any]) -> None:
        if deadline.when() is not None:  # the answer has started: no deadline any more
            deadline.reschedule(None)
        await send(message)

    try:
        async with deadline:
            await self.app(scope, receive, send_and_release)
    except TimeoutError:
        if not deadline.expired():
            raise  # the app's own
        answer = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                              status_code=504)
        await answer(scope, receive, send)


def fix_bentoml_timeout_middleware() -> None:
    """Make BentoML's TimeoutMiddleware cancel its timers (timeout_middleware_call)."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware.__call__ = timeout_middleware_call
