"""service.transport.writes: a connection's writes of one event-loop turn go out as one."""

from __future__ import annotations

import asyncio
import functools

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.transport.limits import LingeringTransport
from service.transport.writes import CoalescingTransport, coalesce_http_writes


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what it is asked to do."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closing

    def close(self):
        self.calls.append("close")
        self.closing = True

    def abort(self):
        self.calls.append("abort")
        self.closing = True

    def write_eof(self):
        self.calls.append("write_eof")

    def get_write_buffer_size(self):
        return 3

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)


def in_event_loop(test):
    """Run the coroutine function `test` to completion in a new event loop (no pytest plugin)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))
    return run


async def next_turn():
    await asyncio.sleep(0)


@in_event_loop
async def test_the_writes_of_one_turn_go_out_together_at_its_end():
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b'{"label":"positive"}')
    assert raw.writes == []
    assert transport.get_write_buffer_size() == 3 + 19 + 20
    await next_turn()
    assert raw.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"label":"positive"}']
    transport.writelines([b"data: a\n\n", b"data: b\n\n"])
    await next_turn()
    transport.write(b"data: c\n\n")
    await next_turn()
    await next_turn()  # nothing pending: nothing written
    assert raw.writes[1:] == [b"data: a\n\ndata: b\n\n", b"data: c\n\n"]


@in_event_loop
async def test_close_and_eof_send_what_is_pending_first_and_abort_drops_it():
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"last answer")
    transport.write_eof()
    transport.write(b"after eof")
    transport.close()
    assert raw.writes == [b"last answer", b"after eof"]
    assert raw.calls == ["write_eof", "close"]
    await next_turn()  # the flush scheduled by the first write finds nothing left
    assert raw.writes == [b"last answer", b"after eof"]

    aborted = RecordingTransport()
    transport = CoalescingTransport(aborted, asyncio.get_running_loop())
    transport.write(b"never sent")
    transport.abort()
    await next_turn()
    assert aborted.writes == [] and aborted.calls == ["abort"]


@in_event_loop
async def test_writes_to_a_connection_closed_meanwhile_are_dropped():
    raw = RecordingTransport()
    transport = CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"too late")
    raw.closing = True  # the client went away before the end of the turn
    await next_turn()
    assert raw.writes == []
    assert transport.is_closing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5000)


async def hello(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])
@in_event_loop
async def test_uvicorn_sends_an_answer_as_one_write(protocol):
    coalesce_http_writes()
    coalesce_http_writes()  # idempotent: one wrapper, not two
    config = uvicorn.Config(hello, log_config=None, lifespan="off")
    connection = protocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    raw = RecordingTransport()
    connection.connection_made(raw)
    transport = connection.transport
    if isinstance(transport, LingeringTransport):  # limits.py, when an earlier test imported the service
        transport = transport._transport
        # service.transport.install ran coalesce_http_writes before limits wrapped connection_made,
        # so the calls above no longer see their own wrapper and add one more
        while isinstance(transport._transport, CoalescingTransport):
            transport = transport._transport
    assert isinstance(transport, CoalescingTransport)
    assert transport._transport is raw
    connection.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    for _ in range(20):
        if raw.writes:
            break
        await next_turn()
    assert len(raw.writes) == 1
    head, _, body = raw.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"hello"
    connection.connection_lost(None)
