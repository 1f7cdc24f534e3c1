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

One sequence cannot fail the others: options the model cannot honour are refused before a
request joins (400), and when priming, sampling or a step of the batch raises anyway, the rows
are run one by one and only the row that raises fails. A row alone computes what it computes in
the batch, and sampling raises before any row draws, so every other sequence's text is the one
it would have been.

A sequence can also go on from a saved one (service.sessions): it joins by reading only its
pending character and any new prompt from the saved state, never its history, and a row that
finishes and asked for its state leaves it (models.sequence_state) before its row is dropped.

A request that cannot finish within the deadline (RNNSERVE_TIMEOUT_S) is refused at once with
Overloaded (429 + Retry-After) instead of waiting to time out: `finish_steps` counts the steps
until its last character from the queue ahead of it, and `StepTimes`, the model thread's
measured seconds per step at the batch size it will run with, turns them into seconds. So is one that
would wait longer than RNNSERVE_MAX_QUEUE_WAIT_S for a row of the batch to free (`join_steps`
the same way), so that the queue stays short and a request after an overload is served at once.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import torch
from bentoml.exceptions import InvalidArgument
from torch import Tensor

from models.generator import CharGenerator, check_sampling, clamp_top_k, sample_next
from models.rnn import State, cat_states, select_state
from models.sequence_state import SequenceState
from service import metrics
from service.batching import ModelLoop
from service.errors import Overloaded

log = logging.getLogger(__name__)

# Without newcomers the loop runs steps back to back in its thread and hands out characters this
# often: one thread hop and one HTTP chunk per character would cost more than a tiny model's step.
PUBLISH_EVERY_S = 0.01
# How fast a measured seconds-per-step follows the latest steps: each step weighs this much.
STEP_TIME_WEIGHT = 0.01
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


def join_steps(remaining: Iterable[int], queued: Iterable[int], max_active: int) -> int:
    """Steps of the batch until a newcomer gets a row.

    `remaining`: the characters each running row still owes; `queued`: max_tokens of each
    request waiting ahead, in order. A row leaves the batch when it has its characters, and the
    next waiting request takes its place (at most `max_active` rows): the newcomer joins when
    every request ahead of it has a row and one more row frees. Rows leaving early (clients
    gone) only make it sooner.
    """
    frees = sorted(remaining)[:max_active]  # (step at which each row's slot frees)
    heapq.heapify(frees)
    for tokens in queued:
        if len(frees) < max_active:
            heapq.heappush(frees, tokens)
        else:
            heapq.heapreplace(frees, frees[0] + tokens)
    return 0 if len(frees) < max_active else frees[0]


def finish_steps(remaining: Iterable[int], queued: Iterable[int], max_active: int,
                 max_tokens: int) -> int:
    """Steps of the batch until a newcomer asking for `max_tokens` characters has its last one:
    it joins (`join_steps`), then needs max_tokens - 1 steps (its first character comes from its
    prompt)."""
    return join_steps(remaining, queued, max_active) + max_tokens - 1


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
    # sessions (service.sessions): the saved sequence it continues, whether to save its final
    # one, and that final sequence (set in the executor thread before its end is published)
    resume: SequenceState | None = None
    return_state: bool = False
    final: SequenceState | None = None
    logprobs: int = 0  # alternatives per character in log_probs (0: no log_probs)
    # with logprobs: one entry per sampled character (models.generator.CharGenerator.
    # log_prob_entries), appended by the executor thread before the character is handed out
    log_probs: list[dict] = field(default_factory=list)


@dataclass
class _Steps:
    """What one call of GenerationLoop._run_steps did."""

    emitted: dict[Generation, list[str]]  # new characters per sequence
    finished: list[Generation]
    failed: list[tuple[Generation, Exception]]  # sequences that raised (joining or stepping)
    rows: list[int]  # batch size of each step
    seconds: list[float]  # model time of each step


