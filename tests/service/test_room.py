"""service.room: requests held for room wake oldest first, as many as the room freed."""

from __future__ import annotations

import asyncio

from service.room import Room


def test_free_wakes_the_oldest_held_requests_and_no_more():
    async def scenario():
        room = Room()
        held = [asyncio.ensure_future(room.wait(10)) for _ in range(4)]
        assert room.waiting == 4
        assert room.free(2) == 2
        await asyncio.wait(held[:2])
        await asyncio.sleep(0)  # a turn for any other wake to land: none does
        assert [task.done() for task in held] == [True, True, False, False]
        assert all(task.result() for task in held[:2]) and room.waiting == 2
        assert room.free(5) == 2  # fewer waiting than freed: the rest is not kept for later
        assert all(await asyncio.gather(*held[2:]))
        assert room.waiting == 0 and room.free(1) == 0

    asyncio.run(scenario())


def test_a_request_woken_but_refused_keeps_its_turn_at_the_front():
    async def scenario():
        room = Room()
        later = asyncio.ensure_future(room.wait(10))
        again = asyncio.ensure_future(room.wait(10, first=True))
        room.free(1)
        assert await again and not later.done()
        later.cancel()

    asyncio.run(scenario())


def test_a_request_that_gives_up_leaves_the_line_and_passes_on_a_wake_it_got():
    async def scenario():
        room = Room()
        assert not await room.wait(0)  # nothing freed in time: False, and it left the line
        assert room.waiting == 0
        gone = asyncio.ensure_future(room.wait(10))
        nxt = asyncio.ensure_future(room.wait(10))
        await asyncio.sleep(0)  # both waiting
        gone.cancel()  # its client went away
        await asyncio.gather(gone, return_exceptions=True)
        assert room.waiting == 1
        room.free(1)
        assert await nxt
        # woken in the same turn as it was cancelled: the wake goes to the next in line
        first = asyncio.ensure_future(room.wait(10))
        second = asyncio.ensure_future(room.wait(10))
        await asyncio.sleep(0)
        room.free(1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await second

    asyncio.run(scenario())
