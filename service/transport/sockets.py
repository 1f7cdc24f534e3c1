"""One listening socket per worker (SO_REUSEPORT), so that the kernel spreads connections evenly
over the workers.

BentoML's arbiter binds one socket and passes it to every worker (`--fd N`). The worker that
wakes first accepts every connection waiting, so long-lived connections split unevenly, and the
loaded worker, with two or three times the other's batch, sets the p99 (docs/transport.md).

`listen_on_own_socket` runs in a worker as BentoML loads the service, before the worker wraps
the fd into its server. It binds a socket of the worker's own to the same address with
SO_REUSEPORT, puts it in place of the shared fd (dup2), and stops the shared socket from
listening; the kernel then hands each new connection to one of the workers' sockets by a hash
of its addresses and ports. A worker restarted later does the same with the (no longer
listening) shared socket. Linux only. Anything unexpected leaves the shared socket as it is,
except for a worker that could use neither socket: it fails at start rather than sit deaf.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

BACKLOG = 2048  # BentoML's default --backlog
WORKER_SCRIPT = ("_bentoml_impl", "worker", "service.py")  # python -m _bentoml_impl.worker.service


def worker_fd(argv: Sequence[str]) -> int | None:
    """The listening fd a BentoML worker was started with (`--fd N`), or None outside one."""
    if not argv or Path(argv[0]).parts[-3:] != WORKER_SCRIPT:
        return None
    return argument(argv, "--fd", None)


def argument(argv: Sequence[str], flag: str, default: int | None) -> int | None:
    """The integer after `flag` in `argv`, or `default`."""
    for name, value in zip(argv, argv[1:], strict=False):
        if name == flag:
            return int(value)
    return default


def listen_on_own_socket(fd: int, backlog: int = BACKLOG) -> bool:
    """Replace the shared listening socket at `fd` by one of this process's own, bound to the
    same address with SO_REUSEPORT. True when done; False (and `fd` untouched) otherwise."""
    if not sys.platform.startswith("linux"):
        return False  # elsewhere SO_REUSEPORT does not balance connections
    shared = socket.socket(fileno=os.dup(fd))
    try:
        if shared.type != socket.SOCK_STREAM or shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        listening = shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        taken_over = shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)  # by an earlier worker
        if not (listening or taken_over):
            return False
        address = shared.getsockname()
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            # the shared socket must allow port sharing too, or the kernel refuses the bind
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(address)
            own.listen(backlog)
            os.dup2(own.fileno(), fd, inheritable=os.get_inheritable(fd))
        except OSError as error:
            if not listening:  # an earlier worker stopped the shared socket: this one would be deaf
                raise RuntimeError(f"worker {os.getpid()} cannot listen on {address}: {error}") from error
            log.warning("worker %d keeps the shared listening socket: %s", os.getpid(), error)
            return False
        finally:
            own.close()
        # nobody accepts from the shared socket any more: it must not take connections
        # (ENOTCONN: an earlier worker already stopped it)
        with contextlib.suppress(OSError):
            shared.shutdown(socket.SHUT_RDWR)
        log.info("worker %d listens on its own socket (SO_REUSEPORT) at %s", os.getpid(), address)
        return True
    finally:
        shared.close()


def balance_connections(workers: int, argv: Sequence[str] | None = None) -> bool:
    """In a BentoML worker of a service with several workers: `listen_on_own_socket`."""
    argv = sys.argv if argv is None else argv
    fd = worker_fd(argv)
    if workers < 2 or fd is None:
        return False
    return listen_on_own_socket(fd, argument(argv, "--backlog", BACKLOG))
