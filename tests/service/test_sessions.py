"""Generation sessions without HTTP: a continued generation is exactly the longer one, and a
state token is refused for the right reason (service.sessions, models.sequence_state)."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from http import HTTPStatus

import pytest
import torch

from models.generator import sample_next
from models.sequence_state import SequenceState, pack, unpack
from service.generation import GenerationLoop
from service.sessions import Sessions, StateRefused, key_from, session_stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sessions_for(generator, key: bytes = b"k" * 32, tag: str = "generator:v1",
                 lifetime_s: float = 60.0) -> Sessions:
    config = generator.module.config
    return Sessions(key, tag, lifetime_s, 32768, {
        "parts": len(generator.module.init_state(1)), "num_layers": config.num_layers,
        "hidden_size": config.hidden_size, "vocab_size": config.vocab_size})


async def run(loop: GenerationLoop, sessions: Sessions, prompt: str, max_tokens: int,
              seed: int | None, state: str | None = None, temperature: float = 0.8,
              top_k: int = 0) -> tuple[str, str]:
    """(text, the state token it ended in)."""
    sealed: list[str] = []
    chunks = [c async for c, _ in session_stream(sessions, loop, prompt, max_tokens, temperature,
                                                 top_k, seed, "generate", state=state,
                                                 return_state=True, sealed=sealed)]
    return "".join(ch for chunk in chunks for ch in chunk), sealed[0]


@pytest.mark.parametrize("first", [1, 7, 60])
def test_n_then_m_continued_is_the_text_of_one_n_plus_m_generation(generator, first):
    sessions = sessions_for(generator)

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        head, token = await run(loop, sessions, "To be", first, seed=3)
        tail, _ = await run(loop, sessions, "", 50, seed=None, state=token)
        tail2, _ = await run(loop, sessions, "", 50, seed=None, state=token)  # a token is a value
        await loop.close()
        return head, tail, tail2

    head, tail, tail2 = asyncio.run(scenario())
    assert head + tail == generator.generate("To be", first + 50, 0.8, 0, seed=3)
    assert tail2 == tail


def test_continuations_beside_other_requests_are_exact_and_leave_them_exact(generator):
    sessions = sessions_for(generator)
    others = [("Hello\n", 150, 11), ("", 90, 12), ("Q", 40, 13)]

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=3, max_queue=20)
        loop.start()
        head, token = await run(loop, sessions, "To be", 30, seed=5)
        tasks = [asyncio.create_task(run(loop, sessions, p, n, s)) for p, n, s in others]
        await asyncio.sleep(0.005)  # the continuations join a running batch
        forks = [asyncio.create_task(run(loop, sessions, "", 70, None, state=token)) for _ in range(2)]
        answers = await asyncio.gather(*tasks, *forks)
        await loop.close()
        return head, [text for text, _ in answers]

    head, texts = asyncio.run(scenario())
    for (prompt, n, seed), text in zip(others, texts, strict=False):
        assert text == generator.generate(prompt, n, 0.8, 0, seed=seed)
    whole = generator.generate("To be", 100, 0.8, 0, seed=5)
    assert [head + texts[-2], head + texts[-1]] == [whole, whole]


def test_a_prompt_is_read_after_the_pending_character_and_a_seed_reseeds(generator):
    sessions = sessions_for(generator)

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        _, token = await run(loop, sessions, "To be", 20, seed=1)
        with_prompt = await run(loop, sessions, "KING:", 30, seed=9, state=token)
        again = await run(loop, sessions, "KING:", 30, seed=9, state=token)
        other_seed = await run(loop, sessions, "KING:", 30, seed=10, state=token, temperature=1.5)
        await loop.close()
        return token, with_prompt[0], again[0], other_seed[0]

    token, with_prompt, again, other_seed = asyncio.run(scenario())
    sequence = sessions.open(token)
    logits, state = generator.resume(sequence, "KING:")
    rng = torch.Generator().manual_seed(9)
    expected = []
    with torch.inference_mode():
        for _ in range(30):
            next_token = sample_next(logits[None], torch.tensor([0.8]), torch.tensor([0]), [rng])
            expected.append(int(next_token))
            logits, state = generator.module.step(next_token, state)
            logits = logits[0]
    assert with_prompt == again == generator.decode(expected)
    assert other_seed != with_prompt


def test_pack_unpack_round_trip_and_shape_checks(generator):
    state = generator.module.init_state(1)
    state = tuple(torch.randn_like(part) for part in state)
    rng = torch.Generator().manual_seed(4).get_state()
    shape = {"parts": len(state), "num_layers": state[0].shape[0], "hidden_size": state[0].shape[2],
             "vocab_size": generator.module.config.vocab_size}
    back = unpack(pack(SequenceState(state, 5, rng)), **shape)
    assert all(torch.equal(a, b) for a, b in zip(back.state, state, strict=True))
    assert back.pending == 5 and torch.equal(back.rng, rng)
    data = pack(SequenceState(state, 5, rng))
    for bad, words in [({**shape, "hidden_size": shape["hidden_size"] + 1}, "the model's is"),
                       ({**shape, "vocab_size": 5}, "outside the vocabulary")]:
        with pytest.raises(ValueError, match=words):
            unpack(data, **bad)
    with pytest.raises(ValueError, match="bytes"):
        unpack(data[:-1], **shape)
    with pytest.raises(ValueError, match="format version"):
        unpack(b"\x09" + data[1:], **shape)


def sealed_token(generator, sessions: Sessions, now: float | None = None) -> str:
    logits, state = generator.prime("To be")
    return sessions.seal(SequenceState(state, 4, torch.Generator().manual_seed(0).get_state()), now)


def test_forged_altered_truncated_foreign_and_expired_states_are_refused_with_the_reason(generator):
    sessions = sessions_for(generator)
    token = sealed_token(generator, sessions)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[40] ^= 1
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    cases = [
        (altered, HTTPStatus.BAD_REQUEST, "signature does not match"),
        (token[:-10], HTTPStatus.BAD_REQUEST, "signature does not match"),
        ("not a token!", HTTPStatus.BAD_REQUEST, "not base64url|signature"),
        ("x" * 40000, HTTPStatus.BAD_REQUEST, "RNNSERVE_MAX_STATE_CHARS"),
        (sealed_token(generator, sessions_for(generator, key=b"another key")),
         HTTPStatus.BAD_REQUEST, "signature does not match"),
        (sealed_token(generator, sessions_for(generator, tag="generator:v0")), HTTPStatus.CONFLICT,
         "made by model generator:v0, this service runs generator:v1"),
        (sealed_token(generator, sessions, now=0.0), HTTPStatus.GONE, "expired"),
    ]
    for bad, status, words in cases:
        with pytest.raises(StateRefused, match=words) as refusal:
            sessions.open(bad)
        assert refusal.value.error_code == status
        assert str(refusal.value).startswith("state: ")
    assert sessions.open(token).pending == 4


def test_the_key_is_made_once_private_and_shared(tmp_path):
    first = key_from("", tmp_path)
    assert key_from("", tmp_path) == first and len(first) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "rnnserve_state_key").st_mode) == 0o600
    assert key_from("set", tmp_path) == b"set"
    assert [p.name for p in tmp_path.iterdir()] == ["rnnserve_state_key"]


def test_a_continuation_gives_log_probabilities_for_exactly_its_characters(generator):
    sessions = sessions_for(generator)

    async def scenario():
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        _, token = await run(loop, sessions, "To be", 10, seed=3)
        sealed: list[str] = []
        pieces = [p async for p in session_stream(sessions, loop, "", 25, 0.8, 0, None, "generate",
                                                  2, state=token, return_state=True, sealed=sealed)]
        plain, _ = await run(loop, sessions, "", 25, None, state=token)
        await loop.close()
        return pieces, plain, sealed

    pieces, plain, sealed = asyncio.run(scenario())
    text = "".join(ch for chars, _ in pieces for ch in chars)
    entries = [entry for _, log_probs in pieces for entry in log_probs]
    assert text == plain and [entry["char"] for entry in entries] == list(text)
    assert len(sealed) == 1
