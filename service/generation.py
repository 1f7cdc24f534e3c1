"""Step-level (continuous) batching for the character generator.

One loop holds every running sequence as one row of a batch: its recurrent state, the last
character it sampled (not yet read by the model), its temperature, top-k and its own
torch.Generator. Each step advances the whole batch by one character (CharLM.step) and samples
the next one for every row (models.generator.sample_next). Between steps, new requests join:
their prompt is run once by CharGenerator.prime, their first character is sampled from its
logits and handed to the event loop at once, before the batch's next step, and their state is
concatenated to the batch. Finished or abandoned sequences leave (their rows are dropped with
select_state). The state of an RNN is a fixed-size tensor per sequence, so joining and leaving
cost a concatenation or an index_select, unlike a transformer's growing KV cache.

Every character goes to its request's asyncio.Queue as soon as the step that sampled it ends,
so a stream is incremental. A row draws only from its own generator, so the same seed gives
the same text alone or beside any other requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.generator import CharGenerator, sample_next
from models.rnn import State, cat_states, select_state
from service import metrics
from service.batching import ModelLoop

log = logging.getLogger(__name__)

# Without newcomers the loop runs steps back to back in its thread and hands out characters this
# often: one thread hop and one HTTP chunk per character would cost more than a tiny model's step.
PUBLISH_EVERY_S = 0.01


@dataclass(eq=False)
class Generation:
    """One request's sequence."""

    prompt: str
    max_tokens: int
    temperature: float
    top_k: int
    generator: torch.Generator
    endpoint: str  # metrics label: generate or generate_stream
    enqueued: float  # time.perf_counter()
    # the loop puts: a list of new characters, then None at the end, or an exception
    pieces: asyncio.Queue[list[str] | BaseException | None] = field(default_factory=asyncio.Queue)
    produced: int = 0  # characters sampled (executor thread)
    sent: int = 0  # characters handed to the client's queue (event loop)
    abandoned: bool = False  # the client went away: drop the row at the next step
    logprobs: int = 0  # alternatives per character in log_probs (0: no log_probs)
    # with logprobs: one entry per sampled character (models.generator.CharGenerator.
    # log_prob_entries), appended by the executor thread before the character is handed out
    log_probs: list[dict] = field(default_factory=list)


@dataclass
class _Steps:
    """What one call of GenerationLoop._run_steps did."""

    emitted: dict[Generation, list[str]]  # new characters per sequence
    finished: list[Generation]
    failed: list[tuple[Generation, Exception]]  # sequences whose prompt could not be primed
    rows: list[int]  # batch size of each step
    seconds: list[float]  # model time of each step


