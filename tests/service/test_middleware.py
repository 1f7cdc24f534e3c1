"""service.middleware.DirectEndpoints: BentoML's statuses and bodies, without BentoML's route."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import bentoml
import pytest
from pydantic import BaseModel, ConfigDict

from service.batching import Overloaded
from service.middleware import DirectEndpoints


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str
    times: int = 1


class EchoResult(BaseModel):
    text: str


class EchoListResult:
    """Stands in for BentoML's root model of a list answer."""

    def __init__(self, items: list[EchoResult]):
        self.items = items

    def model_dump_json(self) -> str:
        return json.dumps([item.model_dump() for item in self.items])


async def echo(service, text: str, times: int):
    if text == "full":
        raise Overloaded("echo: 3 items queued, limit 3; retry later")
    if text == "bug":
        raise RuntimeError("a bug")
    if times > 1:
        return [EchoResult(text=text)] * times
    return EchoResult(text=text)


def call(app: DirectEndpoints, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request through `app`."""
    sent: list[dict] = []
    incoming = [{"type": "http.request", "body": body[:3], "more_body": True},
                {"type": "http.request", "body": body[3:], "more_body": False}]

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def app(monkeypatch) -> DirectEndpoints:
    monkeypatch.setattr(bentoml, "get_current_service", lambda: object())
    api = SimpleNamespace(input_spec=EchoRequest, output_spec=EchoListResult, func=echo)

    async def bentoml_route(scope, receive, send):
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b"from BentoML"})

    return DirectEndpoints(bentoml_route, apis={"/echo": api}, server_header="BentoML Service/Test")


def test_answers_with_the_output_model_and_bentomls_headers(app):
    status, headers, body = call(app, "POST", "/echo", b'{"text": "hi"}')
    assert status == 200
    assert json.loads(body) == {"text": "hi"}
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"server"] == b"BentoML Service/Test"
    assert int(headers[b"content-length"]) == len(body)
    status, _, body = call(app, "POST", "/echo", b'{"text": "hi", "times": 2}')
    assert (status, json.loads(body)) == (200, [{"text": "hi"}, {"text": "hi"}])


def test_bad_input_is_400_in_bentomls_validation_format(app):
    status, _, body = call(app, "POST", "/echo", b'{"text": "hi", "times": "2", "extra": 1}')
    answer = json.loads(body)
    assert status == 400
    assert answer["error"] == "2 validation error for EchoRequest"
    assert [e["loc"] for e in answer["detail"]] == [["times"], ["extra"]]
    status, _, body = call(app, "POST", "/echo", b"")
    assert status == 400 and json.loads(body)["detail"][0]["loc"] == ["text"]


def test_overload_is_429_and_a_bug_is_500_without_details(app):
    status, _, body = call(app, "POST", "/echo", b'{"text": "full"}')
    assert (status, json.loads(body)) == (429, [{"error": "echo: 3 items queued, limit 3; retry later"}])
    status, _, body = call(app, "POST", "/echo", b'{"text": "bug"}')
    assert status == 500
    assert json.loads(body) == {"error": "An unexpected error has occurred, please check the server log."}


def test_other_methods_and_paths_go_to_bentoml(app):
    assert call(app, "GET", "/echo", b"")[2] == b"from BentoML"
    assert call(app, "POST", "/other", b"{}")[2] == b"from BentoML"
