"""The OpenAPI document at /docs.json: valid for the version it declares, with the error bodies
the service really sends.

BentoML 1.4 declares OpenAPI 3.0.2 but fills the document with pydantic's JSON Schema (draft
2020-12, the dialect of OpenAPI 3.1): a numeric `exclusiveMinimum`, `{"type": "null"}` in an
`anyOf`, `const`, none of which 3.0 allows, so strict tools (schemathesis, code generators)
refuse it. It also declares every error as `{"error": str, "detail": str}` and a 404 the model
endpoints never send, and none of the statuses of service/transport. `document` rewrites the
schemas into 3.0's dialect and declares the answers docs/transport.md lists; `ServedDocument`
serves it in place of BentoML's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from service.errors import RETRY_AFTER_S

OPENAPI_VERSION = "3.0.2"
DOCUMENT_PATH = "/docs.json"
SCHEMAS = "#/components/schemas/"

# The bodies of failed requests, as they are sent (service.transport.direct, BentoML's route,
# service.transport.limits, service.auth).
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ValidationFailed": {
        "type": "object", "required": ["error", "detail"],
        "description": "The request body was rejected by its schema: one item per problem, `loc` "
                       "naming the field and `msg` the limit.",
        "properties": {
            "error": {"type": "string", "example": "1 validation error for GenerateRequest"},
            "detail": {"type": "array", "items": {
                "type": "object", "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string", "example": "less_than_equal"},
                    "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string", "example": "Input should be less than or equal to 2000"},
                    "url": {"type": "string"},
                }}},
        }},
    "Errors": {
        "type": "array", "minItems": 1, "maxItems": 1,
        "description": "A request refused by the service's own checks (BentoML's error list).",
        "items": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
    "Error": {
        "type": "object", "required": ["error"],
        "description": "A request the server could not answer; the reason in one line.",
        "properties": {"error": {"type": "string"}}},
}

RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "integer", "example": RETRY_AFTER_S}}}


def _json(schema: str, description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {
        "application/json": {"schema": {"$ref": SCHEMAS + schema}}}}
    if headers:
        response["headers"] = dict(headers)
    return response


# Any path: the connection limits (service/transport/limits.py) and the bearer token.
ANY_PATH_ERRORS = {
    "401": _json("Error", "RNNSERVE_AUTH_TOKEN is set and the request lacks `Authorization: Bearer "
                          "<token>` (paths RNNSERVE_AUTH_PUBLIC names are open)"),
    "408": _json("Error", "headers (RNNSERVE_HEADER_TIMEOUT_S) or body (RNNSERVE_BODY_TIMEOUT_S) "
                          "not received in time; the connection closes"),
    "413": _json("Error", "body over RNNSERVE_MAX_BODY_BYTES; the connection closes"),
    "431": _json("Error", "headers over RNNSERVE_MAX_HEADER_BYTES bytes or RNNSERVE_MAX_HEADERS "
                          "in number; the connection closes"),
    "503": _json("Error", "this worker holds RNNSERVE_MAX_CONNECTIONS connections; the connection "
                          "closes", RETRY_AFTER),
}
# The model endpoints besides.
MODEL_ERRORS = {
    "400": {"description": "the body is not valid JSON for the schema (ValidationFailed), an "
                           "option the model cannot honour, or a `state` not issued by this "
                           "service or altered (Errors)",
            "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": SCHEMAS + "ValidationFailed"}, {"$ref": SCHEMAS + "Errors"}]}}}},
    "429": _json("Errors", "the model's queue is full (RNNSERVE_MAX_QUEUE), or a generation could "
                           "not finish before RNNSERVE_TIMEOUT_S; retry later", RETRY_AFTER),
    "500": _json("Error", "a fault of the server's own; details in its log"),
    "504": _json("Error", "not answered within RNNSERVE_TIMEOUT_S"),
}

# /generate and /generate_stream besides: a `state` that cannot be continued (service.sessions).
STATE_ERRORS = {
    "409": _json("Errors", "`state` was made by another model (both tags named): start a new session"),
    "410": _json("Errors", "`state` is older than RNNSERVE_STATE_TTL_S: start a new session"),
}
SESSION_PATHS = ("/generate", "/generate_stream")

STREAM_DESCRIPTION = (
    "Server-Sent Events: the text in events of the default type, one `data:` line per line of a "
    "piece; with return_state, `event: state` with data {\"state\": token}; then `event: end` "
    "with data {\"tokens\": n}, or, when generation fails after the "
    "first event, `event: error` with data {\"error\": reason, \"status\": code}. A request "
    "refused before its first event gets its status and JSON body instead.")


def to_openapi_30(schema: Any) -> Any:
    """A JSON Schema (draft 2020-12, as pydantic writes it) in OpenAPI 3.0's dialect.

    Numeric exclusiveMinimum/Maximum -> minimum/maximum with the boolean flag; `anyOf` of one
    schema and {"type": "null"} -> that schema, nullable; a default of null -> nullable;
    `const` -> a one-value `enum`; `examples` -> `example`.
    """
    if isinstance(schema, list):
        return [to_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: to_openapi_30(value) for key, value in schema.items()}
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        value = schema.get(flag)
        if isinstance(value, int | float) and not isinstance(value, bool):
            schema[bound] = value
            schema[flag] = True
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        others = [option for option in options if option != {"type": "null"}]
        del schema["anyOf"]
        if len(others) == 1:
            schema = {**others[0], **schema}
        else:
            schema["anyOf"] = others
        schema["nullable"] = True
    if "default" in schema and schema["default"] is None:
        schema["nullable"] = True
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "examples" in schema and isinstance(schema["examples"], list):
        examples = schema.pop("examples")
        if examples:
            schema["example"] = examples[0]
    return schema


def document(service: Any) -> dict[str, Any]:
    """The OpenAPI document of `service` (a BentoML service), as JSON would carry it."""
    spec = json.loads(json.dumps(service.openapi_spec.asdict()))  # status codes as strings
    spec["openapi"] = OPENAPI_VERSION
    spec["components"] = to_openapi_30(spec.get("components", {}))
    schemas = spec["components"].setdefault("schemas", {})
    for unused in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(unused, None)
    schemas.update(ERROR_SCHEMAS)
    model_paths = {api.route for api in service.apis.values()}
    for path, item in spec["paths"].items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = {code: answer for code, answer in operation["responses"].items()
                         if code.startswith("2")}
            responses.update(ANY_PATH_ERRORS)
            if path in model_paths:
                responses.update(MODEL_ERRORS)
            if path in SESSION_PATHS:
                responses.update(STATE_ERRORS)
            operation["responses"] = dict(sorted(responses.items()))
            for key in ("requestBody", "parameters"):
                if key in operation:
                    operation[key] = to_openapi_30(operation[key])
            operation["responses"] = to_openapi_30(operation["responses"])
            stream = operation["responses"].get("200", {}).get("content", {}).get("text/event-stream")
            if stream is not None:
                operation["responses"]["200"]["description"] = STREAM_DESCRIPTION
    return spec


class ServedDocument:
    """ASGI middleware: GET /docs.json answers `document()` (built once, at the first request)."""

    def __init__(self, app: Any, document: Callable[[], dict[str, Any]]):
        self.app = app
        self._document = document
        self._body: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCUMENT_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._body is None:
            self._body = json.dumps(self._document(), ensure_ascii=False).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(self._body)).encode())]})
        await send({"type": "http.response.body", "body": self._body})
