"""service.batching without HTTP: who waits, what goes together, what fails alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import DRAIN_RATE_WEIGHT, Batcher, DrainRate, Item, Overloaded, select_batch


class Recorder:
    """A run_batch that records its batches, doubles numbers, and fails on negative ones.

    `hold` makes the first batch wait until `release` is set, so tests can queue behind it.
    """

    def __init__(self, hold: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, values: list[int]) -> list[int]:
        self.batches.append(list(values))
        self.started.set()
        self.release.wait(timeout=10)
        if any(v < 0 for v in values):
            raise ValueError(f"negative input in {values}")
        return [2 * v for v in values]


def make_batcher(run_batch, **options) -> Batcher:
    settings = {"max_batch_size": 8, "max_batch_tokens": 10_000, "max_wait_s": 0.0, "max_queue": 100}
    return Batcher("test-model", run_batch, **{**settings, **options})


def items(*lengths: int, widths: tuple[int, ...] | None = None) -> list[Item]:
    widths = widths or (1,) * len(lengths)
    return [Item(value=i, length=n, width=w, future=None, enqueued=0.0)  # type: ignore[arg-type]
            for i, (n, w) in enumerate(zip(lengths, widths, strict=True))]


# -- select_batch: grouping by length under the limits ------------------------------------------


def test_a_batch_starts_with_the_oldest_and_adds_the_nearest_lengths_shortest_first():
    queue = items(10, 50, 11, 9, 48, 30, 12)
    batch = select_batch(queue, max_items=4, max_tokens=10_000)
    assert [item.length for item in batch] == [9, 10, 11, 12]


def test_the_token_budget_bounds_rows_times_longest():
    queue = items(10, 12, 11, 40, 9)
    batch = select_batch(queue, max_items=10, max_tokens=48)  # 4 x 12 fits, a 40 would not
    assert [item.length for item in batch] == [9, 10, 11, 12]


def test_the_budget_counts_beam_width():
    queue = items(10, 10, 10, 10, widths=(1, 4, 1, 1))
    batch = select_batch(queue, max_items=10, max_tokens=30)  # 3 x 10 x 1; the beam-4 item: 2 x 10 x 4
    assert [item.value for item in batch] == [0, 2, 3]


def test_the_oldest_item_runs_even_alone_over_the_budget():
    queue = items(500, 3, 4)
    assert [item.length for item in select_batch(queue, max_items=10, max_tokens=100)] == [500]


# -- the loop -------------------------------------------------------------------------------------


def test_a_lone_request_is_not_delayed():
    recorder = Recorder()

    async def scenario():
        batcher = make_batcher(recorder, max_wait_s=5.0)  # a long wait must never apply when idle
        batcher.start()
        started = time.perf_counter()
        results = await batcher.submit([1, 2], [3, 4])
        elapsed = time.perf_counter() - started
        await batcher.close()
        return results, elapsed

    results, elapsed = asyncio.run(scenario())
    assert results == [2, 4]
    assert elapsed < 1.0
    assert recorder.batches == [[1, 2]]


class ThreadRecorder(Recorder):
    """A Recorder that also notes which thread ran each batch."""

    def __init__(self, hold: bool = False):
        super().__init__(hold)
        self.threads: list[int] = []

    def __call__(self, values: list[int]) -> list[int]:
        self.threads.append(threading.get_ident())
        return super().__call__(values)


def test_a_lone_short_item_runs_on_the_event_loop_thread():
    recorder = ThreadRecorder()

    async def scenario():
        batcher = make_batcher(recorder, inline_max_tokens=8)
        batcher.start()
        answers = [await batcher.submit([1], [8]),  # idle, alone, short: inline
                   await batcher.submit([2], [9]),  # longer than 8 tokens
                   await batcher.submit([3, 4], [2, 2]),  # two items together
                   await batcher.submit([5], [1]),  # alone, but after a batch of two
                   await batcher.submit([6], [1])]  # alone after a lone item: inline again
        await batcher.close()
        return answers, threading.get_ident()

    answers, loop_thread = asyncio.run(scenario())
    assert answers == [[2], [4], [6, 8], [10], [12]]
    assert [thread == loop_thread for thread in recorder.threads] == [True, False, False, False, True]


def test_no_item_runs_inline_while_another_model_of_the_worker_is_busy():
    recorder, others = ThreadRecorder(), {"busy": True}

    async def scenario():
        batcher = make_batcher(recorder, inline_max_tokens=8, others_busy=lambda: others["busy"])
        batcher.start()
        await batcher.submit([1], [1])  # a translation batch runs: model thread
        others["busy"] = False
        await batcher.submit([2], [1])  # all quiet: inline
        await batcher.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert [thread == loop_thread for thread in recorder.threads] == [False, True]


def test_a_batcher_is_busy_while_its_batch_runs():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder)
        batcher.start()
        idle = batcher.busy
        task = asyncio.create_task(batcher.submit([1], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        running = batcher.busy
        recorder.release.set()
        await task
        await asyncio.sleep(0)
        after = batcher.busy
        await batcher.close()
        return idle, running, after

    assert asyncio.run(scenario()) == (False, True, False)


def test_no_item_runs_inline_when_inlining_is_off_or_the_batcher_is_busy():
    off, busy = ThreadRecorder(), ThreadRecorder(hold=True)

    async def scenario():
        batcher = make_batcher(off)  # inline_max_tokens defaults to 0
        batcher.start()
        await batcher.submit([1], [1])
        await batcher.close()
        batcher = make_batcher(busy, inline_max_tokens=8)
        batcher.start()
        first = asyncio.create_task(batcher.submit([100], [50]))  # too long: model thread
        await asyncio.to_thread(busy.started.wait, 10)
        queued = asyncio.create_task(batcher.submit([1], [1]))  # short, but queued behind a batch
        await asyncio.sleep(0.02)
        busy.release.set()
        answers = await asyncio.gather(first, queued)
        await batcher.close()
        return answers, threading.get_ident()

    answers, loop_thread = asyncio.run(scenario())
    assert answers == [[200], [2]]
    assert off.threads[0] != loop_thread
    assert busy.batches == [[100], [1]] and loop_thread not in busy.threads


def test_requests_queued_during_a_batch_run_together_next():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder)
        batcher.start()
        first = asyncio.create_task(batcher.submit([100], [5]))
        await asyncio.to_thread(recorder.started.wait, 10)
        others = [asyncio.create_task(batcher.submit([i], [i])) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five queued while the first batch runs
        recorder.release.set()
        answers = [await first] + [await task for task in others]
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[200], [2], [4], [6], [8], [10]]
    assert recorder.batches == [[100], [1, 2, 3, 4, 5]]


def test_a_busy_batcher_waits_a_little_for_more():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder, max_wait_s=0.3)
        batcher.start()
        first = asyncio.create_task(batcher.submit([100], [5]))
        await asyncio.to_thread(recorder.started.wait, 10)
        queued = asyncio.create_task(batcher.submit([1], [1]))
        await asyncio.sleep(0.02)
        recorder.release.set()
        await first
        await asyncio.sleep(0.05)  # arrives after the first batch, within the wait
        late = asyncio.create_task(batcher.submit([2], [1]))
        await asyncio.gather(queued, late)
        await batcher.close()

    asyncio.run(scenario())
    assert recorder.batches == [[100], [1, 2]]


def test_max_batch_size_splits_a_large_request():
    recorder = Recorder()

    async def scenario():
        batcher = make_batcher(recorder, max_batch_size=3)
        batcher.start()
        results = await batcher.submit(list(range(7)), [1] * 7)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [2 * v for v in range(7)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 1]


def test_a_failing_item_fails_only_its_own_request():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        good = [asyncio.create_task(batcher.submit([i], [1])) for i in (1, 2)]
        bad = asyncio.create_task(batcher.submit([-1], [1]))
        more = asyncio.create_task(batcher.submit([3], [1]))
        await asyncio.sleep(0.05)
        recorder.release.set()
        answers = [await first, *[await task for task in good], await more]
        with pytest.raises(ValueError, match="negative"):
            await bad
        assert await batcher.submit([4], [1]) == [8]  # and the batcher still serves
        await batcher.close()
        return answers

    assert asyncio.run(scenario()) == [[0], [2], [4], [6]]
    assert [1, 2, -1, 3] in recorder.batches  # they were batched, then retried one by one


def test_a_full_queue_answers_overloaded():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder, max_queue=4)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        queued = asyncio.create_task(batcher.submit([1, 2, 3], [1, 1, 1]))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="limit 4") as error:
            await batcher.submit([4, 5], [1, 1])
        assert error.value.error_code == 429
        held = error.value.room.wait(10)  # a request held for room
        recorder.release.set()
        assert await held  # the next batch took the queued items
        batcher.check_room(2)  # and there is room again
        await asyncio.gather(first, queued)
        await batcher.close()

    asyncio.run(scenario())


def test_a_cancelled_request_is_skipped():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        gone = asyncio.create_task(batcher.submit([7], [1]))
        kept = asyncio.create_task(batcher.submit([8], [1]))
        await asyncio.sleep(0.01)
        gone.cancel()
        recorder.release.set()
        await asyncio.gather(first, kept)
        await batcher.close()

    asyncio.run(scenario())
    assert recorder.batches == [[0], [8]]


# -- admission bounded by the wait ahead ------------------------------------------------------------


def test_a_request_is_refused_when_the_work_ahead_would_wait_past_the_limit_at_the_measured_rate():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder, max_batch_size=2, max_queue_wait_s=0.5)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        queued = [asyncio.create_task(batcher.submit([value], [5])) for value in (1, 2)]
        await asyncio.sleep(0.01)
        # a full batch ahead, but no drain rate measured yet: nothing to go by, nothing refused
        assert batcher.drain_rate.per_s is None
        batcher.check_room(1)
        batcher.drain_rate.per_s = 20.0  # work (tokens x rows) a second: 10 queued take 0.5 s
        batcher.check_room(1)  # 0.5 s is within the limit
        queued.append(asyncio.create_task(batcher.submit([3], [1])))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="RNNSERVE_MAX_QUEUE_WAIT_S") as error:
            batcher.check_room(1)  # 11 take 0.55 s
        assert error.value.error_code == 429
        held = error.value.room.wait(10)
        recorder.release.set()
        assert await held  # the next batch took two items
        batcher.check_room(1)
        await asyncio.gather(first, *queued)
        await batcher.close()

    asyncio.run(scenario())


def test_less_than_a_full_batch_ahead_is_never_refused_for_its_wait():
    recorder = Recorder(hold=True)

    async def scenario():
        batcher = make_batcher(recorder, max_batch_size=4, max_batch_tokens=100, max_queue_wait_s=0.001)
        batcher.start()
        batcher.drain_rate.per_s = 1.0  # a very slow model: any queue would wait seconds
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(recorder.started.wait, 10)
        queued = asyncio.create_task(batcher.submit([1, 2, 3], [30, 30, 30]))  # 3 items, 90 tokens
        await asyncio.sleep(0.01)
        batcher.check_room(1)  # the next batch may take the newcomer too
        more = asyncio.create_task(batcher.submit([4], [10]))  # 100 tokens: a full batch's budget
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            batcher.check_room(1)
        recorder.release.set()
        await asyncio.gather(first, queued, more)
        await batcher.close()

    asyncio.run(scenario())


def test_without_a_wait_limit_only_the_item_bound_refuses():
    batcher = make_batcher(Recorder(), max_batch_size=1, max_queue=3)
    batcher.drain_rate.per_s = 1e-9
    batcher._set_queue(items(1000, 1000, 1000))
    with pytest.raises(Overloaded, match="RNNSERVE_MAX_QUEUE"):
        batcher.check_room(1)
    batcher._set_queue(items(1000, 1000))
    batcher.check_room(1)


def test_the_drain_rate_is_measured_on_full_batches_only():
    async def one_at_a_time(recorder):
        batcher = make_batcher(recorder, max_batch_size=2)
        batcher.start()
        for value in range(3):
            await batcher.submit([value], [3])  # each batch leaves nothing queued behind it
        await batcher.close()
        return batcher.drain_rate.per_s

    async def backlog(recorder):
        batcher = make_batcher(recorder, max_batch_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [3]))
        await asyncio.to_thread(recorder.started.wait, 10)
        queued = asyncio.create_task(batcher.submit([1, 2, 3, 4, 5], [3] * 5))
        await asyncio.sleep(0.01)
        recorder.release.set()
        await asyncio.gather(first, queued)
        await batcher.close()
        return batcher.drain_rate.per_s

    assert asyncio.run(one_at_a_time(Recorder())) is None
    recorder = Recorder(hold=True)
    measured = asyncio.run(backlog(recorder))
    assert recorder.batches == [[0], [1, 2], [3, 4], [5]]  # two batches left items queued
    assert measured is not None and measured > 0


def test_the_drain_rate_is_a_moving_average_of_work_per_second():
    rate = DrainRate()
    rate.add(100, 1.0)
    assert rate.per_s == 100
    rate.add(200, 1.0)
    assert rate.per_s == pytest.approx(100 + DRAIN_RATE_WEIGHT * 100)
    rate.add(0, 0.0)  # nothing measured: no change
    assert rate.per_s == pytest.approx(100 + DRAIN_RATE_WEIGHT * 100)


class Gate:
    """A run_batch that doubles numbers, each batch waiting for its own `let_one()`: the test
    decides when each batch ends, so what the loop does between batches is deterministic."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self._pass = threading.Semaphore(0)

    def __call__(self, values: list[int]) -> list[int]:
        self.batches.append(list(values))
        self.started.release()
        self._pass.acquire(timeout=10)
        return [2 * v for v in values]

    def let_one(self) -> None:
        self._pass.release()


