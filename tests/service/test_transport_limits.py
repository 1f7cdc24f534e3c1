"""service.transport.limits and service.auth on a real server: every limit answers its status,
names its setting, closes what it must, and leaves other clients served."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

TOKEN = "s3cret-token"
LIMITS = {"RNNSERVE_HEADER_TIMEOUT_S": "1", "RNNSERVE_BODY_TIMEOUT_S": "1",
          "RNNSERVE_MAX_CONNECTIONS": "40", "RNNSERVE_MAX_HEADER_BYTES": "4096",
          "RNNSERVE_MAX_HEADERS": "30", "RNNSERVE_MAX_BODY_BYTES": "100000"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tiny_shipped_dir, tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("limits")
    (folder / "token").write_text(TOKEN + "\n")  # the token as a mounted secret
    with running_server(tiny_shipped_dir, folder, RNNSERVE_AUTH_TOKEN_FILE=str(folder / "token"),
                        **LIMITS) as url:
        yield url


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def exchange(url: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw `data`, read until the server closes: (status, headers, body)."""
    with socket.create_connection(address(url), timeout=timeout) as connection:
        with contextlib.suppress(OSError):  # the server may answer before it has read everything
            connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def served(url: str) -> bool:
    """A new client gets its sentiment. With the module's 1 s header timeout, a test process
    starved of CPU for longer between connecting and sending gets 408, rightly: try again then."""
    for _ in range(3):
        answer = httpx.post(f"{url}/sentiment", json={"texts": ["a good film"]}, headers=AUTH, timeout=30)
        if answer.status_code != 408:
            break
    assert answer.status_code == 200, answer.text
    return answer.json()[0]["label"] in ("negative", "positive")


def assert_limit(status: int, headers: dict, body: bytes, expected: int, setting: str) -> None:
    assert status == expected
    assert headers["connection"] == "close"
    assert setting in json.loads(body)["error"]


def test_the_model_endpoints_need_the_token_and_health_does_not(server):
    answer = httpx.post(f"{server}/sentiment", json={"texts": ["fine"]})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "RNNSERVE_AUTH_TOKEN" in answer.json()["error"]
    wrong = httpx.post(f"{server}/sentiment", json={"texts": ["fine"]},
                       headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert httpx.get(f"{server}/models").status_code == 401
    assert httpx.get(f"{server}/readyz").status_code == 200
    assert httpx.get(f"{server}/metrics").status_code == 200
    assert served(server)


def test_too_many_header_bytes_is_431(server):
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    assert_limit(*exchange(server, request), 431, "RNNSERVE_MAX_HEADER_BYTES")
    assert served(server)


def test_a_header_streamed_without_end_is_431_before_it_is_whole(server):
    request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000  # never ends
    assert_limit(*exchange(server, request), 431, "RNNSERVE_MAX_HEADER_BYTES")


def test_too_many_headers_is_431(server):
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(40))
    assert_limit(*exchange(server, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"),
                 431, "RNNSERVE_MAX_HEADERS")


def test_slow_headers_get_408_at_the_header_timeout(server):
    assert_limit(*exchange(server, b"GET /livez HTTP/1.1\r\nHost: x\r\n"), 408, "RNNSERVE_HEADER_TIMEOUT_S")
    # a connection that sends nothing at all is closed the same way
    assert_limit(*exchange(server, b""), 408, "RNNSERVE_HEADER_TIMEOUT_S")


def test_a_body_that_does_not_arrive_gets_408(server):
    head = b"POST /sentiment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
    assert_limit(*exchange(server, head + b"\r\nContent-Length: 100\r\n\r\n{"), 408,
                 "RNNSERVE_BODY_TIMEOUT_S")
    chunked = head + b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"  # and never the last chunk
    assert_limit(*exchange(server, chunked), 408, "RNNSERVE_BODY_TIMEOUT_S")


def test_a_body_over_the_limit_is_413_from_its_length_or_as_it_streams(server):
    head = b"POST /sentiment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
    assert_limit(*exchange(server, head + b"\r\nContent-Length: 5000000\r\n\r\n"), 413,
                 "RNNSERVE_MAX_BODY_BYTES")
    body = b'{"texts": ["' + b"a" * 150_000 + b'"]}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10_000]), body[i:i + 10_000])
                      for i in range(0, len(body), 10_000))
    streamed = head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    assert_limit(*exchange(server, streamed), 413, "RNNSERVE_MAX_BODY_BYTES")
    assert served(server)


def test_connections_over_the_cap_get_503_and_the_rest_are_served(server):
    held = []
    try:
        for _ in range(45):  # more than the cap of 40, each with a request begun and left
            connection = socket.create_connection(address(server), timeout=10)
            connection.sendall(b"GET /livez HTTP/1.1\r\n")
            held.append(connection)
        answers = [read_to_close(connection) for connection in held]
    finally:
        for connection in held:
            connection.close()
    refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 5
    assert b"retry-after: 1" in refused[0] and b"RNNSERVE_MAX_CONNECTIONS" in refused[0]
    # the others were held until the header timeout
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers if answer not in refused)
    assert served(server)


def test_at_the_cap_a_new_client_takes_the_place_of_the_longest_waiting_half_sent_request(server):
    held = []
    try:
        for _ in range(40):  # the cap, every connection with a request begun and left
            connection = socket.create_connection(address(server), timeout=10)
            connection.sendall(b"GET /livez HTTP/1.1\r\n")
            held.append(connection)
        assert served(server)  # a new client is served at once, not refused
        oldest = read_to_close(held[0])
        assert oldest.startswith(b"HTTP/1.1 503") and b"slowest to arrive" in oldest
        assert read_to_close(held[-1]).startswith(b"HTTP/1.1 408")  # the newest waited its time
    finally:
        for connection in held:
            connection.close()


def read_to_close(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_generation_stops_when_its_client_goes_away(server):
    body = json.dumps({"prompt": "a", "max_tokens": 2000, "seed": 3}).encode()
    before = _generated(server)
    with socket.create_connection(address(server), timeout=10) as connection:
        connection.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                           + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        _wait_until(lambda: _generated(server) > before)  # it has started
    _wait_until(lambda: _disconnected(server) >= 1)
    settled = _generated(server)
    assert settled - before < 2000  # it stopped, far short of its 2,000 characters
    assert served(server)
    assert _generated(server) == settled  # and does not go on


def _metric(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _generated(url: str) -> float:
    return _metric(url, 'rnnserve_generated_tokens_total{endpoint="generate"}')


def _disconnected(url: str) -> float:
    return _metric(url, 'rnnserve_errors_total{endpoint="generate",kind="disconnected"}')


def _wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # polling a condition, not timing anything
