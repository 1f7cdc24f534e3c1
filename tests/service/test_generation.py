"""service.generation without HTTP: continuous batching gives each request its unbatched text."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
import torch
from bentoml.exceptions import InvalidArgument

from models.generator import CharGenerator
from service import generation as generation_module
from service.batching import Overloaded
from service.generation import Generation, GenerationLoop, StepTimes, finish_steps, join_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def collect(loop: GenerationLoop, prompt: str, max_tokens: int, seed: int | None,
                  temperature: float = 0.8, top_k: int = 0) -> tuple[str, int]:
    """The text and the number of chunks it came in."""
    chunks = [c async for c in loop.stream(prompt, max_tokens, temperature, top_k, seed, "generate")]
    return "".join(ch for chunk in chunks for ch in chunk), len(chunks)


def test_alone_or_joining_a_running_batch_each_request_gets_its_unbatched_text(generator):
    requests = [("To be", 200, 1, 0.8, 0), ("", 40, 2, 1.5, 5), ("Hello\n", 120, 3, 0.3, 0),
                ("Q", 1, 4, 1.0, 3), ("To be", 200, 1, 0.8, 0)]

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=3, max_queue=10)
        loop.start()
        tasks = []
        for prompt, max_tokens, seed, temperature, top_k in requests:
            tasks.append(asyncio.create_task(collect(loop, prompt, max_tokens, seed, temperature, top_k)))
            await asyncio.sleep(0.005)  # arrive while the others run
        answers = await asyncio.gather(*tasks)
        await loop.close()
        return answers

    answers = asyncio.run(scenario())
    for (prompt, max_tokens, seed, temperature, top_k), (text, _) in zip(requests, answers, strict=True):
        assert text == generator.generate(prompt, max_tokens, temperature, top_k, seed=seed)
    assert answers[0][0] == answers[-1][0]


def test_a_newcomers_first_character_waits_for_no_step_of_the_batch(generator):
    loop = GenerationLoop("test", generator, max_active=4, max_queue=10)  # driven by hand

    def request(prompt: str, seed: int) -> Generation:  # longer than one call's steps
        return Generation(prompt, 100_000, 0.8, 0, torch.Generator().manual_seed(seed),
                          "generate", 0.0)

    published = []
    running, newcomer = request("To be", 1), request("Hello", 2)
    stepped = loop._run_steps([running], published.append)
    assert stepped.rows and stepped.emitted[running]
    assert len(published) == 1 and published[0].rows == []
    assert {g: len(chars) for g, chars in published[0].emitted.items()} == {running: 1}

    stepped = loop._run_steps([newcomer], published.append)
    # handed out before the step that advanced the running sequence along with it
    assert published[1].rows == []
    assert {g: len(chars) for g, chars in published[1].emitted.items()} == {newcomer: 1}
    assert stepped.rows and set(stepped.emitted) == {running, newcomer}
    assert len(loop._active) == 2


def test_a_long_generation_streams_in_several_chunks(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        answer = await collect(loop, "a", 600, seed=5)
        await loop.close()
        return answer

    text, chunks = asyncio.run(scenario())
    assert len(text) == 600
    assert chunks > 1


def test_the_loop_is_busy_while_it_generates(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        before = loop.busy
        seen = []
        async for _ in loop.stream("a", 1000, 0.8, 0, 5, "generate"):
            seen.append(loop.busy)
        after = loop.busy  # the row left the batch before its last characters were handed out
        await loop.close()
        return before, seen, after

    before, seen, after = asyncio.run(scenario())
    assert before is False and after is False
    assert len(seen) > 4  # 1,000 characters come in several chunks
    # a chunk is read while the model thread runs the next call, which may be the one that ends
    # the sequence: so every chunk but the last two arrives with its sequence still running
    assert all(seen[:-2])


def test_an_abandoned_request_leaves_the_batch(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        stream = loop.stream("x", 2000, 0.8, 0, 1, "generate_stream")
        await anext(stream)
        await stream.aclose()  # the client went away
        kept = await collect(loop, "y", 50, seed=2)
        await asyncio.sleep(0.05)
        active = len(loop._active)
        await loop.close()
        return kept, active

    (text, _), active = asyncio.run(scenario())
    assert text == generator.generate("y", 50, 0.8, 0, seed=2)
    assert active == 0


def test_a_full_queue_answers_overloaded(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=1, max_queue=1)
        loop.start()
        running = asyncio.create_task(collect(loop, "a", 2000, seed=1))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(collect(loop, "b", 5, seed=1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await collect(loop, "c", 5, seed=1)
        running.cancel()  # its row leaves, the waiting request joins
        text, _ = await waiting
        await loop.close()
        return text

    assert asyncio.run(scenario()) == generator.generate("b", 5, seed=1)


class PoisonedGenerator(CharGenerator):
    """The same model, but the prompt POISON primes a NaN state: its row's logits are NaN from
    its first step of the batch on (a fault the model cannot be asked for, only suffer)."""

    def prime(self, prompt: str):
        logits, state = super().prime(prompt)
        if prompt == POISON:
            state = tuple(torch.full_like(part, float("nan")) for part in state)
        return logits, state


POISON = "POISON"
GOOD = [("To be", 150, 1, 0.8, 0), ("", 120, 2, 1.5, 5), ("Hello\n", 160, 3, 0.3, 0),
        ("Q", 90, 4, 1e-30, 0), ("To be", 140, 5, 0.0, 2**62)]


async def raw(loop: GenerationLoop, prompt: str, temperature: float, top_k: int) -> BaseException:
    """A sequence put straight into the loop, past stream()'s checks; the error it ends with."""
    generation = Generation(prompt, 100, temperature, top_k, torch.Generator().manual_seed(1),
                            "generate", 0.0)
    loop._pending.append(generation)
    loop._wakeup.set()
    while True:
        piece = await generation.pieces.get()
        if piece is None:
            raise AssertionError("a poisoned sequence ended normally")
        if isinstance(piece, BaseException):
            return piece