def test_a_batch_wakes_one_held_request_per_request_it_took_and_the_woken_one_is_admitted():
    gate = Gate()

    async def scenario():
        batcher = make_batcher(gate, max_batch_size=2, max_queue=4)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0], [1]))
        await asyncio.to_thread(gate.started.acquire, True, 10)  # batch 1 runs
        queued = [asyncio.create_task(batcher.submit([1, 2], [1, 1])),
                  asyncio.create_task(batcher.submit([3, 4], [1, 1]))]
        await asyncio.sleep(0)  # both queued: four items, the limit
        assert batcher.queued() == 4
        with pytest.raises(Overloaded) as error:
            batcher.check_room(2)
        room = error.value.room
        held = [asyncio.ensure_future(room.wait(10)) for _ in range(3)]
        gate.let_one()  # batch 1 ends; batch 2 takes the first request's two items, and runs
        await asyncio.to_thread(gate.started.acquire, True, 10)
        await asyncio.wait(held, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)  # a turn for any other wake to land: none does
        # two items left the queue, but one request: one held request woke, and it fits
        assert [task.done() for task in held] == [True, False, False] and room.waiting == 2
        batcher.check_room(2)
        woken = asyncio.create_task(batcher.submit([5, 6], [1, 1]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            batcher.check_room(1)  # the room it was woken for is taken
        for _ in range(3):
            gate.let_one()
        answers = await asyncio.gather(first, *queued, woken)
        for task in held[1:]:
            task.cancel()
        await batcher.close()
        return answers

    assert asyncio.run(scenario()) == [[0], [2, 4], [6, 8], [10, 12]]
    assert gate.batches == [[0], [1, 2], [3, 4], [5, 6]]
