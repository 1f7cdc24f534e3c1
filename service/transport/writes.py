"""One send per answer: what the HTTP server writes to a connection in one event-loop turn, joined.

uvicorn writes an answer's status line and headers with one `transport.write` and its body with
another. On a connection with nothing buffered each write is a send() system call on the spot,
so a /sentiment answer cost two: at 64 concurrent /sentiment requests they were ~20% of a
worker's event-loop time (py-spy). `CoalescingTransport` stands between uvicorn's
protocol and the connection's transport: it keeps the writes of the current turn of the event
loop and hands them to the transport as one at the end of that turn. An answer goes out when it
would have, a few microseconds later at most (the rest of the turn); a stream's chunks go out
each in the turn that wrote it; order is kept. What it bought: docs/transport.md.

`coalesce_http_writes` installs it for every connection uvicorn's HTTP/1.1 protocols accept.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport that passes on its writes once per event-loop turn; all else is `transport`'s."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():  # the client went away meanwhile
            self._transport.write(data)

    def close(self) -> None:
        self._flush()  # the transport sends what it holds before it closes
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_http_writes() -> None:
    """Give every connection of uvicorn's HTTP/1.1 protocols (httptools and h11) a
    CoalescingTransport. Idempotent."""
    from uvicorn.protocols.http import h11_impl, httptools_impl

    for protocol in (httptools_impl.HttpToolsProtocol, h11_impl.H11Protocol):
        if getattr(protocol, "_rnnserve_coalescing", False):
            continue  # already (maybe under other wrappers since: service/transport/limits.py)
        made = protocol.connection_made

        def connection_made(self: Any, transport: asyncio.Transport, made: Any = made) -> None:
            made(self, CoalescingTransport(transport, self.loop))

        protocol.connection_made = connection_made
        protocol._rnnserve_coalescing = True
