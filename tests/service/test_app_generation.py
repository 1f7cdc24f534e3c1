"""/generate and /generate_stream over real HTTP: isolation, the event stream, the OpenAPI document.

One `bentoml serve` for the module, with the tiny random models. The stream is read by httpx-sse,
a standard SSE client; the document is checked by openapi-spec-validator as the server serves it,
and the bodies of its failed requests against the schemas it declares for them.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from httpx_sse import connect_sse
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]


def read_stream(client: httpx.Client, body: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """The message events' data, and every event as (type, data), as an SSE client reads them."""
    with connect_sse(client, "POST", "/generate_stream", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        parsed = [(event.event, event.data) for event in source.iter_sse()]
    return [data for kind, data in parsed if kind == "message"], parsed


def test_the_stream_is_server_sent_events_whose_text_is_generates(client):
    body = {"prompt": "Once", "max_tokens": 2000, "seed": 3}
    pieces, parsed = read_stream(client, body)
    text = client.post("/generate", json=body).json()["text"]
    assert "".join(pieces) == text
    assert len(pieces) > 1  # sent as generated, not at the end
    assert any("\n" in piece.strip("\n") for piece in pieces)  # a newline inside one event
    assert parsed[-1][0] == "end" and json.loads(parsed[-1][1]) == {"tokens": 2000}
    assert [kind for kind, _ in parsed[:-1]] == ["message"] * len(pieces)


def test_every_line_of_the_stream_is_sse_framing(client):
    with client.stream("POST", "/generate_stream", json={"prompt": "a", "max_tokens": 300,
                                                          "seed": 8}) as response:
        lines = list(response.iter_lines())
    assert lines and all(line == "" or line.startswith(("data: ", "event: ")) for line in lines)


def test_a_stream_refused_before_its_first_event_keeps_its_status(client):
    response = client.post("/generate_stream", json={"prompt": "a", "max_tokens": 2001})
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["max_tokens"]


# -- one request cannot hurt another ------------------------------------------------------------------

GOOD = [("/generate", {"prompt": f"Line {i}: ", "max_tokens": 300 + 50 * (i % 3), "seed": i,
                       "temperature": 0.5 + 0.2 * (i % 4), "top_k": i % 3 * 5}) for i in range(6)]
GOOD += [("/generate_stream", {"prompt": f"Stream {i}", "max_tokens": 400, "seed": 10 + i})
         for i in range(3)]
# the values that used to fail every sequence in the batch, and their neighbours past the limits
EXTREME = [{"temperature": 0}, {"temperature": 5e-324}, {"temperature": 1e-30, "top_k": 1},
           {"top_k": 2**31 - 1}, {"top_k": 70}, {"seed": 0}, {"seed": 2**63 - 1},
           {"max_tokens": 1}, {"max_tokens": 2000, "temperature": 2}]
REFUSED = [({"temperature": float("nan")}, "temperature"), ({"temperature": 2.0001}, "temperature"),
           ({"temperature": -1e-300}, "temperature"), ({"top_k": 2**31}, "top_k"),
           ({"top_k": -1}, "top_k"), ({"seed": 2**63}, "seed"), ({"seed": -1}, "seed"),
           ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 2001}, "max_tokens"),
           ({"max_tokens": 10**30}, "max_tokens")]


def answer(client: httpx.Client, path: str, body: dict) -> tuple[int, str]:
    """(status, text): /generate's text, or the stream's pieces joined, ending in its end event."""
    if path == "/generate":
        response = client.post(path, content=json.dumps(body),
                               headers={"content-type": "application/json"})
        return response.status_code, response.json()["text"] if response.status_code == 200 else response.text
    pieces, parsed = read_stream(client, body)
    return 200, "".join(pieces) + f"|{parsed[-1][0]}"


def test_extreme_and_refused_requests_among_running_generations_change_no_other_answer(server, client):
    alone = [answer(client, path, body) for path, body in GOOD]
    poison = [("/generate", {"prompt": "x", "max_tokens": 50, "seed": 1, **o}) for o in EXTREME]
    poison += [("/generate_stream", {"prompt": "x", "max_tokens": 50, "seed": 1, **o}) for o in EXTREME[:4]]
    refused = [("/generate", {"prompt": "x", **o}) for o, _ in REFUSED]
    requests = GOOD + poison + refused

    def send(request: tuple[str, dict]) -> tuple[int, str]:
        with httpx.Client(base_url=server, timeout=120) as own:
            return answer(own, *request)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        loaded = list(pool.map(send, requests))
    assert loaded[:len(GOOD)] == alone
    assert [status for status, _ in loaded[len(GOOD):len(GOOD) + len(poison)]] == [200] * len(poison)
    for (status, text), (_, field) in zip(loaded[len(GOOD) + len(poison):], REFUSED, strict=True):
        assert status == 400 and f'"loc":["{field}"]' in text
    # a temperature of 0, or one too small to divide by, takes the likeliest character
    greedy = {text for (status, text) in loaded[len(GOOD):len(GOOD) + 3]}
    assert len(greedy) == 1
    assert client.get("/readyz").status_code == 200


