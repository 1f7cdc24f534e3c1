"""A length-aware asyncio batcher for one model (sentiment, or one translator).

Why not BentoML's `batchable=True`: its adaptive batcher fits latency to item count only and,
for a model that runs in under a millisecond, settles on waiting 0 ms, so batches form only by
accident; it also needs per-request options inside the list items. See ../shared/BENTOML.md.

How this one works:
- a request puts its items (already-encoded inputs) on the queue and awaits one future per item;
- one loop per model takes a batch and runs it in the model's own thread, so torch never blocks
  the event loop, and one batch per model is in flight at a time;
- idle, the loop wakes on the first item and runs it at once: a lone request is never delayed.
  Under light load (the last batch was a lone item too, the worker's other models idle), a lone
  short item (at most `inline_max_tokens`) even runs on the event loop's own thread: that skips
  two thread hand-offs (a noticeable share of a lone short answer, docs/batching.md) and blocks the
  loop only for a short text's model time;
- busy (items queued while the last batch ran), it may wait up to `max_wait_s` more for the
  batch to fill, because more requests are evidently arriving;
- a batch starts with the oldest item (so nothing starves) and adds the queued items closest
  to it in length, while it has under `max_batch_size` items and rows x longest input x widest
  beam stays within `max_batch_tokens`. Similar lengths mean little padding; the models pack
  sequences, so padding never changes a result: a batched item equals the same item alone;
- if a batch raises, its items are retried one by one, so a bad item fails only its request.

Admission (`ModelLoop.check_room`) bounds a queue two ways: in items (RNNSERVE_MAX_QUEUE, a
memory bound) and in time (RNNSERVE_MAX_QUEUE_WAIT_S): a request is refused when the work queued
ahead of it would take longer than that to drain at the rate the model has measured. A queue
bounded in time is a short queue: the moment an overload ends, a new request waits at most that
long, instead of behind every item the memory bound lets in. The estimate errs toward admitting:
it is made only from a rate measured on full batches (the model's saturated drain rate, faster
than any smaller batch's), and never refuses while less than one full batch is queued ahead.
A request refused before its body is read may wait briefly for room (`ModelLoop.room`): one such
request is woken for each request whose items all left the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from service import metrics
from service.errors import Overloaded
from service.room import Room

log = logging.getLogger(__name__)

V = TypeVar("V")
R = TypeVar("R")


@dataclass(eq=False)
class Item(Generic[V]):
    value: V
    length: int  # tokens
    width: int  # rows it needs in the model batch (its beam size)
    future: asyncio.Future[Any]
    enqueued: float  # time.perf_counter()
    request: int = 0  # which submit() it came with: the items of one request share it


# How fast the measured drain rate follows the latest full batches: each weighs this much.
DRAIN_RATE_WEIGHT = 0.25


class DrainRate:
    """Work (tokens x rows: `Item.length * Item.width`) per second a queue drains at, as a moving
    average over full batches: those that left items queued behind them, which is when the
    model runs back to back and a newcomer's wait depends on this rate. A batch that is not
    full says nothing about it (a lone item's rate is far below a full batch's): it is not
    counted, so a server that was never saturated has no rate and never refuses for time."""

    def __init__(self) -> None:
        self.per_s: float | None = None

    def add(self, work: int, seconds: float) -> None:
        if seconds <= 0 or work <= 0:
            return
        rate = work / seconds
        self.per_s = rate if self.per_s is None else self.per_s + DRAIN_RATE_WEIGHT * (rate - self.per_s)


def work_of(items: Sequence[Item]) -> int:
    """What `items` cost the model, in the DrainRate's unit."""
    return sum(item.length * item.width for item in items)


@dataclass
class _Failed:
    error: Exception


def select_batch(queue: Sequence[Item], max_items: int, max_tokens: int) -> list[Item]:
    """The oldest item plus the queued items nearest to it in length that fit, shortest first.

    Fits: at most `max_items` items and len(batch) x longest x widest <= `max_tokens`. The oldest
    item always goes, even alone over the budget: the budget shapes batches, it rejects nothing.
    """
    anchor = queue[0]
    # sorted() is stable: items equally near keep their arrival order
    nearest = sorted(queue, key=lambda item: abs(item.length - anchor.length))
    batch: list[Item] = []
    longest = widest = 0
    for item in nearest:
        if len(batch) == max_items:
            break
        grown_longest, grown_widest = max(longest, item.length), max(widest, item.width)
        if batch and (len(batch) + 1) * grown_longest * grown_widest > max_tokens:
            continue  # a shorter or narrower item further on may still fit
        batch.append(item)
        longest, widest = grown_longest, grown_widest
    return sorted(batch, key=lambda item: item.length)


