"""Connection and body limits that uvicorn (as BentoML 1.4 runs it) does not set.

A model server is shared: one client must not hold what others need. uvicorn, as BentoML
starts it, reads headers for as long as a client keeps sending them, accepts connections until
the worker runs out of file descriptors, takes headers of any size and number, and reads and
parses any body. Two layers bound that:

- `limit_connections` patches uvicorn's httptools protocol (the one uvicorn uses when httptools
  is installed, as it is here): a per-worker connection cap, a deadline
  for a request's headers from its first byte, or from the connection's start (408), a cap on
  header bytes and on the header count (431), a deadline for the body once the headers are in
  (408), and an idle keep-alive timeout. These answer from the protocol, before any ASGI app
  runs, and close the connection. At the cap, a new connection takes the place of the one that
  has waited longest without a request under way (idle keep-alive, closed; or its headers still
  to come, answered 503), as nginx reuses idle keep-alive connections when it runs
  short; only when every connection has a request under way is the newcomer refused (503).
  Without that, a client holding the cap with half-sent requests and reconnecting as each is
  closed would leave no room for anyone else.
- `BodyLimits`, ASGI middleware: a body over `max_body_bytes` gets 413 before it is read
  (Content-Length) or as soon as the streamed bytes pass it (chunked). It also makes a request
  whose client went away stop: the protocol cancels the request's task on connection loss, so
  queued model work is dropped and generation rows leave their batch.

Every trip counts in rnnserve_limit_rejections_total{limit} and logs a rate-limited line.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from service.errors import DISCONNECTED, RETRY_AFTER_S, TASK, trip

REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


@dataclass(frozen=True)
class Limits:
    max_connections: int  # per worker
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_body_bytes: int


DESCRIPTORS_KEPT = 64  # for model files, logs, sockets to the supervisor: not for clients


def descriptor_budget() -> int:
    """The connections this process's file-descriptor limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - DESCRIPTORS_KEPT if soft != resource.RLIM_INFINITY else 1 << 30


def raw_answer(status: int, message: str, retry_after: bool = False) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, with a JSON body {"error": message}."""
    body = json.dumps({"error": message}).encode()
    head = [b"HTTP/1.1 %d %s" % (status, REASONS[status]), b"content-type: application/json",
            b"content-length: %d" % len(body), b"connection: close"]
    if retry_after:
        head.append(b"retry-after: %d" % RETRY_AFTER_S)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


LINGER_S = 2.0  # how long a closing connection may still send before it is cut


class LingeringTransport:
    """A transport whose close() lets the client finish sending first.

    Closing a socket with unread bytes in it makes the kernel send a reset, which can destroy
    the answer (a 413, 431 or 408) before the client reads it. So, as nginx does, a connection
    closed in the middle of a request sends its FIN after the answer, reads and drops what keeps
    coming for up to LINGER_S, then closes; a client that reads the answer and closes ends it
    sooner. A connection closed between requests closes at once.
    """

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, guard: _Guard):
        self._transport = transport
        self._loop = loop
        self._guard = guard
        self.lingering = False

    def close(self) -> None:
        if self.lingering:
            return
        phase = self._guard.phase
        if phase == "done" or (phase == "headers" and not self._guard.header_bytes):
            self._transport.close()
            return
        self.lingering = True
        try:
            self._transport.write_eof()
            self._transport.resume_reading()
        except (OSError, RuntimeError, NotImplementedError):
            self._transport.close()
            return
        self._loop.call_later(LINGER_S, self._transport.close)

    def close_now(self) -> None:
        """Close without lingering: what was written still goes out first."""
        self.lingering = True
        self._transport.close()

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Guard:
    """One connection's limit state, kept on the protocol as `_rnnserve`."""

    __slots__ = ("phase", "header_bytes", "parsed_bytes", "headers", "timer")

    def __init__(self) -> None:
        self.phase = "headers"  # headers -> body -> done (-> headers on the next request)
        self.header_bytes = 0  # received while the headers were incomplete
        self.parsed_bytes = 0  # of the URL and the headers the parser handed over
        self.headers = 0
        self.timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Waiting:
    """This worker's connections with no request under way, longest waiting first: the ones a
    new connection may take the place of at the cap."""

    def __init__(self) -> None:
        self._protocols: OrderedDict[Any, None] = OrderedDict()

    def add(self, protocol: Any) -> None:
        self._protocols[protocol] = None
        self._protocols.move_to_end(protocol)

    def discard(self, protocol: Any) -> None:
        self._protocols.pop(protocol, None)

    def oldest(self) -> Any | None:
        return next(iter(self._protocols), None)

    def __len__(self) -> int:
        return len(self._protocols)