class StepTimes:
    """Seconds per step of the batch as the model thread has measured them, by batch size.

    Only a step's own model time counts: not the time between the loop's calls into the model
    thread (the event loop publishing and serving HTTP, 429s included), nor a newcomer's prompt.
    The time between calls grows with the requests answered meanwhile, so counting it let a flood
    of refused and at once retried requests raise the step time, which refused more of them: the
    generator could settle into refusing most requests. What is left is a lower bound on a step's
    wall time, which is what refusing only the requests that cannot finish needs.

    A step's time grows with its rows, so each power-of-two size class has its own moving
    average, which starts from the size's prediction. A size not measured yet is predicted from
    the largest smaller one measured: a lower bound, since a step never gets faster with more
    rows. (Scaling it up in rows overestimates a model whose step time is mostly fixed cost, and
    sheds requests that would finish.) With no smaller size measured there is nothing to go by
    (None). A request is refused only when even this estimate ends past the deadline; one
    admitted on too short an estimate still ends at RNNSERVE_TIMEOUT_S, with 504.
    """

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}  # size class -> seconds per step

    @staticmethod
    def size_class(rows: int) -> int:
        """The power of two at or above `rows` (1, 2, 4, ...)."""
        return 1 << max(0, rows - 1).bit_length()

    def add(self, rows: int, seconds_per_step: float, steps: int) -> None:
        size = self.size_class(rows)
        # A new size starts from its prediction, not from its first steps: taken whole, one step
        # stalled past the deadline's rate refuses every request that would run at that size,
        # so no step of that size ever runs to correct it.
        old = self._seconds.get(size, self.predict(rows))
        self._seconds[size] = seconds_per_step if old is None else (
            old + (1 - (1 - STEP_TIME_WEIGHT) ** steps) * (seconds_per_step - old))

    def add_steps(self, rows: list[int], seconds: list[float]) -> None:
        """Record one call's steps: each step's rows and model seconds."""
        by_size: dict[int, list[float]] = {}
        for count, step_seconds in zip(rows, seconds, strict=True):
            by_size.setdefault(self.size_class(count), []).append(step_seconds)
        for size, times in by_size.items():
            self.add(size, sum(times) / len(times), len(times))

    def predict(self, rows: int) -> float | None:
        """Seconds per step at `rows` rows; None before a step of that size or smaller was measured."""
        size = self.size_class(rows)
        smaller = [measured for measured in self._seconds if measured <= size]
        return self._seconds[max(smaller)] if smaller else None


