"""A small asyncio HTTP/1.1 client and closed-loop load for the reliability scenarios.

Why not httpx or wrk: a scenario needs each answer's status and time (how long a 429 took, when
the first 200 came back after an overload) from thousands of answers a second, on the same two
cores as the server. wrk reports latency for all statuses together; httpx costs several times
more CPU per request than these few lines over asyncio streams with keep-alive connections.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 75.0  # past the service's 60 s request timeout: every answer is bounded
LOST = 0  # the status of a request that got no answer (connection reset or closed)


@dataclass(frozen=True)
class Answer:
    status: int  # LOST when the connection failed before an answer
    started: float  # time.perf_counter() when the request was sent
    seconds: float
    body: bytes = b""


class Connection:
    """One keep-alive connection; it reconnects after the server closes it."""

    def __init__(self, url: str, headers: Sequence[tuple[str, str]] = ()):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      timeout_s: float = REQUEST_TIMEOUT_S) -> Answer:
        started = time.perf_counter()
        try:
            status, data, close = await asyncio.wait_for(self._exchange(method, path, body), timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            self.close()
            return Answer(LOST, started, time.perf_counter() - started)
        if close:
            self.close()
        return Answer(status, started, time.perf_counter() - started, data)

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes, bool]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self._writer.write(head.encode() + body)
        reader = self._reader
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value
            elif name == "connection":
                close = value == "close"
        if not chunked:
            return status, await reader.readexactly(length), close
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return status, b"".join(chunks), close

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def closed_loop(url: str, path: str, bodies: Sequence[dict], concurrency: int, seconds: float,
                      on_answer: Callable[[Answer], None] | None = None,
                      stop: asyncio.Event | None = None) -> list[Answer]:
    """`concurrency` clients, each sending its next request as soon as the last is answered,
    for `seconds` or until `stop` is set; requests under way then are awaited (each bounded by
    REQUEST_TIMEOUT_S).
    A client answered 429 or 503 asks again at once: the hostile case, not a polite one."""
    encoded = [json.dumps(body).encode() for body in bodies]
    answers: list[Answer] = []
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        connection = Connection(url)
        sent = index
        try:
            while time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
                answer = await connection.request("POST", path, encoded[sent % len(encoded)])
                sent += concurrency
                answers.append(answer)
                if on_answer is not None:
                    on_answer(answer)
                if answer.status == LOST:
                    await asyncio.sleep(0.01)  # the server is gone or refusing: no busy spin
        finally:
            connection.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return answers


def run_closed_loop(url: str, path: str, bodies: Sequence[dict], concurrency: int,
                    seconds: float) -> list[Answer]:
    return asyncio.run(closed_loop(url, path, bodies, concurrency, seconds))