def test_poisoned_sequences_fail_alone_and_every_other_text_is_its_unloaded_one(generator):
    poisoned = PoisonedGenerator(generator.module, generator.vocab)

    async def scenario():
        loop = GenerationLoop("test", poisoned, max_active=4, max_queue=20)
        loop.start()
        good = [asyncio.create_task(collect(loop, p, n, s, t, k)) for p, n, s, t, k in GOOD[:3]]
        await asyncio.sleep(0.005)  # they run; the poisons join them mid-way
        bad = [asyncio.create_task(raw(loop, POISON, 0.8, 0)),  # fails at its first batch step
               asyncio.create_task(raw(loop, "a", 0.8, 2**64)),  # top_k overflows a tensor
               asyncio.create_task(raw(loop, "a", float("nan"), 0))]  # cannot be sampled
        good += [asyncio.create_task(collect(loop, p, n, s, t, k)) for p, n, s, t, k in GOOD[3:]]
        answers = await asyncio.gather(*good)
        failures = await asyncio.gather(*bad)
        after = await collect(loop, "after", 50, 9)  # the loop goes on serving
        await loop.close()
        return answers, failures, after

    answers, failures, after = asyncio.run(scenario())
    for (prompt, max_tokens, seed, temperature, top_k), (text, _) in zip(GOOD, answers, strict=True):
        assert text == generator.generate(prompt, max_tokens, temperature, top_k, seed=seed)
    assert [type(error) for error in failures] == [ValueError] * 3
    assert "cannot be sampled" in str(failures[0]) and "cannot be sampled" in str(failures[2])
    assert "Overflow" in str(failures[1])
    assert after[0] == generator.generate("after", 50, 0.8, 0, seed=9)


def test_a_temperature_of_zero_is_greedy_and_needs_no_seed(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        texts = [await collect(loop, "To be", 40, seed, 0.0) for seed in (None, 7)]
        top_1 = await collect(loop, "To be", 40, 3, 1.0, 1)
        await loop.close()
        return texts, top_1

    (first, second), top_1 = asyncio.run(scenario())
    assert first[0] == second[0] == top_1[0]


@pytest.mark.parametrize(("options", "words"), [
    ({"temperature": float("nan")}, "temperature"), ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"top_k": -1}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"), ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed")])
def test_options_the_model_cannot_honour_are_a_client_error_before_queueing(generator, options, words):
    request = {"prompt": "a", "max_tokens": 5, "temperature": 0.8, "top_k": 0, "seed": 1, **options}

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        with pytest.raises(InvalidArgument, match=words):
            await anext(loop.stream(endpoint="generate", **request))
        queued = loop.queued()
        await loop.close()
        return queued

    assert asyncio.run(scenario()) == 0


