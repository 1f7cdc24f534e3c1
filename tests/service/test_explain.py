"""Explanations without HTTP: the request caps, the answers' bytes when nothing is asked, the
generation loop's log-probabilities and the sentiment runtime's batch per explained text."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from models.sentiment import explanation_inputs
from service.batching import Batcher
from service.config import Settings
from service.generation import GenerationLoop
from service.runtime import Explanation, Runtime
from service.schemas import GenerateResult, SentimentResult, request_models

from support.tiny_models import make_tiny_generator, make_tiny_sentiment, with_ngram_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- requests and answers ---------------------------------------------------------------------------


def field_error(error: ValidationError) -> tuple[str, str]:
    [detail] = error.errors()
    return ".".join(map(str, detail["loc"])), detail["msg"]


def test_explain_is_capped_in_texts_and_tokens_by_the_settings():
    requests = request_models(Settings(max_explain_texts=2, max_explain_tokens=3))
    requests.sentiment.model_validate({"texts": ["one two three", ""], "explain": True})
    requests.sentiment.model_validate({"texts": ["a b c d"] * 5})  # without explain: no cap
    with pytest.raises(ValidationError) as error:
        requests.sentiment.model_validate({"texts": ["a", "b", "c"], "explain": True})
    assert field_error(error.value)[0] == "explain"
    assert "at most 2 texts (RNNSERVE_MAX_EXPLAIN_TEXTS); got 3" in field_error(error.value)[1]
    requests.sentiment.model_validate({"texts": ["fine", "it isn't"], "explain": True})  # it is n't
    with pytest.raises(ValidationError) as error:
        requests.sentiment.model_validate({"texts": ["fine", "it isn't good"], "explain": True})
    assert field_error(error.value) == (
        "explain", "Value error, with explain, at most 3 tokens per text (RNNSERVE_MAX_EXPLAIN_TOKENS); "
                   "texts.1 has 4")


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"prompt": "a", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"prompt": "a", "logprobs": -1}, "logprobs", "greater than or equal to 0"),
    ({"prompt": "a", "logprobs": True}, "logprobs", "integer"),
])
def test_logprobs_is_0_to_5(body, field, message):
    with pytest.raises(ValidationError) as error:
        request_models(Settings()).generate.model_validate(body)
    assert field_error(error.value)[0] == field and message in field_error(error.value)[1]


def test_score_needs_a_text_within_the_prompt_limit():
    score = request_models(Settings(max_prompt_chars=4)).score
    assert score.model_validate({"text": "abcd"}).prompt == ""
    for body, field in (({"text": ""}, "text"), ({"text": "abcde"}, "text"),
                        ({"text": "a", "prompt": "abcde"}, "prompt"), ({"prompt": "a"}, "text")):
        with pytest.raises(ValidationError) as error:
            score.model_validate(body)
        assert field_error(error.value)[0] == field


def test_answers_without_the_new_options_keep_their_bytes():
    # the bytes service.transport.direct sends, as before the explanations existed
    sentiment = [SentimentResult(label="positive", score=0.75,
                                 probabilities={"negative": 0.25, "positive": 0.75})]
    assert TypeAdapter(list[SentimentResult]).dump_json(sentiment) == (
        b'[{"label":"positive","score":0.75,"probabilities":{"negative":0.25,"positive":0.75}}]')
    assert GenerateResult(text="ab\n", tokens=3).model_dump_json() == '{"text":"ab\\n","tokens":3}'


def test_explained_answers_carry_the_new_fields():
    explained = SentimentResult(label="negative", score=0.6, probabilities={"negative": 0.6, "positive": 0.4},
                                tokens=["dull"], trajectory=[0.4], importance=[-0.1])
    assert list(json.loads(explained.model_dump_json())) == [
        "label", "score", "probabilities", "tokens", "trajectory", "importance"]
    generated = GenerateResult(text="a", tokens=1, logprobs=[
        {"char": "a", "logprob": -0.5, "top": [{"char": "a", "logprob": -0.5}]}])
    assert json.loads(generated.model_dump_json())["logprobs"][0]["top"] == [{"char": "a", "logprob": -0.5}]


# -- the generation loop's log-probabilities ------------------------------------------------------


async def collect(loop: GenerationLoop, prompt: str, max_tokens: int, seed: int, temperature: float,
                  top_k: int, logprobs: int) -> tuple[str, list[dict]]:
    text, entries = [], []
    async for chars, log_probs in loop.stream_with_log_probs(prompt, max_tokens, temperature, top_k,
                                                             seed, "generate", logprobs):
        text.extend(chars)
        entries.extend(log_probs)
    return "".join(text), entries


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_log_probs_come_one_per_character_the_same_alone_or_batched(cell):
    generator = make_tiny_generator(cell=cell)
    requests = [("To be", 120, 1, 1.0, 0, 3), ("", 40, 2, 0.7, 4, 5), ("Hi", 80, 3, 1.3, 0, 0),
                ("Q", 1, 4, 1.0, 2, 1)]

    async def run(batch: list[tuple]) -> list[tuple[str, list[dict]]]:
        loop = GenerationLoop("test", generator, max_active=4, max_queue=10)
        loop.start()
        answers = await asyncio.gather(*(collect(loop, *request) for request in batch))
        await loop.close()
        return answers

    together = asyncio.run(run(requests))
    alone = [asyncio.run(run([request]))[0] for request in requests]
    for request, (text, entries), (text_alone, entries_alone) in zip(requests, together, alone, strict=True):
        prompt, max_tokens, seed, temperature, top_k, logprobs = request
        assert text == text_alone == generator.generate(prompt, max_tokens, temperature, top_k, seed=seed)
        if not logprobs:
            assert entries == []
            continue
        assert "".join(e["char"] for e in entries) == text
        assert all(len(e["top"]) == min(logprobs, top_k or logprobs) for e in entries)
        for entry, entry_alone in zip(entries, entries_alone, strict=True):
            assert entry["logprob"] == pytest.approx(entry_alone["logprob"], abs=1e-5)
    # at temperature 1 and top-k 0 they are the negative surprisals /score gives
    text, entries = together[0]
    assert [-s for s in generator.score(text, "To be")] == pytest.approx(
        [e["logprob"] for e in entries], abs=1e-4)


# -- the sentiment runtime: one batcher item per explained text -------------------------------------


def test_an_explained_text_is_one_batcher_item_and_batched_equals_alone():
    classifier = make_tiny_sentiment(cell="lstm", subword_buckets=64)
    texts = ["good film", "the plot was dull and long but the actor was great", ""]
    runtime = Runtime.__new__(Runtime)  # only what _classify and explain_sentiment use
    runtime.classifier = classifier
    batches: list[int] = []

    def classify(items):
        batches.append(len(items))
        return Runtime._classify(runtime, items)

    async def scenario() -> tuple[list, list, list]:
        runtime.sentiment_batcher = Batcher("test", classify, max_batch_size=64, max_batch_tokens=8192,
                                            max_wait_s=0.0, max_queue=100)
        runtime.sentiment_batcher.start()
        together = await asyncio.gather(runtime.explain_sentiment(texts), runtime.sentiment(texts))
        alone = [(await runtime.explain_sentiment([text]))[0] for text in texts]
        await runtime.sentiment_batcher.close()
        return *together, alone

    explained, plain, alone = asyncio.run(scenario())
    assert batches[-3:] == [1, 1, 1]  # each text alone: one item, all its inputs in one model call
    for result, normal, single, text in zip(explained, plain, alone, texts, strict=True):
        assert result.label == normal.label
        assert result.probabilities["positive"] == pytest.approx(normal.probabilities["positive"], abs=1e-6)
        assert result.trajectory == pytest.approx(single.trajectory, abs=1e-6)
        assert result.importance == pytest.approx(single.importance, abs=1e-6)
        if text:
            assert result.trajectory[-1] == result.probabilities["positive"]
            assert len(result.tokens) == len(result.trajectory) == len(result.importance)
        else:
            assert result.tokens == result.trajectory == result.importance == []
    assert explained[1].tokens == ["the", "plot", "was", "dull", "and", "long", "but", "the", "actor",
                                   "was", "great"]
    assert len(explanation_inputs(classifier.encode(texts[1]))) == 22


def test_with_an_n_gram_part_explain_shows_the_combined_model_over_the_tokens_it_reads():
    tiny = make_tiny_sentiment(cell="lstm", subword_buckets=64)
    tiny.module.config = replace(tiny.module.config, normalizer=2, max_tokens=6)
    classifier = with_ngram_part(tiny, (0.8, 1.5, 0.1))
    text = "Dont like the plot, but the actor was great and funny"
    runtime = Runtime.__new__(Runtime)
    runtime.classifier = classifier

    async def scenario():
        runtime.sentiment_batcher = Batcher("test", lambda items: Runtime._classify(runtime, items),
                                            max_batch_size=64, max_batch_tokens=8192, max_wait_s=0.0,
                                            max_queue=100)
        runtime.sentiment_batcher.start()
        [result] = await runtime.explain_sentiment([text])
        await runtime.sentiment_batcher.close()
        return result

    result = asyncio.run(scenario())
    # the tokens the model reads: normaliser 2 ("dont" -> "do n't"), head and tail of 6
    assert result.tokens == classifier.tokens(text) == ["do", "n't", "like", "great", "and", "funny"]
    encoded = classifier.encode(text)
    n = len(encoded)
    prefixes = classifier.predict_ids([encoded.part(list(range(end))) for end in range(1, n + 1)])[:, 1]
    left_out = classifier.predict_ids([encoded.part([i for i in range(n) if i != out])
                                       for out in range(n)])[:, 1]
    assert result.trajectory == pytest.approx(prefixes.tolist(), abs=1e-6)
    assert result.importance == pytest.approx((prefixes[-1] - left_out).tolist(), abs=1e-6)
    assert result.trajectory[-1] == result.probabilities["positive"]
    # the combined model's, not the recurrent part's alone
    recurrent, _ = classifier.part_log_odds([encoded])
    assert result.probabilities["positive"] != pytest.approx(float(torch.sigmoid(recurrent)), abs=1e-3)


def test_an_explanation_needs_as_many_rows_as_its_inputs():
    classifier = make_tiny_sentiment()
    item = Explanation(explanation_inputs(classifier.encode("good film")))
    runtime = Runtime.__new__(Runtime)
    runtime.classifier = classifier
    [rows, single] = Runtime._classify(runtime, [item, classifier.encode("bad")])
    assert len(rows) == 4 and len(single) == 2


def test_the_playground_is_public_with_the_docs_when_a_token_guards_the_api():
    from service.auth import BearerAuth

    auth = BearerAuth(app=None, token="secret", public=Settings(auth_public="docs").public_paths)
    assert auth.is_public("/playground") and auth.is_public("/playground/playground.js")
    assert not auth.is_public("/sentiment") and not auth.is_public("/models")
