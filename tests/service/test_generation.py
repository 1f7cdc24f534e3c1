"""service.generation without HTTP: continuous batching gives each request its unbatched text."""

from __future__ import annotations

import asyncio

import pytest
import torch

from service.batching import Overloaded
from service.generation import Generation, GenerationLoop

from support.tiny_models import make_tiny_generator


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As the service runs (RNNSERVE_TORCH_THREADS=1): two threads each wanting every core crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["gru", "lstm"])
def generator(request):
    return make_tiny_generator(cell=request.param)


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
        seen = [loop.busy]
        async for _ in loop.stream("a", 300, 0.8, 0, 5, "generate"):
            seen.append(loop.busy)
        await asyncio.sleep(0.05)
        seen.append(loop.busy)
        await loop.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is False and seen[-1] is False
    assert len(seen) > 4  # 300 characters come in several chunks
    assert all(seen[1:-2])  # every chunk but the last arrives with its sequence still running


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