def test_translation_options_at_their_bounds_are_served(client):
    # the other numeric fields of the contract, at both ends of their ranges
    for body in ({"texts": ["ein mann fährt " * 30] * 4, "beam_size": 8, "max_length": 256},
                 {"texts": ["x", ""], "beam_size": 8, "max_length": 1, "return_attention": True},
                 {"texts": ["\u0000\uffff ünï ✓"], "beam_size": 1, "max_length": 1, "source": "ko"}):
        response = client.post("/translate", json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()) == len(body["texts"])


# -- the OpenAPI document as served -----------------------------------------------------------------


def test_the_served_openapi_document_is_valid_and_declares_the_bodies_sent(client):
    spec = client.get("/docs.json").json()
    assert spec["openapi"] == "3.0.2"
    validate(spec)

    def assert_declared(path: str, response: httpx.Response) -> None:
        declared = spec["paths"][path]["post"]["responses"][str(response.status_code)]
        schema = declared["content"]["application/json"]["schema"]
        OAS30Validator({**schema, "components": spec["components"]}).validate(response.json())

    for path, body in [("/generate", {"prompt": "a", "temperature": 3}), ("/sentiment", {"texts": []}),
                       ("/translate", {"texts": ["a"], "beam_size": 9}),
                       ("/generate_stream", {"prompt": 5}), ("/sentiment", "{not json")]:
        content = body if isinstance(body, str) else json.dumps(body)
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert isinstance(response.json()["detail"], list)  # declared an array, sent as one
        assert_declared(path, response)
    ok = client.post("/generate", json={"prompt": "a", "max_tokens": 3})
    OAS30Validator({**spec["paths"]["/generate"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"], "components": spec["components"]}).validate(ok.json())


# -- shedding what cannot finish before the deadline -------------------------------------------------


def test_a_generation_that_cannot_finish_before_the_timeout_is_refused_at_once(tiny_shipped_dir, tmp_path):
    # a million characters take seconds at any step rate; the timeout is one second
    settings = {"RNNSERVE_TIMEOUT_S": "1", "RNNSERVE_MAX_TOKENS": "1000000"}
    with running_server(tiny_shipped_dir, tmp_path, **settings) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        warm = client.post("/generate", json={"prompt": "a", "max_tokens": 200, "seed": 1})
        assert warm.status_code == 200  # the loop has measured its steps
        for path in ("/generate", "/generate_stream"):
            response = client.post(path, json={"prompt": "a", "max_tokens": 1_000_000})
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            [error] = response.json()
            assert "RNNSERVE_TIMEOUT_S" in error["error"]
        short = client.post("/generate", json={"prompt": "a", "max_tokens": 50, "seed": 2})
        assert short.json()["tokens"] == 50
        metrics = client.get("/metrics").text
    for endpoint in ("generate", "generate_stream"):
        assert f'rnnserve_errors_total{{endpoint="{endpoint}",kind="overloaded"}} 1.0' in metrics


# -- shedding what would wait too long --------------------------------------------------------------


def test_a_model_that_would_keep_a_request_waiting_refuses_at_once_and_serves_again_when_free(
        tiny_shipped_dir, tmp_path):
    # one row, held by a generation of a million characters for as long as its client stays: a
    # newcomer would wait seconds for it at any step rate (the timeout is no limit here)
    settings = {"RNNSERVE_MAX_ACTIVE_SEQUENCES": "1", "RNNSERVE_MAX_TOKENS": "1000000",
                "RNNSERVE_TIMEOUT_S": "3600", "RNNSERVE_MAX_QUEUE_WAIT_S": "0.5"}
    body = json.dumps({"prompt": "a", "max_tokens": 1_000_000, "seed": 1}).encode()
    with running_server(tiny_shipped_dir, tmp_path, **settings) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as holder:
            holder.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body))
            # its first character, then a step's: the loop measures its step time as it
            # publishes a step, in the same turn of the event loop
            wait_until(lambda: metric(client, 'rnnserve_generated_tokens_total{endpoint="generate"}') >= 2)
            for path in ("/generate", "/generate_stream"):
                refused = client.post(path, json={"prompt": "b", "max_tokens": 10, "seed": 2})
                assert refused.status_code == 429, refused.text
                assert refused.headers["retry-after"] == "1"
                [error] = refused.json()
                assert "RNNSERVE_MAX_QUEUE_WAIT_S" in error["error"]
        # the holder's client went away: its row is free, and the very next request is served
        left = 'rnnserve_errors_total{endpoint="generate",kind="disconnected"}'
        wait_until(lambda: metric(client, left) >= 1)
        served = client.post("/generate", json={"prompt": "b", "max_tokens": 10, "seed": 2})
        assert served.status_code == 200, served.text
        assert served.json()["tokens"] == 10
        for endpoint in ("generate", "generate_stream"):
            assert metric(client, f'rnnserve_errors_total{{endpoint="{endpoint}",kind="overloaded"}}') == 1


def metric(client: httpx.Client, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with `prefix`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(prefix))


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # polling a condition, not timing anything