class GenerationLoop(ModelLoop):
    def __init__(self, model: str, pipeline: CharGenerator, *, max_active: int, max_queue: int):
        super().__init__(model, "generation", max_queue)
        self.pipeline = pipeline
        self._max_active = max_active
        self._pending: deque[Generation] = deque()
        # The running batch. Only _step touches it, in the executor thread; the event loop
        # awaits each step before starting the next, so the two never overlap.
        self._active: list[Generation] = []
        self._state: State = ()
        self._tokens = torch.empty(0, dtype=torch.long)  # (B,) each row's last sampled character
        self._temperature = torch.empty(0)  # (B,)
        self._top_k = torch.empty(0, dtype=torch.long)  # (B,)

    @property
    def busy(self) -> bool:
        return bool(self._active or self._pending)

    def queued(self) -> int:
        return len(self._pending)

    async def stream(self, prompt: str, max_tokens: int, temperature: float, top_k: int,
                     seed: int | None, endpoint: str) -> AsyncIterator[list[str]]:
        """The characters of one continuation, in lists of those ready together."""
        async for chars, _ in self.stream_with_log_probs(prompt, max_tokens, temperature, top_k,
                                                         seed, endpoint, 0):
            yield chars

    async def stream_with_log_probs(self, prompt: str, max_tokens: int, temperature: float,
                                    top_k: int, seed: int | None, endpoint: str, logprobs: int
                                    ) -> AsyncIterator[tuple[list[str], list[dict]]]:
        """`stream`, with each list of characters their log-probability entries (none when
        `logprobs` is 0)."""
        if not self.running:
            raise RuntimeError(f"the {self.model} generation loop is not running")
        self.check_room(1)
        seed = secrets.randbits(63) if seed is None else seed
        generation = Generation(prompt, max_tokens, temperature, top_k,
                                torch.Generator().manual_seed(seed), endpoint, time.perf_counter(),
                                logprobs=logprobs)
        self._pending.append(generation)
        self._wakeup.set()
        read = 0  # characters yielded
        try:
            while True:
                batch = [await generation.pieces.get()]
                while not generation.pieces.empty():
                    batch.append(generation.pieces.get_nowait())
                chars = [c for piece in batch if isinstance(piece, list) for c in piece]
                if chars:
                    yield chars, generation.log_probs[read:read + len(chars)] if logprobs else []
                    read += len(chars)
                end = batch[-1]
                if isinstance(end, BaseException):
                    raise end
                if end is None:
                    return
        finally:
            generation.abandoned = True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # what _run_steps hands out from the executor thread, the event loop publishes
        publish_soon = functools.partial(loop.call_soon_threadsafe, self._publish)
        while True:
            if not self._pending and not self._active:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            joining: list[Generation] = []
            while self._pending and len(self._active) + len(joining) < self._max_active:
                generation = self._pending.popleft()
                if not generation.abandoned:
                    joining.append(generation)
            now = time.perf_counter()
            for generation in joining:
                self._metrics.queue_wait_seconds.observe(now - generation.enqueued)
            try:
                steps = await loop.run_in_executor(self._executor, self._run_steps, joining,
                                                   publish_soon)
            except Exception as error:  # a model step failed: every running sequence fails
                log.exception("%s: generation step failed", self.model)
                for generation in {*self._active, *joining}:
                    generation.pieces.put_nowait(error)
                self._reset()
                continue
            self._publish(steps)

    def _publish(self, steps: _Steps) -> None:
        """In the event loop: hand out the new characters and record the steps' metrics."""
        for generation, error in steps.failed:
            generation.pieces.put_nowait(error)
        metrics.active_sequences.set(len(self._active))
        for rows, seconds in zip(steps.rows, steps.seconds, strict=True):
            self._metrics.batch_size.observe(rows)
            self._metrics.compute_seconds.observe(seconds)
        now = time.perf_counter()
        per_endpoint: Counter[str] = Counter()
        for generation, chars in steps.emitted.items():
            if not generation.sent:  # its first characters
                metrics.time_to_first_token_seconds.labels(generation.endpoint).observe(
                    now - generation.enqueued)
            generation.sent += len(chars)
            per_endpoint[generation.endpoint] += len(chars)
            generation.pieces.put_nowait(chars)
        for generation in steps.finished:
            generation.pieces.put_nowait(None)
        for endpoint, count in per_endpoint.items():
            metrics.generated_tokens.labels(endpoint).inc(count)

    def _run_steps(self, joining: list[Generation],
                   publish: Callable[[_Steps], None]) -> _Steps:
        """In the executor thread: admit `joining`, then step the batch until there is news.

        A sequence that joins has its first character sampled from its prompt's logits, and
        `publish` hands it out at once, without waiting for a step of the batch. Then steps for up
        to PUBLISH_EVERY_S, stopping early when a request waits to join; returns those steps.
        """
        joined = _Steps({}, [], [], [], [])
        with torch.inference_mode():
            for generation in joining:
                self._metrics.input_length.observe(
                    len(self.pipeline.encode(generation.prompt)))
                try:
                    logits, state = self.pipeline.prime(generation.prompt)  # (V,), (L, 1, H)
                except Exception as error:
                    log.exception("%s: prompt could not be primed", self.model)
                    joined.failed.append((generation, error))
                    continue
                self._join(generation, logits, state, joined)
            if joining:
                publish(joined)
            steps = _Steps({}, [], [], [], [])
            started = time.perf_counter()
            while True:
                self._keep([row for row, g in enumerate(self._active) if not g.abandoned])
                if not self._active:
                    break
                step_started = time.perf_counter()
                steps.rows.append(len(self._active))
                self._step(steps)
                steps.seconds.append(time.perf_counter() - step_started)
                newcomers = self._pending and len(self._active) < self._max_active
                if newcomers or not self._active or time.perf_counter() - started > PUBLISH_EVERY_S:
                    break
        return steps

    def _step(self, steps: _Steps) -> None:
        """Advance every row by its last character, sample the next ones, drop finished rows."""
        logits, self._state = self.pipeline.module.step(self._tokens, self._state)  # (B, V)
        self._tokens = sample_next(logits, self._temperature, self._top_k,
                                   [g.generator for g in self._active])  # (B,)
        self._record_log_probs(self._active, logits, self._temperature, self._top_k, self._tokens)
        self._keep([row for row, (generation, token)
                    in enumerate(zip(self._active, self._tokens.tolist(), strict=True))
                    if self._emit(generation, token, steps)])

    def _emit(self, generation: Generation, token: int, steps: _Steps) -> bool:
        """Record one sampled character. Whether the sequence goes on."""
        generation.produced += 1
        steps.emitted.setdefault(generation, []).append(self.pipeline.decode([token]))
        if generation.produced < generation.max_tokens:
            return True
        steps.finished.append(generation)
        return False

    def _join(self, generation: Generation, logits: Tensor, state: State, steps: _Steps) -> None:
        """Sample the first character from the prompt's logits (V,); a row if more are due."""
        temperature = torch.tensor([generation.temperature])
        top_k = torch.tensor([generation.top_k])
        token = sample_next(logits[None], temperature, top_k, [generation.generator])  # (1,)
        self._record_log_probs([generation], logits[None], temperature, top_k, token)
        if not self._emit(generation, int(token[0]), steps):
            return
        if not self._active:
            self._state, self._tokens, self._temperature, self._top_k = state, token, temperature, top_k
        else:
            self._state = cat_states([self._state, state])
            self._tokens = torch.cat([self._tokens, token])  # (B + 1,)
            self._temperature = torch.cat([self._temperature, temperature])
            self._top_k = torch.cat([self._top_k, top_k])
        self._active.append(generation)

    def _record_log_probs(self, rows: list[Generation], logits: Tensor, temperature: Tensor,
                          top_k: Tensor, tokens: Tensor) -> None:
        """Append each asking row's log-probability entry for its sampled token, before the token
        is handed out. logits (B, V), temperature, top_k, tokens (B,)."""
        asking = [row for row, generation in enumerate(rows) if generation.logprobs]
        if not asking:
            return
        index = torch.tensor(asking)
        k = max(rows[row].logprobs for row in asking)
        entries = self.pipeline.log_prob_entries(logits.index_select(0, index),
                                                 temperature.index_select(0, index),
                                                 top_k.index_select(0, index),
                                                 tokens.index_select(0, index), k)
        for row, entry in zip(asking, entries, strict=True):
            generation = rows[row]
            entry["top"] = entry["top"][:generation.logprobs]
            generation.log_probs.append(entry)

    def _keep(self, rows: list[int]) -> None:
        """Keep only batch rows `rows` (in order)."""
        if len(rows) == len(self._active):
            return
        if not rows:
            self._reset()
            return
        index = torch.tensor(rows)
        self._state = select_state(self._state, index)
        self._tokens = self._tokens.index_select(0, index)  # (B',)
        self._temperature = self._temperature.index_select(0, index)
        self._top_k = self._top_k.index_select(0, index)
        self._active = [self._active[row] for row in rows]

    def _reset(self) -> None:
        self._active = []
        self._state = ()
        self._tokens = torch.empty(0, dtype=torch.long)
        self._temperature = torch.empty(0)
        self._top_k = torch.empty(0, dtype=torch.long)
