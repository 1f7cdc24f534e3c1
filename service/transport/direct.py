"""DirectEndpoints: the JSON endpoints answered without BentoML's route.

BentoML's route for an API (routing, request wrapper, dependency injection, a per-call
inspect.signature, its serde) cost about a quarter of a worker's time per request under load
(docs/transport.md). This calls the same method on the same service instance with the same
validation, statuses and error bodies as BentoML's `api_endpoint_wrapper`, and stays inside
BentoML's middleware (metrics, access log, timeout), so /metrics and the HTTP contract do not
change. A breakpoint in BentoML's api_endpoint_wrapper is therefore never hit for these paths.

Before it reads a body it asks `admit(endpoint)`, which raises Overloaded when the endpoint's
model has no room: a shed request costs neither parsing nor encoding. `EarlyShedding` asks the
same question earlier still, from the HTTP protocol once a request's headers are in (before
BentoML's middleware: metrics, tracing, the timeout, our error counting), so that a flood of
requests that will be refused costs the worker as little as possible.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, TypeAdapter, ValidationError

from service import metrics
from service.errors import RETRY_AFTER_S, Overloaded, count, shed_log

log = logging.getLogger(__name__)

JSON = b"application/json"


def json_body(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse (BentoML's error answers) renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


INTERNAL_ERROR = json_body({"error": "An unexpected error has occurred, please check the server log."})
RETRY_AFTER = (b"retry-after", str(RETRY_AFTER_S).encode())


class DirectEndpoints:
    """Answers POSTs to `apis` (path -> BentoML APIMethod) itself; the rest goes on to `app`."""

    def __init__(self, app: Any, apis: Mapping[str, Any], server_header: str,
                 admit: Callable[[str], None] = lambda endpoint: None):
        self.app = app
        self.apis = apis
        self.admit = admit
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
        headers = self.headers
        try:
            self.admit(path.removeprefix("/"))
        except Overloaded as error:
            status, payload, headers = overloaded(error, path, headers)
        else:
            body = await read_body(receive)
            if body is None:
                return  # the client went away
            status, payload, headers = await answer(api, body, path, self.list_answers[path], headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


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


Headers = list[tuple[bytes, bytes]]


def overloaded(error: Overloaded, path: str, headers: Headers) -> tuple[int, bytes, Headers]:
    shed_log.warning("shed a request to %s: %s", path, error)
    return error.error_code.value, json_body([{"error": str(error)}]), [*headers, RETRY_AFTER]


async def answer(api: Any, body: bytes, path: str, as_list: TypeAdapter | None = None,
                 headers: Headers = ()) -> tuple[int, bytes, Headers]:
    """(status, JSON body, headers) as BentoML's api_endpoint_wrapper would answer, with
    `headers` added; a list answer through `as_list` when given."""
    headers = list(headers)
    try:
        request = api.input_spec.model_validate_json(body or b"{}")
        arguments = {name: getattr(request, name) for name in type(request).model_fields}
        result = await api.func(bentoml.get_current_service(), **arguments)
        if isinstance(result, BaseModel):
            return 200, result.model_dump_json().encode(), headers
        if as_list is not None:
            return 200, as_list.dump_json(result), headers
        return 200, api.output_spec(result).model_dump_json().encode(), headers  # BentoML's root model
    except ValidationError as error:
        return 400, json_body({"error": f"{error.error_count()} validation error for {error.title}",
                               "detail": error.errors(include_context=False, include_input=False)}), headers
    except Overloaded as error:
        return overloaded(error, path, headers)
    except BentoMLException as error:
        status = error.error_code.value
        if status >= 500:
            log.error("Exception on %s [POST]", path, exc_info=True)
            return status, INTERNAL_ERROR, headers
        return status, json_body([{"error": str(error)}]), headers
    except Exception:
        log.error("Exception on %s [POST]", path, exc_info=True)
        return 500, INTERNAL_ERROR, headers


HOLD_S = 0.25  # how long a request may wait for room in a full queue before its 429


class EarlyShedding:
    """Called by the HTTP protocol (service.transport.limits) when a request's headers are in:
    for a POST to one of `endpoints` whose model has no room, an ASGI app run instead of the
    service's whole middleware stack; else None. That app waits up to HOLD_S in line for the
    queue to make room (service.room: held requests wake oldest first, one per request that left
    the queue) and then hands the request to the service (`app`), else it answers 429 with
    Retry-After. The wait costs nothing but a timer, and it keeps a
    client that asks again at once from costing the worker a refusal every millisecond: with
    refusals at their cheapest, a 64-text /sentiment flood still spent a third of the worker's
    CPU on them (reports/reliability.md).

    It counts the request in rnnserve_errors_total{kind="overloaded"} itself (ErrorCounting is
    one of the layers it skips), and leaves a request without the right bearer token (when one
    is set) to the stack, so that it still gets its 401.
    """

    def __init__(self, endpoints: Mapping[str, str], admit: Callable[[str], None], server_header: str,
                 token: str = ""):
        self.endpoints = {path.encode(): endpoint for path, endpoint in endpoints.items()}
        for endpoint in set(endpoints.values()):  # exported at 0 from the start, for rates and alerts
            metrics.shed_before_body.labels(endpoint)
        self.admit = admit
        self.expected = f"Bearer {token}".encode() if token else b""
        self.headers = [(b"content-type", JSON), (b"server", server_header.encode()), RETRY_AFTER]

    def __call__(self, method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]],
                 app: Any = None) -> Any:
        endpoint = self.endpoints.get(path)
        if endpoint is None or method != b"POST":
            return None
        if self.expected:
            given = next((value for name, value in headers if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                return None
        try:
            self.admit(endpoint)
        except Overloaded as error:
            return self._hold_or_refuse(endpoint, error, app)
        return None

    def _hold_or_refuse(self, endpoint: str, error: Overloaded, app: Any) -> Any:
        async def hold_or_refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
            refusal = error
            if app is not None and refusal.room is not None:
                refusal = await self._wait_for_room(endpoint, refusal)
                if refusal is None:
                    await app(scope, receive, send)
                    return
            shed_log.warning("shed a request to /%s: %s", endpoint, refusal)
            count(endpoint, "overloaded")
            metrics.shed_before_body.labels(endpoint).inc()  # BentoML's request counter never sees it
            payload = json_body([{"error": str(refusal)}])
            await send({"type": "http.response.start", "status": refusal.error_code.value,
                        "headers": [*self.headers, (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})

        return hold_or_refuse

    async def _wait_for_room(self, endpoint: str, error: Overloaded) -> Overloaded | None:
        """None once `endpoint` admits a request within HOLD_S, else the last refusal."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_S
        woken = False
        while error.room is not None and (remaining := deadline - loop.time()) > 0:
            # woken before but refused (the room went to a request that was not held): keep the turn
            if not await error.room.wait(remaining, first=woken):
                break
            try:
                self.admit(endpoint)
                return None
            except Overloaded as again:
                error, woken = again, True
        return error


class JsonBodies:
    """ASGI middleware: a POST to one of `paths` is read as JSON whatever its Content-Type.

    `curl -d` sends form encoding by default, which BentoML's route would parse as a form and
    answer with a confusing "field required"; the endpoints take only JSON. (DirectEndpoints
    reads its bodies as JSON anyway: this serves the paths BentoML still routes.)
    """

    def __init__(self, app: Any, paths: set[str]):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope.get("path") in self.paths:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", JSON)]}
        await self.app(scope, receive, send)
