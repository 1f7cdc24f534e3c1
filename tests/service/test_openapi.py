"""service.openapi: the document is valid OpenAPI 3.0 and declares the error bodies really sent.

Here on the document service.openapi builds from the service class, as /docs.json serves it
(built in a subprocess: importing service.app installs the transport's process-wide patches);
tests/service/test_app_generation.py checks the one a real server serves, and the bodies it sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

from openapi_spec_validator import validate
from pydantic import BaseModel, Field

from service.openapi import to_openapi_30

REPO_ROOT = Path(__file__).resolve().parents[2]


class Draft2020(BaseModel):
    """What pydantic writes and OpenAPI 3.0 does not allow."""

    positive: float = Field(1.0, gt=0, lt=10)
    maybe: int | None = Field(None, ge=0)
    fixed: Literal["only"] = "only"


def minimal_document(schema: dict) -> dict:
    return {"openapi": "3.0.2", "info": {"title": "t", "version": "1"}, "paths": {},
            "components": {"schemas": {"Thing": schema}}}


def test_draft_2020_schemas_become_openapi_30():
    schema = to_openapi_30(Draft2020.model_json_schema())
    properties = schema["properties"]
    assert properties["positive"] | {"default": 1.0} == {
        "default": 1.0, "title": "Positive", "type": "number",
        "minimum": 0, "exclusiveMinimum": True, "maximum": 10, "exclusiveMaximum": True}
    assert properties["maybe"]["type"] == "integer" and properties["maybe"]["nullable"] is True
    assert properties["maybe"]["minimum"] == 0 and "anyOf" not in properties["maybe"]
    assert properties["fixed"]["enum"] == ["only"] and "const" not in properties["fixed"]
    validate(minimal_document(schema))


def test_the_services_document_is_valid_for_the_version_it_declares():
    code = ("import json, sys, service.app, service.openapi as o; "
            "json.dump(o.document(service.app.RNNServe), sys.stdout)")
    spec = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True, cwd=REPO_ROOT).stdout)
    assert spec["openapi"] == "3.0.2"
    validate(spec)
    responses = spec["paths"]["/generate"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "408", "409", "410", "413", "429", "431", "500",
                              "503", "504"}
    assert "Retry-After" in responses["429"]["headers"]
    assert "409" not in spec["paths"]["/translate"]["post"]["responses"]  # sessions: generation only
    assert set(spec["paths"]["/livez"]["get"]["responses"]) == {"200", "401", "408", "413", "431", "503"}
    stream = spec["paths"]["/generate_stream"]["post"]["responses"]["200"]
    assert "text/event-stream" in stream["content"] and "event: end" in stream["description"]
    assert "event: state" in stream["description"]
    for path in ("/generate", "/translate"):  # every numeric field states its range
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for name, field in body["properties"].items():
            if field.get("type") in ("integer", "number"):
                low, high = field["minimum"], field["maximum"]
                stated = f"{low}..{high}" if field["type"] == "integer" else f"{low:g}..{high:g}"
                assert stated in field["description"], (path, name)


def test_the_error_schemas_match_the_bodies_the_service_builds():
    from openapi_schema_validator import OAS30Validator

    from service.auth import UNAUTHORIZED
    from service.errors import Overloaded
    from service.openapi import ERROR_SCHEMAS
    from service.transport.direct import INTERNAL_ERROR, overloaded
    from service.transport.limits import raw_answer

    def check(schema: str, body: bytes) -> None:
        OAS30Validator(ERROR_SCHEMAS[schema]).validate(json.loads(body))

    status, body, headers = overloaded(Overloaded("queue full"), "/generate", [])
    assert status == 429 and (b"retry-after", b"1") in headers
    check("Errors", body)
    check("Error", INTERNAL_ERROR)
    check("Error", UNAUTHORIZED)
    for status in (408, 413, 431, 503):
        check("Error", raw_answer(status, "a limit").split(b"\r\n\r\n", 1)[1])
