"""Requests held for room in a full model queue, woken oldest first, one per request's worth of room.

Why not an asyncio.Event set whenever items leave the queue: it wakes every held request at
once. Each then passes the admission check made before its body is read (the queue has room
for one more), reads and parses its body, and all but the first few are refused after all, the
body read for nothing. Woken one per request that left the queue, a held request finds the room
it was woken for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable


class Room:
    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests held now."""
        return sum(not future.done() for future in self._waiters)

    def wait(self, timeout_s: float, first: bool = False) -> Awaitable[bool]:
        """Hold the caller's place now (at the back, or with `first` at the front: a request
        woken but refused keeps its turn); the awaitable says whether room came within
        `timeout_s`."""
        future = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(future)
        else:
            self._waiters.append(future)
        return self._until(future, timeout_s)

    async def _until(self, future: asyncio.Future[None], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            self._give_up(future)
            return False
        except BaseException:  # cancelled: the client went away
            self._give_up(future)
            raise
        return True

    def _give_up(self, future: asyncio.Future[None]) -> None:
        if future.done() and not future.cancelled():
            self.free(1)  # woken just as it gave up: the room goes to the next in line
        else:
            future.cancel()
            with contextlib.suppress(ValueError):  # free() may have dropped it already
                self._waiters.remove(future)

    def free(self, count: int) -> int:
        """Wake the `count` oldest held requests (fewer if fewer wait); how many woke."""
        woken = 0
        while woken < count and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken
