"""service.sse without HTTP: what a standard SSE client reads of /generate_stream's events.

The events are parsed by httpx-sse, as a client would parse them; the generation is a stand-in
that can fail on cue. (tests/service/test_app_generation.py reads a real server's stream.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from bentoml.exceptions import InvalidArgument
from httpx_sse import EventSource, ServerSentEvent

from service import metrics, sse
from service.errors import Overloaded


def events(body: str) -> list[ServerSentEvent]:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=body.encode())
    return list(EventSource(response).iter_sse())


@pytest.mark.parametrize("text", ["plain", "two\nlines", "\n", "ends with a newline\n", "\n\nx\n\n",
                                  " leading space", "data: inside", ""])
def test_a_message_reads_back_as_its_text(text):
    [event] = events(sse.message(text))
    assert (event.event, event.data) == ("message", text)


def test_a_carriage_return_arrives_as_a_newline():
    # SSE reads \r, \n and \r\n alike as line ends: the text can carry no bare \r
    assert [e.data for e in events(sse.message("a\rb\r\nc"))] == ["a\nb\nc"]


def test_end_and_error_are_named_events_with_json_data():
    parsed = events(sse.message("hi") + sse.end(2) + sse.error("boom ✓", 500))
    assert [(e.event, e.data) for e in parsed[:1]] == [("message", "hi")]
    assert (parsed[1].event, parsed[1].json()) == ("end", {"tokens": 2})
    assert (parsed[2].event, parsed[2].json()) == ("error", {"error": "boom ✓", "status": 500})


# -- event_stream on a stand-in generation --------------------------------------------------


async def generation(pieces: list[str], error: Exception | None = None
                     ) -> AsyncIterator[tuple[list[str], list[dict]]]:
    """Yields `pieces` as the generation loop does (lists of characters, with their log-probability
    entries: none here), then raises `error`."""
    for piece in pieces:
        yield list(piece), []
    if error is not None:
        raise error


def run_stream(pieces: list[str], error: Exception | None = None) -> tuple[str, SimpleNamespace]:
    """The body event_stream yields, and the response it left."""
    response = SimpleNamespace(status_code=200, headers={})

    async def collect() -> str:
        return "".join([event async for event in sse.event_stream(
            generation(pieces, error), response, "generate_stream")])

    return asyncio.run(collect()), response


def stream_errors(kind: str) -> float:
    return metrics.errors.labels("generate_stream", kind)._value.get()


def test_a_complete_stream_is_its_pieces_then_end():
    body, response = run_stream(["ab\n", "c\nd", "e"])
    parsed = events(body)
    assert [e.data for e in parsed if e.event == "message"] == ["ab\n", "c\nd", "e"]
    assert (parsed[-1].event, parsed[-1].json()) == ("end", {"tokens": 7})
    assert response.status_code == 200


def test_a_failure_after_the_first_event_ends_with_an_error_event_never_end():
    before = stream_errors("internal")
    body, _ = run_stream(["ab", "cd"], RuntimeError("secret internals"))
    parsed = events(body)
    assert [e.event for e in parsed] == ["message", "message", "error"]
    assert parsed[-1].json() == {"error": sse.INTERNAL_REASON, "status": 500}  # details stay in the log
    assert stream_errors("internal") == before + 1


def test_an_overload_before_the_first_event_keeps_its_status_and_retry_after():
    before = stream_errors("overloaded")
    body, response = run_stream([], Overloaded("char-generator: too long for the deadline"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(body) == [{"error": "char-generator: too long for the deadline"}]
    assert stream_errors("overloaded") == before  # counted once, from its status (ErrorCounting)


def test_a_server_fault_before_the_first_event_is_left_to_bentoml_as_a_500():
    with pytest.raises(RuntimeError, match="no model"):
        run_stream([], RuntimeError("no model"))


def test_a_client_error_before_the_first_event_is_a_400_with_the_reason():
    body, response = run_stream([], InvalidArgument("temperature must be a finite number >= 0"))
    assert response.status_code == 400 and "retry-after" not in response.headers
    assert json.loads(body) == [{"error": "temperature must be a finite number >= 0"}]
