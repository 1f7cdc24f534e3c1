"""Keep the workers' shares of the client connections even, by closing surplus ones.

With one `SO_REUSEPORT` socket per worker (service/transport/sockets.py) the kernel places each
new connection by a hash of its addresses and ports: a coin toss per connection. Batches form per
worker, so a closed loop of 64 long-lived connections that lands 40/24 on two workers runs the
first at 40 / 32 of the even share's queue, and that worker sets the p99 (docs/transport.md has
the runs).

`ConnectionBalancer` counts, per worker, the connections that sent a request in the last
`WINDOW_S` seconds (by the client's address and port), and every worker publishes its count to
a small file all the server's workers map (`SharedCounts`). A worker holding more than its
share (ceil(total / workers) + `SLACK`) answers the next requests of that many connections with
`Connection: close`: HTTP/1.1 clients open a new connection for their next request, which the
kernel places afresh, and the counts even out within a few reconnections. A client pays one TCP
handshake; no request is refused or cut. What it bought: docs/transport.md.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service import metrics
from service.transport.sockets import argument, worker_fd

WINDOW_S = 1.0  # a connection counts as active for this long after its last request
PUBLISH_S = 0.1  # how often a worker publishes its count and reads the others'
STALE_S = 2.0  # a worker whose count is older than this is gone (or restarting): left out
SLACK = 1  # connections over the even share a worker keeps

SLOT = struct.Struct("<qd")  # connections, time.monotonic() of the update


def shared_path(arbiter: int, environ: Mapping[str, str] = os.environ) -> Path:
    """The counts file of the server whose workers `arbiter` (their parent process) started: in
    the folder BentoML gives prometheus-client's per-process files, which it empties at every
    start (prometheus-client reads only its own *.db files there); else the temporary folder."""
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    return Path(folder) / f"rnnserve-connections-{arbiter}.bin"


class SharedCounts:
    """Every worker's count of active connections, in a file each worker maps: slot `index` is
    this worker's. Reads and writes are unlocked; a torn read only misjudges one share briefly."""

    def __init__(self, path: Path, workers: int, index: int):
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} out of range for {workers} workers")
        self.path = path
        self.index = index
        size = workers * SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zeros: no worker has published yet
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.workers = workers

    def publish(self, connections: int, now: float) -> None:
        SLOT.pack_into(self._map, self.index * SLOT.size, connections, now)

    def live(self, now: float) -> list[int]:
        """The counts of the workers that published within STALE_S, this one's included."""
        slots = (SLOT.unpack_from(self._map, i * SLOT.size) for i in range(self.workers))
        return [count for count, updated in slots if updated > 0 and now - updated < STALE_S]


def worker_counts(workers: int, argv: Sequence[str] | None = None) -> SharedCounts | None:
    """This BentoML worker's slot (`--worker-id`, 1-based) among `workers`, or None outside a
    worker or with a single one."""
    argv = sys.argv if argv is None else argv
    worker_id = argument(argv, "--worker-id", None)
    if workers < 2 or worker_fd(argv) is None or worker_id is None:
        return None
    return SharedCounts(shared_path(os.getppid()), workers, worker_id - 1)


class ConnectionBalancer:
    """ASGI middleware: closes this worker's surplus connections after their answer (module doc).
    Without `counts` (one worker, or sockets shared) it only passes requests on."""

    def __init__(self, app: Any, counts: Callable[[], SharedCounts | None],
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self._counts = counts()  # built in the worker, with the ASGI app: not in the supervisor
        self._clock = clock
        self._seen: dict[tuple[str, int], float] = {}  # client address -> time of its last request
        self._next_publish = 0.0
        self._surplus = 0  # connections still to close

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client")
        if self._counts is None or scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        key = (client[0], client[1])
        now = self._clock()
        self._seen[key] = now
        if now >= self._next_publish:
            self._rebalance(now)
        if not self._surplus:
            await self.app(scope, receive, send)
            return
        self._surplus -= 1
        del self._seen[key]  # it closes after this answer
        metrics.rebalanced_connections.inc()

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)

    def _rebalance(self, now: float) -> None:
        assert self._counts is not None
        self._next_publish = now + PUBLISH_S
        self._seen = {key: seen for key, seen in self._seen.items() if now - seen < WINDOW_S}
        mine = len(self._seen)
        self._counts.publish(mine, now)
        live = self._counts.live(now)
        share = math.ceil(sum(live) / len(live)) if live else mine
        self._surplus = max(0, mine - share - SLACK)