def test_seeds_at_the_bounds_give_their_unbatched_text(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        texts = await asyncio.gather(*(collect(loop, "a", 30, seed) for seed in (0, 2**63 - 1, 2**64 - 1)))
        await loop.close()
        return texts

    for seed, (text, _) in zip((0, 2**63 - 1, 2**64 - 1), asyncio.run(scenario()), strict=True):
        assert text == generator.generate("a", 30, seed=seed)


# -- shedding what cannot finish before the deadline ------------------------------------------------


def test_finish_steps_counts_the_queue_ahead_slot_by_slot():
    # room in the batch: joins at once; its first character comes from the prompt
    assert finish_steps([50, 80], [], max_active=4, max_tokens=100) == 99
    assert finish_steps([50, 80], [30], max_active=4, max_tokens=100) == 99
    # a full batch: waits for the first row to leave, however long the others run
    assert finish_steps([5, 1000, 1000, 1000], [], max_active=4, max_tokens=100) == 104
    # queued requests take the slots first, each as it frees: 5 -> 5+40, then the newcomer at 45
    assert finish_steps([5, 1000, 1000, 1000], [40], max_active=4, max_tokens=100) == 144
    assert finish_steps([5, 10, 1000, 1000], [40, 40], max_active=4, max_tokens=1) == 45
    # idle
    assert finish_steps([], [], max_active=1, max_tokens=1) == 0


def test_a_request_that_would_end_past_the_deadline_is_refused_at_once(generator):
    loop = GenerationLoop("test", generator, max_active=2, max_queue=10, deadline_s=10.0)
    loop.check_deadline(10**6)  # no step measured yet: nothing to go by, nothing refused
    loop.step_times.add(1, 0.01, steps=1)  # 100 steps a second at every batch size
    loop.step_times.add(2, 0.01, steps=1)
    loop.check_deadline(1001)  # 1,000 steps (10 s) is the most that fits
    with pytest.raises(Overloaded, match="RNNSERVE_TIMEOUT_S"):
        loop.check_deadline(1002)
    running = [Generation("a", 600, 0.8, 0, torch.Generator(), "generate", 0.0) for _ in range(2)]
    running[0].produced = 100  # 500 steps to go before its slot frees
    loop._active = running
    loop.check_deadline(501)  # 500 + 500
    with pytest.raises(Overloaded):
        loop.check_deadline(502)
    loop._pending.append(Generation("b", 400, 0.8, 0, torch.Generator(), "generate", 0.0))
    # the queued one takes the slot that frees at 500 (until 900): the newcomer joins at 600
    loop.check_deadline(401)
    with pytest.raises(Overloaded):
        loop.check_deadline(402)


def test_a_batch_size_not_measured_yet_is_predicted_from_the_largest_smaller_one():
    times = StepTimes()
    assert times.predict(1) is None
    times.add(3, 0.004, steps=1)  # size class 4
    assert times.predict(4) == times.predict(3) == 0.004
    assert times.predict(1) is None  # only a larger size measured: nothing to go by
    assert times.predict(16) == 0.004  # a lower bound: a step is never faster with more rows
    times.add(9, 0.006, steps=100)  # size class 16: from size 4's, 100 steps move it most of the way
    assert 0.005 < times.predict(64) < 0.006 and times.predict(8) == 0.004
    times.add(4, 0.002, steps=100)  # a moving average: 100 steps move it most of the way
    assert 0.002 < times.predict(4) < 0.003
    times.add(32, 10.0, steps=1)  # one stalled step at a new size does not set its time alone
    assert times.predict(32) < 0.2


def test_the_step_time_is_measured_as_the_loop_runs(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10, deadline_s=60.0)
        loop.start()
        before = loop.step_times.predict(1)
        await collect(loop, "a", 200, 1)
        await loop.close()
        return before, loop.step_times.predict(1)

    before, after = asyncio.run(scenario())
    assert before is None
    assert after is not None and 0 < after < 1


class FakeClock:
    """time.perf_counter for service.generation: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()  # the model thread and the event loop both move it

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def test_time_outside_the_model_steps_does_not_make_requests_look_too_long(generator, monkeypatch):
    # a step takes 1 ms of model time; a prompt 1 s; after every call into the model thread the
    # event loop is busy for 10 s (publishing, serving HTTP: under a flood of refused and at once
    # retried requests, the more it refuses the longer). Counting either in the step time made
    # requests that would finish look too long, and refusing them made the event loop busier.
    clock = FakeClock()
    monkeypatch.setattr(generation_module, "time", SimpleNamespace(perf_counter=clock))
    step, prime = generator.module.step, generator.prime

    def timed_step(*args):
        clock.advance(0.001)
        return step(*args)

    def timed_prime(*args):
        clock.advance(1.0)
        return prime(*args)

    monkeypatch.setattr(generator.module, "step", timed_step)
    monkeypatch.setattr(generator, "prime", timed_prime)

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10, deadline_s=1.0)
        publish = loop._publish

        def busy_publish(steps):
            if steps.rows:  # the loop's own call, between two calls into the model thread
                clock.advance(10.0)
            publish(steps)

        loop._publish = busy_publish
        loop.start()
        text, _ = await collect(loop, "a", 200, 1)
        await loop.close()
        return loop, text

    loop, text = asyncio.run(scenario())
    assert len(text) == 200
    assert clock.now > 20  # several calls into the model thread, each stepping for at most ~10 ms
    assert loop.step_times.predict(1) == pytest.approx(0.001)
    loop.check_deadline(900)  # 899 steps of 1 ms fit in the 1 s timeout
    with pytest.raises(Overloaded, match="RNNSERVE_TIMEOUT_S"):
        loop.check_deadline(1100)  # model time alone ends past it: still refused


# -- shedding what would wait too long for a row ----------------------------------------------------


def test_join_steps_counts_until_a_row_frees_for_the_newcomer():
    assert join_steps([50, 80], [], max_active=4) == 0  # room in the batch
    assert join_steps([5, 1000, 1000, 1000], [], max_active=4) == 5
    assert join_steps([5, 1000, 1000, 1000], [40], max_active=4) == 45  # the queued one goes first
    assert join_steps([5, 10, 1000], [40], max_active=4) == 5  # it takes the free row, then 5 frees


def test_a_request_that_would_wait_past_the_limit_for_a_row_is_refused(generator):
    loop = GenerationLoop("test", generator, max_active=2, max_queue=10, max_queue_wait_s=1.0)
    running = [Generation("a", 600, 0.8, 0, torch.Generator(), "generate", 0.0) for _ in range(2)]
    running[0].produced = 499  # 101 steps to go before its row frees
    loop._active = list(running)
    loop.check_room(1)  # no step measured yet: nothing to go by, nothing refused
    loop.step_times.add(2, 0.01, steps=1)  # 100 steps a second with the batch full
    with pytest.raises(Overloaded, match="RNNSERVE_MAX_QUEUE_WAIT_S") as error:
        loop.check_room(1)  # 101 steps: 1.01 s
    assert error.value.error_code == 429
    running[0].produced = 500
    loop.check_room(1)  # 100 steps: 1.0 s, within the limit
    loop._pending.append(Generation("b", 50, 0.8, 0, torch.Generator(), "generate", 0.0))
    with pytest.raises(Overloaded):
        loop.check_room(1)  # the queued one takes the row that frees first (at 100, until 150)
    running[1].abandoned = True  # its client left: its row is as good as free
    loop.check_room(1)


def test_a_free_row_is_never_refused_for_the_wait(generator):
    loop = GenerationLoop("test", generator, max_active=3, max_queue=10, max_queue_wait_s=0.001)
    loop.step_times.add(3, 10.0, steps=1)  # a step takes 10 s
    loop._active = [Generation("a", 10**6, 0.8, 0, torch.Generator(), "generate", 0.0)]
    loop._pending.append(Generation("b", 10**6, 0.8, 0, torch.Generator(), "generate", 0.0))
    loop.check_room(1)  # the third row is free


def test_each_request_that_ends_wakes_one_held_request_and_the_woken_one_is_admitted(generator):
    async def scenario():
        loop = GenerationLoop("test", generator, max_active=1, max_queue=1)
        loop.start()
        running = loop.stream("a", 10**6, 0.8, 0, 1, "generate")
        await anext(running)  # it has the one row
        waiting = asyncio.create_task(collect(loop, "b", 5, seed=1))
        await asyncio.sleep(0)  # it waits for the row
        assert loop.queued() == 1
        with pytest.raises(Overloaded) as error:
            loop.check_room(1)
        room = error.value.room
        held = [asyncio.ensure_future(room.wait(10)) for _ in range(3)]
        await running.aclose()  # its client went away: the waiting request takes its row
        await asyncio.wait(held, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)  # a turn for any other wake to land: none does
        assert [task.done() for task in held] == [True, False, False] and room.waiting == 2
        loop.check_room(1)  # the woken one fits: the queue holds nothing a free row won't take
        woken = asyncio.create_task(collect(loop, "c", 5, seed=2))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            loop.check_room(1)  # and the room it was woken for is taken
        texts = [text for text, _ in await asyncio.gather(waiting, woken)]
        await asyncio.wait(held, return_when=asyncio.ALL_COMPLETED)
        assert all(task.result() for task in held)  # one wake per request that ended
        await loop.close()
        return texts

    assert asyncio.run(scenario()) == [generator.generate("b", 5, seed=1), generator.generate("c", 5, seed=2)]