class ModelLoop:
    """One asyncio task that feeds one model. The model runs in a thread of its own, so the event
    loop keeps serving HTTP while it computes. Subclasses write `_loop`."""

    def __init__(self, model: str, kind: str, max_queue: int, executor: ThreadPoolExecutor | None = None,
                 max_queue_wait_s: float | None = None):
        self.model = model
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_s  # None: never refuse for the wait
        self._kind = kind
        self._metrics = metrics.ModelMetrics.of(model)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # another loop's executor, to take turns with it in the one thread of the same model
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind}-{model}")
        self.room = Room()  # requests held for room (Overloaded.room), woken as requests leave the queue

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self._kind}-{self.model}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The model's thread."""
        return self._executor

    @property
    def busy(self) -> bool:
        """Whether the model has work in hand (a batch running, or sequences being generated)."""
        raise NotImplementedError

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        raise NotImplementedError

    def queued(self) -> int:
        """Items (texts, prompts) waiting for the model."""
        raise NotImplementedError

    def expected_wait_s(self) -> float | None:
        """A lower bound on how long a newcomer waits before the model starts on it; None when
        there is nothing measured to go by, or too little queued ahead to refuse for."""
        raise NotImplementedError

    def refusal(self, items: int) -> Overloaded | None:
        """Why `items` more may not queue now (Overloaded), else None."""
        if self.queued() + items > self.max_queue:
            return Overloaded(f"{self.model}: {self.queued()} items queued, limit {self.max_queue} "
                              "(RNNSERVE_MAX_QUEUE); retry later", room=self.room)
        if self.max_queue_wait_s is None:
            return None
        wait_s = self.expected_wait_s()
        if wait_s is not None and wait_s > self.max_queue_wait_s:
            return Overloaded(f"{self.model}: this request would wait ~{wait_s:.2f} s for the "
                              f"model ({self.queued()} queued ahead), over the {self.max_queue_wait_s:g} "
                              "s limit (RNNSERVE_MAX_QUEUE_WAIT_S); retry later", room=self.room)
        return None

    def check_room(self, items: int) -> None:
        """Raise Overloaded unless `items` more may queue: they fit in the queue, and the work
        ahead of them drains within the wait limit."""
        refusal = self.refusal(items)
        if refusal is not None:
            raise refusal


