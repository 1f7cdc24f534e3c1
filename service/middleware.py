"""ASGI middleware in front of the service's own endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import JSONResponse

from service import metrics

log = logging.getLogger(__name__)

JSON = b"application/json"


def json_body(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse (BentoML's error answers) renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


INTERNAL_ERROR = json_body({"error": "An unexpected error has occurred, please check the server log."})


async def timeout_middleware_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """BentoML 1.4's TimeoutMiddleware.__call__ (504 when no answer has started after
    `self.timeout` seconds), with its timer cancelled once the request is done.

    BentoML's own leaves every request's timer handle scheduled for the full timeout (60 s by
    default), holding a future, a context and a bound method: at 2,000 requests/s, 120,000 timers
    and several times as many objects alive, which every full garbage collection walks, so under
    steady load the worker stalled longer and longer at each one. Also unlike BentoML's, the app
    runs in the request's own task under asyncio.timeout, not in a second task with a future to
    wait on: less work per request, and a request that ends without answering (the client went
    away, or the app raised before its first message) releases the middleware at once.
    """
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

    if not hasattr(traffic.TimeoutMiddleware, "_set_timer_out"):
        raise RuntimeError("bentoml's TimeoutMiddleware changed: review service.middleware."
                           "timeout_middleware_call against it")
    traffic.TimeoutMiddleware.__call__ = timeout_middleware_call


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


class DirectEndpoints:
    """Answers the JSON endpoints `apis` itself, with BentoML's own request and answer models, and
    counts their failed requests as EndpointMiddleware does.

    BentoML's route for an API (routing, request wrapper, dependency injection, a per-call
    inspect.signature, its serde) cost about a quarter of the worker's time per request at c=64
    (py-spy). This calls the same method on the same service instance with the same validation,
    statuses and error bodies as BentoML's `api_endpoint_wrapper`, and stays inside BentoML's
    middleware (metrics, access log, timeout), so /metrics and the HTTP contract do not change.
    It goes outside EndpointMiddleware, which its requests then skip: one wrapper less on each
    message sent. Other paths and methods go on to EndpointMiddleware and BentoML.
    """

    def __init__(self, app: Any, apis: Mapping[str, Any], server_header: str):
        self.app = app
        self.apis = apis  # path -> bentoml APIMethod
        self.headers = [(b"content-type", JSON), (b"server", server_header.encode())]
        # TypeAdapter(list[Result]).dump_json for a list answer: BentoML's root model would
        # validate the list again and encode it with the json module
        self.list_answers = {path: list_answer(api.output_spec) for path, api in apis.items()}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        api = self.apis.get(path)
        if api is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        endpoint = path.removeprefix("/")
        try:
            body = await read_body(receive)
            if body is None:
                return  # the client went away
            status, payload = await answer(api, body, path, self.list_answers[path])
            await send({"type": "http.response.start", "status": status,
                        "headers": [*self.headers, (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
        except asyncio.CancelledError:
            metrics.errors.labels(endpoint, "timeout").inc()
            raise
        except Exception:
            metrics.errors.labels(endpoint, "internal").inc()
            raise
        kind = metrics.error_kind(status)
        if kind is not None:
            metrics.errors.labels(endpoint, kind).inc()


def list_answer(output_spec: Any) -> TypeAdapter | None:
    """A TypeAdapter of the list that BentoML's root model `output_spec` wraps, else None."""
    fields = getattr(output_spec, "model_fields", {})
    if list(fields) != ["root"]:
        return None
    return TypeAdapter(fields["root"].annotation)


async def read_body(receive: Any) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def answer(api: Any, body: bytes, path: str, as_list: TypeAdapter | None = None) -> tuple[int, bytes]:
    """(status, JSON body) as BentoML's api_endpoint_wrapper would answer; a list answer through
    `as_list` when given."""
    try:
        request = api.input_spec.model_validate_json(body or b"{}")
        arguments = {name: getattr(request, name) for name in type(request).model_fields}
        result = await api.func(bentoml.get_current_service(), **arguments)
        if isinstance(result, BaseModel):
            return 200, result.model_dump_json().encode()
        if as_list is not None:
            return 200, as_list.dump_json(result)
        return 200, api.output_spec(result).model_dump_json().encode()  # BentoML's root model
    except ValidationError as error:
        return 400, json_body({"error": f"{error.error_count()} validation error for {error.title}",
                               "detail": error.errors(include_context=False, include_input=False)})
    except BentoMLException as error:
        status = error.error_code.value
        log.error("Exception on %s [POST]", path, exc_info=True)
        if status >= 500:
            return status, INTERNAL_ERROR
        return status, json_body([{"error": str(error)}])
    except Exception:
        log.error("Exception on %s [POST]", path, exc_info=True)
        return 500, INTERNAL_ERROR
