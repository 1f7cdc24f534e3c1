"""loadtest.payloads: prompts, body limits, and validation splits only."""

from __future__ import annotations

import os

import pytest

from loadtest.payloads import MAX_PROMPT_CHARS, Bodies, ValidationTexts, shakespeare_prompts

SCRIPT = "BOB:\nA line.\nAnother line.\nA third.\n\nALICE:\nShort.\n\nstage direction only\n\nX:"


def test_prompts_are_a_speaker_and_at_most_two_lines():
    assert shakespeare_prompts(SCRIPT) == ["BOB:\nA line.\nAnother line.\n", "ALICE:\nShort.\n"]
    assert all(len(p) <= MAX_PROMPT_CHARS + 1 for p in shakespeare_prompts("A:\n" + "x" * 5000))


def test_bodies_stay_within_the_request_limits():
    texts = ValidationTexts(reviews=[f"review {i}" for i in range(100)],
                            german=[f"satz {i}" for i in range(100)],
                            korean=[f"문장 {i}" for i in range(100)], prompts=["A:\nline\n"])
    bodies = Bodies(texts, seed=0)
    for _ in range(200):
        assert 1 <= len(bodies.sentiment()["texts"]) <= 64
        generate = bodies.generate()
        assert 1 <= generate["max_tokens"] <= 2000 and 0 < generate["temperature"] <= 2
        translate = bodies.translate()
        assert 1 <= len(translate["texts"]) <= 64 and 1 <= translate["beam_size"] <= 8
        pool = texts.german if translate["source"] == "de" else texts.korean
        assert set(translate["texts"]) <= set(pool)


@pytest.mark.skipif(not os.environ.get("RNNSERVE_DATA_DIR"), reason="needs RNNSERVE_DATA_DIR")
def test_load_texts_never_come_from_a_test_split():
    from loadtest.payloads import load_validation_texts
    from training import data

    texts = load_validation_texts()
    assert texts.reviews and texts.german and texts.korean and texts.prompts
    assert not set(texts.reviews) & {t for t, _ in data.sst2_splits()["test"]}
    assert not set(texts.german) & {de for de, _ in data.multi30k_splits()["test"]}
    assert not set(texts.korean) & {ko for ko, _ in data.ko_en_splits()["test"]}