WAITING = Waiting()  # one event loop per worker process: one registry

# (method, path, headers, the service's app) -> an ASGI app to run for the request instead, or
# None; set by `answer_early` (service.transport.direct.EarlyShedding)
EarlyHook = Callable[[bytes, bytes, list[tuple[bytes, bytes]], Any], Any]
_early: list[EarlyHook] = []


def answer_early(hook: EarlyHook) -> None:
    """Ask `hook` about every request once its headers are in; when it returns an ASGI app, that
    app runs for the request in place of the service's middleware stack (it may call the stack,
    which it is given)."""
    _early[:] = [hook]


def limit_connections(limits: Limits) -> None:
    """Patch uvicorn's HttpToolsProtocol with `limits`. Idempotent."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol

    if getattr(Protocol, "_rnnserve_limits", None) is not None:
        Protocol._rnnserve_limits = limits
        return
    Protocol._rnnserve_limits = limits
    made, lost, received = Protocol.connection_made, Protocol.connection_lost, Protocol.data_received
    on_message_begin, on_url, on_header = Protocol.on_message_begin, Protocol.on_url, Protocol.on_header
    on_headers_complete, on_message_complete = Protocol.on_headers_complete, Protocol.on_message_complete
    on_response_complete, send_400 = Protocol.on_response_complete, Protocol.send_400_response

    def reject(self: Any, status: int, limit: str, message: str) -> None:
        WAITING.discard(self)
        if self.transport.is_closing():
            return  # closed meanwhile (a timer that outlived its request)
        trip(limit, message)
        self._rnnserve.phase = "rejected"  # close lingering: the request may still be coming
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's later sends go nowhere
        self.transport.write(raw_answer(status, message, retry_after=status == 503))
        self.transport.close()

    def arm(self: Any, seconds: float, status: int, limit: str, message: str) -> None:
        guard = self._rnnserve
        guard.cancel_timer()
        guard.timer = self.loop.call_later(seconds, reject, self, status, limit, message)

    def header_deadline(self: Any) -> None:
        arm(self, limits.header_timeout_s, 408, "header_timeout",
            f"request headers not received within {limits.header_timeout_s:g} s "
            "(RNNSERVE_HEADER_TIMEOUT_S)")

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        self._rnnserve = _Guard()
        self.transport = LingeringTransport(self.transport, self.loop, self._rnnserve)
        self.timeout_keep_alive = limits.keepalive_timeout_s
        if len(self.connections) > limits.max_connections and not make_room():
            reject(self, 503, "connections", f"this worker holds {limits.max_connections} connections, "
                   "its limit (RNNSERVE_MAX_CONNECTIONS), each with a request under way; retry later")
            return
        WAITING.add(self)
        header_deadline(self)

    def make_room() -> bool:
        """Close the connection that has waited longest with no request under way, if any."""
        victim = WAITING.oldest()
        if victim is None:
            return False
        WAITING.discard(victim)
        guard = victim._rnnserve
        guard.cancel_timer()
        if guard.phase == "headers":  # its request not (wholly) here yet
            message = (f"this worker holds {limits.max_connections} connections, its limit "
                       "(RNNSERVE_MAX_CONNECTIONS), and this request was the slowest to arrive; "
                       "retry later")
            trip("connections", message)
            victim.transport.write(raw_answer(503, message, retry_after=True))
        else:
            trip("connections", "an idle keep-alive connection closed to make room "
                 f"(RNNSERVE_MAX_CONNECTIONS={limits.max_connections})")
        guard.phase = "rejected"
        # at once, not lingering: a flood of connections must not hold more descriptors than the cap
        victim.transport.close_now()
        return True

    def connection_lost(self: Any, exc: Exception | None) -> None:
        WAITING.discard(self)
        guard = getattr(self, "_rnnserve", None)
        if guard is not None:
            guard.cancel_timer()
            guard.phase = "done"  # nothing left to linger for
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            state = cycle.scope.get("state", {})
            task = state.get(TASK)
            if task is not None and not task.done():
                state[DISCONNECTED] = True
                task.cancel()
        lost(self, exc)

    def data_received(self: Any, data: bytes) -> None:
        if self.transport.is_closing():
            return  # answered and closing: nothing more is read
        received(self, data)
        guard = getattr(self, "_rnnserve", None)
        if guard is None or self.transport.is_closing():
            return
        if guard.phase == "headers":
            # httptools holds a header until it is whole: count what reached it instead
            guard.header_bytes += len(data)
            if guard.header_bytes > limits.max_header_bytes:
                reject(self, 431, "header_bytes", f"request headers over {limits.max_header_bytes} "
                       "bytes (RNNSERVE_MAX_HEADER_BYTES)")
            elif guard.timer is None:  # a request begun, its headers not whole: from its first byte
                header_deadline(self)
        elif guard.phase == "body" and guard.timer is None:
            arm(self, limits.body_timeout_s, 408, "body_timeout",
                f"request body not received within {limits.body_timeout_s:g} s (RNNSERVE_BODY_TIMEOUT_S)")

    def message_begin(self: Any) -> None:
        on_message_begin(self)
        guard = self._rnnserve
        # a keep-alive connection's next request gets its header deadline only if its headers
        # do not arrive whole (data_received): no timer per request in the common case
        guard.phase, guard.header_bytes, guard.parsed_bytes, guard.headers = "headers", 0, 0, 0

    def header(self: Any, name: bytes, value: bytes) -> None:
        guard = self._rnnserve
        guard.headers += 1
        guard.parsed_bytes += len(name) + len(value) + 4  # name: value CRLF
        if guard.headers > limits.max_headers:
            guard.phase = "too many"
        elif guard.parsed_bytes > limits.max_header_bytes:
            guard.phase = "too large"
        else:
            on_header(self, name, value)
            return
        raise ValueError(guard.phase)  # the parser stops; send_400_response answers 431

    def url(self: Any, url: bytes) -> None:
        self._rnnserve.parsed_bytes += len(url)
        on_url(self, url)

    def headers_complete(self: Any) -> None:
        WAITING.discard(self)  # a request is under way
        guard = self._rnnserve
        guard.cancel_timer()
        guard.phase = "body"
        early = _early[0](self.parser.get_method(), httptools.parse_url(self.url).path,
                          self.headers, self.app) if _early else None
        if early is None:
            on_headers_complete(self)
            return
        app, self.app = self.app, early  # uvicorn picks its app here, as for its own limit_concurrency
        try:
            on_headers_complete(self)
        finally:
            self.app = app

    def message_complete(self: Any) -> None:
        guard = self._rnnserve
        guard.cancel_timer()
        guard.phase = "done"
        on_message_complete(self)

    def response_complete(self: Any) -> None:
        on_response_complete(self)
        if not self.transport.is_closing() and not getattr(self, "pipeline", None):
            WAITING.add(self)  # idle until its next request

    def send_400_response(self: Any, msg: str) -> None:
        guard = getattr(self, "_rnnserve", None)
        if guard is not None and guard.phase == "too many":
            reject(self, 431, "headers", f"more than {limits.max_headers} request headers "
                   "(RNNSERVE_MAX_HEADERS)")
            return
        if guard is not None and guard.phase == "too large":
            reject(self, 431, "header_bytes", f"request headers over {limits.max_header_bytes} "
                   "bytes (RNNSERVE_MAX_HEADER_BYTES)")
            return
        send_400(self, msg)

    Protocol.connection_made = connection_made
    Protocol.connection_lost = connection_lost
    Protocol.data_received = data_received
    Protocol.on_message_begin = message_begin
    Protocol.on_url = url
    Protocol.on_header = header
    Protocol.on_headers_complete = headers_complete
    Protocol.on_message_complete = message_complete
    Protocol.on_response_complete = response_complete
    Protocol.send_400_response = send_400_response


class BodyTooLarge(Exception):
    pass


class BodyLimits:
    """ASGI middleware: 413 for a body over `max_body_bytes`, before it is read when
    Content-Length says so, else as soon as the streamed bytes pass it."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_bytes:
                    await self.too_large(send, f"{value.decode('latin-1')} bytes")
                    return
            elif name == b"transfer-encoding":
                streamed = True
        if not streamed:  # no body, or one the server reads no further than its Content-Length
            await self.app(scope, receive, send)
            return
        started = False
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self.too_large(send, f"over {self.max_body_bytes} bytes")

    async def too_large(self, send: Any, size: str) -> None:
        message = f"request body {size}: the limit is {self.max_body_bytes} bytes (RNNSERVE_MAX_BODY_BYTES)"
        trip("body_bytes", message)
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