class GenerationLoop(ModelLoop):
    def __init__(self, model: str, pipeline: CharGenerator, *, max_active: int, max_queue: int,
                 deadline_s: float | None = None, max_queue_wait_s: float | None = None):
        super().__init__(model, "generation", max_queue, max_queue_wait_s=max_queue_wait_s)
        self.pipeline = pipeline
        self._max_active = max_active
        self.deadline_s = deadline_s  # None: never refuse a request for its length
        self.step_times = StepTimes()
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
        """Prompts waiting for a row, less those a free row takes at the loop's next turn, and
        less those whose client left: the moment a sequence ends, one held request is woken
        (stream's end) and finds the room it left."""
        running = sum(not g.abandoned for g in self._active)
        waiting = sum(not g.abandoned for g in self._pending)  # the gone are skipped at joining
        return max(0, waiting - max(0, self._max_active - running))

    def _ahead(self) -> tuple[list[int], list[int]]:
        """What a newcomer waits behind: the characters each running sequence still owes, and the
        max_tokens of each queued request. Abandoned ones are left out: they leave at the next
        step (the executor thread may replace the list meanwhile) or are skipped at joining."""
        remaining = [g.max_tokens - g.produced for g in self._active if not g.abandoned]
        return remaining, [g.max_tokens for g in self._pending if not g.abandoned]

    def expected_wait_s(self) -> float | None:
        """Until a row frees for a newcomer: the steps `join_steps` counts, at the step time of a
        full batch (the batch it waits behind is full)."""
        remaining, queued = self._ahead()
        if len(remaining) + len(queued) < self._max_active:
            return None  # a row is free, or will be when those ahead join
        step_s = self.step_times.predict(self._max_active)
        if step_s is None:
            return None  # nothing measured yet: nothing to go by
        return join_steps(remaining, queued, self._max_active) * step_s

    async def stream(self, prompt: str, max_tokens: int, temperature: float, top_k: int,
                     seed: int | None, endpoint: str, *, resume: SequenceState | None = None,
                     state_out: Callable[[SequenceState], None] | None = None,
                     ) -> AsyncIterator[list[str]]:
        """The characters of one continuation, in lists of those ready together."""
        async for chars, _ in self.stream_with_log_probs(prompt, max_tokens, temperature, top_k,
                                                         seed, endpoint, 0, resume=resume,
                                                         state_out=state_out):
            yield chars

    async def stream_with_log_probs(self, prompt: str, max_tokens: int, temperature: float,
                                    top_k: int, seed: int | None, endpoint: str, logprobs: int,
                                    *, resume: SequenceState | None = None,
                                    state_out: Callable[[SequenceState], None] | None = None,
                                    ) -> AsyncIterator[tuple[list[str], list[dict]]]:
        """`stream`, with each list of characters their log-probability entries (none when
        `logprobs` is 0).

        With `resume`, the sequence goes on from that saved state (its sampler too, unless a
        seed is given); with `state_out`, it is called with the final state before the end.
        """
        if not self.running:
            raise RuntimeError(f"the {self.model} generation loop is not running")
        try:  # the schema keeps these out; a caller that skips it must not reach the batch
            check_sampling(temperature, top_k)
            if max_tokens < 1 or not (seed is None or 0 <= seed <= MAX_SEED):
                raise ValueError(f"max_tokens must be at least 1 (got {max_tokens}) and seed "
                                 f"0 .. {MAX_SEED} (got {seed})")
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        self.check_room(1)
        self.check_deadline(max_tokens)
        generator = torch.Generator()
        if seed is None and resume is not None:
            generator.set_state(resume.rng)
        else:
            generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        generation = Generation(prompt, max_tokens, temperature,
                                clamp_top_k(top_k, self.pipeline.module.config.vocab_size),
                                generator, endpoint, time.perf_counter(), logprobs=logprobs,
                                resume=resume, return_state=state_out is not None)
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
                    if state_out is not None and generation.final is not None:
                        state_out(generation.final)
                    return
        finally:
            # Finished, failed or gone, it no longer counts ahead of a newcomer (_ahead): one
            # request held for room may join in its place.
            generation.abandoned = True
            self.room.free(1)

    def check_deadline(self, max_tokens: int) -> None:
        """Raise Overloaded when `max_tokens` more characters, after the queue ahead, would end
        past the deadline at the measured step time (at the batch size it would run with)."""
        if self.deadline_s is None:
            return
        remaining, queued = self._ahead()
        step_s = self.step_times.predict(min(self._max_active, len(remaining) + len(queued) + 1))
        if step_s is None:
            return  # nothing measured yet: nothing to go by
        steps = finish_steps(remaining, queued, self._max_active, max_tokens)
        if steps * step_s > self.deadline_s:
            raise Overloaded(
                f"{self.model}: {max_tokens} characters after the {len(remaining)} running and "
                f"{len(queued)} queued sequences would take ~{steps * step_s:.0f} s at "
                f"{step_s * 1000:.2f} ms per step, past the {self.deadline_s:g} s timeout "
                "(RNNSERVE_TIMEOUT_S); retry later or ask for fewer max_tokens")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # what _run_steps hands out from the executor thread, the event loop publishes
        publish_soon = functools.partial(loop.call_soon_threadsafe, self._publish)
        while True:
            if not self._pending and not self._active:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = time.perf_counter()
            joining: list[Generation] = []
            while self._pending and len(self._active) + len(joining) < self._max_active:
                generation = self._pending.popleft()
                if not generation.abandoned:
                    joining.append(generation)
            for generation in joining:
                self._metrics.queue_wait_seconds.observe(now - generation.enqueued)
            try:
                stepped = await loop.run_in_executor(self._executor, self._run_steps, joining,
                                                     publish_soon)
            except Exception as error:  # a bug outside any one row: every running sequence fails
                log.exception("%s: generation step failed", self.model)
                for generation in {*self._active, *joining}:
                    generation.pieces.put_nowait(error)
                self._reset()
                continue
            self.step_times.add_steps(stepped.rows, stepped.seconds)  # before the steps' news is out
            self._publish(stepped)

    def _publish(self, steps: _Steps) -> None:
        """In the event loop: hand out the new characters and record the steps' metrics."""
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
        for generation, error in steps.failed:  # after its characters: the end of its stream
            generation.pieces.put_nowait(error)
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
                    if generation.resume is not None:  # its history is in the state: not read again
                        logits, state = self.pipeline.resume(generation.resume, generation.prompt)
                    else:
                        logits, state = self.pipeline.prime(generation.prompt)  # (V,), (L, 1, H)
                    self._join(generation, logits, state, joined)
                except Exception as error:
                    log.exception("%s: a sequence could not join", self.model)
                    joined.failed.append((generation, error))
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
        try:
            logits, state = self.pipeline.module.step(self._tokens, self._state)  # (B, V)
            tokens = sample_next(logits, self._temperature, self._top_k,
                                 [g.generator for g in self._active])  # (B,)
        except Exception:
            log.exception("%s: a step of %d rows failed; stepping them one by one", self.model,
                          len(self._active))
            self._step_rows_alone(steps)
            return
        self._record_log_probs(self._active, logits, self._temperature, self._top_k, tokens)
        self._state, self._tokens = state, tokens
        self._keep(self._emit_rows(steps))

    def _step_rows_alone(self, steps: _Steps) -> None:
        """_step for each row on its own: a row that raises fails alone; the others get what the
        batch step would have given them."""
        states: list[State] = []
        tokens: list[Tensor] = []
        kept: list[int] = []
        for row, generation in enumerate(self._active):
            index = torch.tensor([row])
            try:
                logits, state = self.pipeline.module.step(
                    self._tokens.index_select(0, index), select_state(self._state, index))  # (1, V)
                token = sample_next(logits, self._temperature.index_select(0, index),
                                    self._top_k.index_select(0, index), [generation.generator])
            except Exception as error:
                log.exception("%s: a sequence failed", self.model)
                steps.failed.append((generation, error))
                continue
            self._record_log_probs([generation], logits, self._temperature.index_select(0, index),
                                   self._top_k.index_select(0, index), token)
            states.append(state)
            tokens.append(token)
            kept.append(row)
        if not kept:
            self._reset()
            return
        index = torch.tensor(kept)
        self._temperature = self._temperature.index_select(0, index)
        self._top_k = self._top_k.index_select(0, index)
        self._active = [self._active[row] for row in kept]
        self._state = cat_states(states)
        self._tokens = torch.cat(tokens)  # (B',)
        self._keep(self._emit_rows(steps))

    def _emit_rows(self, steps: _Steps) -> list[int]:
        """_emit each row's new character; the rows that go on. A row that finishes and asked
        for its state leaves it on its Generation first, while the batch still holds it."""
        kept: list[int] = []
        for row, (generation, token) in enumerate(zip(self._active, self._tokens.tolist(),
                                                      strict=True)):
            if self._emit(generation, token, steps):
                kept.append(row)
            elif generation.return_state:
                generation.final = _saved(generation, select_state(self._state, torch.tensor([row])),
                                          token)
        return kept

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
            if generation.return_state:
                generation.final = _saved(generation, state, int(token[0]))
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


def _saved(generation: Generation, state: State, token: int) -> SequenceState:
    """What continuing `generation` needs: its state (L, 1, H) before reading its last sampled
    `token`, that token, and its sampler's position."""
    return SequenceState(tuple(part.float().clone() for part in state), token,
                         generation.generator.get_state())