class Batcher(ModelLoop, Generic[V, R]):
    """Batches `run_batch(values) -> results` (one result per value, same order) for one model."""

    def __init__(self, model: str, run_batch: Callable[[list[V]], list[R]], *, max_batch_size: int,
                 max_batch_tokens: int, max_wait_s: float, max_queue: int, inline_max_tokens: int = 0,
                 others_busy: Callable[[], bool] = lambda: False, executor: ThreadPoolExecutor | None = None,
                 max_queue_wait_s: float | None = None):
        super().__init__(model, "batcher", max_queue, executor, max_queue_wait_s)
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_wait_s = max_wait_s
        self._inline_max_tokens = inline_max_tokens
        self._others_busy = others_busy  # other models of this worker: their loops need the event loop
        self._queue: list[Item[V]] = []
        self._queued_work = 0  # work_of(self._queue)
        self._in_flight = False
        self.drain_rate = DrainRate()
        self._requests = itertools.count(1)  # Item.request

    @property
    def busy(self) -> bool:
        return self._in_flight or bool(self._queue)

    def queued(self) -> int:
        return len(self._queue)

    def expected_wait_s(self) -> float | None:
        if len(self._queue) < self._max_batch_size and self._queued_work < self._max_batch_tokens:
            return None  # less than a full batch ahead: it may run in the very next batch
        if self.drain_rate.per_s is None:
            return None
        return self._queued_work / self.drain_rate.per_s

    def _set_queue(self, queue: list[Item[V]]) -> None:
        """Replace the queue; requests with no item left in it (taken into a batch, or gone) make
        room for as many newcomers: each held request woken (Overloaded.room) finds the room one
        of them left."""
        left = {item.request for item in self._queue} - {item.request for item in queue}
        self._queue = queue
        self._queued_work = work_of(queue)
        self.room.free(len(left))

    async def close(self) -> None:
        await super().close()
        for item in self._queue:
            item.future.cancel()

    async def submit(self, values: Sequence[V], lengths: Sequence[int],
                     widths: Sequence[int] | None = None) -> list[R]:
        """Results for `values` (of `lengths` tokens, needing `widths` rows each), in order."""
        if not self.running:
            raise RuntimeError(f"the {self.model} batcher is not running")
        self.check_room(len(values))
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        widths = widths if widths is not None else [1] * len(values)
        request = next(self._requests)
        items = [Item(value, length, width, loop.create_future(), now, request)
                 for value, length, width in zip(values, lengths, widths, strict=True)]
        observe_length = self._metrics.input_length.observe
        for length in lengths:
            observe_length(length)
        self._queue.extend(items)
        self._queued_work += work_of(items)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            # an item failed or the request went away: its other items need not run
            for item in items:
                item.future.cancel()

    async def _loop(self) -> None:
        busy, last_size = False, 1
        while True:
            self._set_queue([item for item in self._queue if not item.future.done()])
            if not self._queue:
                busy = False
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if busy and self._max_wait_s > 0:
                await self._wait_for_more()
                self._set_queue([item for item in self._queue if not item.future.done()])
                if not self._queue:
                    continue
            batch = select_batch(self._queue, self._max_batch_size, self._max_batch_tokens)
            taken = set(map(id, batch))
            self._set_queue([item for item in self._queue
                             if id(item) not in taken and not item.future.done()])
            # Woken from idle by one short item and nothing else, after a batch of one, while the
            # worker's other models rest: the load is light, with no other request to parse and no
            # other model to feed while this one runs. (After a larger batch more requests are on
            # their way; a translation batch or a generation step waits for the event loop too.)
            inline = (not busy and not self._queue and len(batch) == 1 and last_size == 1
                      and batch[0].length <= self._inline_max_tokens and batch[0].width == 1
                      and not self._others_busy())
            busy, last_size = True, len(batch)
            full = bool(self._queue)  # select_batch leaves items only when the batch is full
            self._in_flight = True
            started = time.perf_counter()
            try:
                await self._run(batch, inline)
            finally:
                self._in_flight = False
            if full:
                self.drain_rate.add(work_of(batch), time.perf_counter() - started)

    async def _wait_for_more(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(self._queue) < self._max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self, batch: list[Item[V]], inline: bool = False) -> None:
        started = time.perf_counter()
        lengths = [item.length for item in batch]
        self._metrics.batch_size.observe(len(batch))
        self._metrics.padding_efficiency.observe(sum(lengths) / (len(batch) * max(lengths)))
        observe_wait = self._metrics.queue_wait_seconds.observe
        for item in batch:
            observe_wait(started - item.enqueued)
        values = [item.value for item in batch]
        try:
            if inline:
                results, seconds = self._compute(values)
            else:
                results, seconds = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._compute, values)
            self._metrics.compute_seconds.observe(seconds)
        except Exception as error:  # the executor itself failed: fail this batch, keep serving
            log.exception("%s: batch of %d could not run", self.model, len(batch))
            results = [_Failed(error)] * len(batch)
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, _Failed):
                item.future.set_exception(result.error)
            else:
                item.future.set_result(result)

    def _compute(self, values: list[V]) -> tuple[list[R | _Failed], float]:
        """In the model's thread: results and model seconds for `values`."""
        started = time.perf_counter()
        results = self._results(values)
        return results, time.perf_counter() - started

    def _results(self, values: list[V]) -> list[R | _Failed]:
        """The batch at once, or item by item if the batch fails."""
        with torch.inference_mode():
            try:
                results = self._run_batch(values)
                if len(results) != len(values):
                    raise RuntimeError(f"{len(results)} results for {len(values)} inputs")
                return list(results)
            except Exception as error:
                if len(values) == 1:
                    log.exception("%s: item failed", self.model)
                    return [_Failed(error)]
                log.exception("%s: batch of %d failed; retrying its items one by one",
                              self.model, len(values))
            outcomes: list[R | _Failed] = []
            for value in values:
                try:
                    outcomes.append(self._run_batch([value])[0])
                except Exception as error:
                    outcomes.append(_Failed(error))
            return outcomes
