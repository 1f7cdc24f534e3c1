"""service.transport.direct: DirectEndpoints (BentoML's statuses and bodies, without BentoML's
route), behind service.errors.ErrorCounting, and service.transport.timeout: the fixed
TimeoutMiddleware (504 as BentoML's, without leaving a timer behind per request)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import bentoml
import pytest
from _bentoml_sdk.io_models import ensure_io_descriptor
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from pydantic import BaseModel, ConfigDict

from service import metrics
from service.errors import ErrorCounting, Overloaded
from service.room import Room
from service.transport.direct import DirectEndpoints, EarlyShedding
from service.transport.timeout import fix_bentoml_timeout_middleware


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str
    times: int = 1


class EchoResult(BaseModel):
    text: str


# what BentoML makes of an API that returns list[EchoResult]
EchoListResult = ensure_io_descriptor(list[EchoResult])


async def echo(service, text: str, times: int):
    if text == "slow":
        await asyncio.sleep(10)
    if text == "full":
        raise Overloaded("echo: 3 items queued, limit 3; retry later")
    if text == "bug":
        raise RuntimeError("a bug")
    if times > 1:
        return [EchoResult(text=text)] * times
    return EchoResult(text=text)


def call(app, method: str, path: str, body: bytes) -> tuple[int, dict, bytes]:
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


FULL = {"now": False}  # whether the echo model admits no more requests


def admit(endpoint: str) -> None:
    if FULL["now"]:
        raise Overloaded(f"{endpoint}: 9 items queued, limit 9; retry later")


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setattr(bentoml, "get_current_service", lambda: object())
    monkeypatch.setitem(FULL, "now", False)
    api = SimpleNamespace(input_spec=EchoRequest, output_spec=EchoListResult, func=echo)

    async def bentoml_route(scope, receive, send):
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b"from BentoML"})

    direct = DirectEndpoints(bentoml_route, apis={"/echo": api}, server_header="BentoML Service/Test",
                             admit=admit)
    return ErrorCounting(direct, endpoints={"/echo": "echo"})


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


def test_overload_is_429_with_retry_after_and_a_bug_is_500_without_details(app, caplog):
    status, headers, body = call(app, "POST", "/echo", b'{"text": "full"}')
    assert (status, json.loads(body)) == (429, [{"error": "echo: 3 items queued, limit 3; retry later"}])
    assert headers[b"retry-after"] == b"1"
    assert not any(record.exc_info for record in caplog.records)  # shedding logs no traceback
    status, _, body = call(app, "POST", "/echo", b'{"text": "bug"}')
    assert status == 500
    assert json.loads(body) == {"error": "An unexpected error has occurred, please check the server log."}


def test_a_model_without_room_sheds_the_request_before_reading_its_body(app):
    FULL["now"] = True
    read = []

    async def receive() -> dict:
        read.append(1)
        return {"type": "http.request", "body": b'{"text": "hi"}', "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/echo", "headers": []}, receive, send))
    assert sent[0]["status"] == 429 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == [{"error": "echo: 9 items queued, limit 9; retry later"}]
    assert read == []


def test_a_list_answer_is_the_json_bentomls_root_model_gives(app):
    answers = [EchoResult(text="hé \u2603 \"q\"")] * 3
    _, _, body = call(app, "POST", "/echo", b'{"text": "h\\u00e9 \\u2603 \\"q\\"", "times": 3}')
    assert json.loads(body) == json.loads(EchoListResult(answers).model_dump_json())


def error_count(endpoint: str, kind: str) -> float:
    return metrics.errors.labels(endpoint, kind)._value.get()


def test_failed_requests_are_counted_by_endpoint_and_kind(app):
    before = {kind: error_count("echo", kind) for kind in ("validation", "overloaded", "internal")}
    call(app, "POST", "/echo", b'{"text": "hi"}')
    call(app, "POST", "/echo", b'{"text": 1}')
    call(app, "POST", "/echo", b'{"text": "full"}')
    call(app, "POST", "/echo", b'{"text": "bug"}')
    call(app, "POST", "/echo", b'{"text": "bug"}')
    grown = {kind: error_count("echo", kind) - count for kind, count in before.items()}
    assert grown == {"validation": 1, "overloaded": 1, "internal": 2}


def test_a_request_cancelled_by_the_timeout_counts_as_a_timeout(app):
    before = error_count("echo", "timeout")
    sent, _ = through_timeout(app, timeout=0.05, body=b'{"text": "slow"}', path="/echo")
    assert sent[0]["status"] == 504
    assert error_count("echo", "timeout") - before == 1


def test_other_methods_and_paths_go_to_bentoml(app):
    assert call(app, "GET", "/echo", b"")[2] == b"from BentoML"
    assert call(app, "POST", "/other", b"{}")[2] == b"from BentoML"


# -- the timeout middleware ----------------------------------------------------------------------

def through_timeout(app, timeout: float, body: bytes = b"",
                    path: str = "/x") -> tuple[list[dict], list[asyncio.TimerHandle]]:
    """The messages `app` sent through BentoML's TimeoutMiddleware (fixed), and the timers the
    middleware scheduled, as the request left them."""
    fix_bentoml_timeout_middleware()
    sent: list[dict] = []
    timers: list[asyncio.TimerHandle] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at  # asyncio's call_later and asyncio.timeout both schedule through it

        def recording_call_at(*args, **kwargs):
            timers.append(call_at(*args, **kwargs))
            return timers[-1]

        loop.call_at = recording_call_at
        scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await TimeoutMiddleware(app, timeout=timeout)(scope, receive, send)

    asyncio.run(asyncio.wait_for(main(), 5))
    return sent, timers


async def answer_ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_finished_request_leaves_no_timer_scheduled():
    # BentoML's own left each request's 60 s timer (and its future) alive: a leak that made
    # garbage collections ever longer under load
    sent, timers = through_timeout(answer_ok, timeout=60)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert len(timers) == 1 and timers[0].cancelled()


def test_no_answer_started_within_the_timeout_is_504_and_the_app_is_cancelled():
    cancelled = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, _ = through_timeout(slow, timeout=0.05)
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}
    assert cancelled == [True]


def test_an_answer_started_in_time_may_finish_after_the_timeout():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"late but whole"})

    sent, _ = through_timeout(streaming, timeout=0.05)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"late but whole"


def test_an_app_that_ends_without_answering_releases_the_request_at_once():
    async def gone(scope, receive, send):
        return  # as DirectEndpoints does when the client went away

    async def broken(scope, receive, send):
        raise RuntimeError("a bug before the first message")

    # with a 60 s timeout, through_timeout's 5 s limit fails unless both end at once
    sent, timers = through_timeout(gone, timeout=60)
    assert sent == [] and timers[0].cancelled()
    with pytest.raises(RuntimeError, match="a bug before the first message"):
        through_timeout(broken, timeout=60)


def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline():
    async def times_out_itself(scope, receive, send):
        raise TimeoutError("the app's own")

    with pytest.raises(TimeoutError, match="the app's own"):
        through_timeout(times_out_itself, timeout=60)


def test_early_shedding_answers_a_full_models_post_and_lets_everything_else_through(monkeypatch):
    monkeypatch.setitem(FULL, "now", True)
    shedding = EarlyShedding({"/echo": "echo"}, admit, server_header="BentoML Service/Test")
    assert shedding(b"GET", b"/echo", []) is None
    assert shedding(b"POST", b"/other", []) is None
    before = metrics.errors.labels("echo", "overloaded")._value.get()
    shed_before = metrics.shed_before_body.labels("echo")._value.get()
    refuse = shedding(b"POST", b"/echo", [])
    status, headers, body = call(refuse, "POST", "/echo", b'{"text": "hi"}')
    assert metrics.errors.labels("echo", "overloaded")._value.get() == before + 1
    assert metrics.shed_before_body.labels("echo")._value.get() == shed_before + 1
    assert (status, json.loads(body)) == (429, [{"error": "echo: 9 items queued, limit 9; retry later"}])
    assert headers[b"retry-after"] == b"1" and int(headers[b"content-length"]) == len(body)
    FULL["now"] = False
    assert shedding(b"POST", b"/echo", []) is None  # room again: the service answers


def test_early_shedding_leaves_a_request_without_the_token_to_get_its_401(monkeypatch):
    monkeypatch.setitem(FULL, "now", True)
    shedding = EarlyShedding({"/echo": "echo"}, admit, server_header="S", token="t0ken")
    assert shedding(b"POST", b"/echo", []) is None
    assert shedding(b"POST", b"/echo", [(b"authorization", b"Bearer wrong")]) is None
    assert shedding(b"POST", b"/echo", [(b"authorization", b"Bearer t0ken")]) is not None


def test_early_shedding_holds_a_request_until_the_queue_makes_room_then_hands_it_on():
    room = Room()
    full = {"now": True}

    def admit_with_room(endpoint: str) -> None:
        if full["now"]:
            raise Overloaded(f"{endpoint}: full", room=room)

    async def service(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    shedding = EarlyShedding({"/echo": "echo"}, admit_with_room, server_header="S")
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def scenario() -> None:
        hold = shedding(b"POST", b"/echo", [], service)
        task = asyncio.create_task(hold({"type": "http", "path": "/echo"}, None, send))
        await asyncio.sleep(0)
        assert not task.done() and sent == []  # waiting for room, nothing answered
        assert room.waiting == 1
        full["now"] = False
        room.free(1)  # the model took a request's items into a batch
        await task

    asyncio.run(scenario())
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"served"


def test_early_shedding_refuses_after_holding_when_no_room_comes(monkeypatch):
    monkeypatch.setattr("service.transport.direct.HOLD_S", 0.01)
    room = Room()

    def never_room(endpoint: str) -> None:
        raise Overloaded(f"{endpoint}: still full", room=room)

    async def service(scope, receive, send):
        raise AssertionError("a refused request must not reach the service")

    hold = EarlyShedding({"/echo": "echo"}, never_room, server_header="S")(b"POST", b"/echo", [], service)
    status, headers, body = call(hold, "POST", "/echo", b"{}")
    assert (status, json.loads(body)) == (429, [{"error": "echo: still full"}])
    assert headers[b"retry-after"] == b"1"
