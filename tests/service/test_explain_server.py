"""Explanations over real HTTP (`explain`, `logprobs`, /score, /models capabilities, OpenAPI):
one `bentoml serve` with the tiny random models. Answers are compared with the pipelines loaded
in-process; requests without the new options must be answered exactly as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models.generator import CharGenerator
from models.quantize import with_precision
from models.sentiment import SentimentClassifier, explanation, explanation_inputs
from service.config import Settings

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

PRECISIONS = Settings().precisions
REVIEW = "It's not very funny, but the plot is great!"


@pytest.fixture(scope="module")
def server(tiny_shipped_dir, tmp_path_factory) -> Iterator[str]:
    with running_server(tiny_shipped_dir, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def classifier(tiny_shipped_dir) -> SentimentClassifier:
    loaded = SentimentClassifier.load(tiny_shipped_dir / "sentiment-rnn")
    return SentimentClassifier(with_precision(loaded.module, PRECISIONS["sentiment"]), loaded.vocab)


@pytest.fixture(scope="module")
def generator(tiny_shipped_dir) -> CharGenerator:
    loaded = CharGenerator.load(tiny_shipped_dir / "char-generator")
    return CharGenerator(with_precision(loaded.module, PRECISIONS["generator"]), loaded.vocab)


def compact(content: bytes) -> bytes:
    """The answer re-encoded as the service writes JSON: compact, in its own key order."""
    return json.dumps(json.loads(content), ensure_ascii=False, separators=(",", ":")).encode()


def fire_concurrently(server: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """All requests at once, each on its own connection, answers in request order."""
    def send(request: tuple[str, dict]) -> httpx.Response:
        with httpx.Client(base_url=server, timeout=120) as client:
            return client.post(request[0], json=request[1])

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def sse_events(body: bytes) -> list[str]:
    return [block.removeprefix("data: ") for block in body.decode().split("\n\n") if block]


# -- the old requests: answered as before -----------------------------------------------------------


def test_requests_without_the_new_options_get_the_old_answers(client):
    sentiment = client.post("/sentiment", json={"texts": [REVIEW, ""]})
    assert [list(r) for r in sentiment.json()] == [["label", "score", "probabilities"]] * 2
    assert sentiment.content == compact(sentiment.content)
    explicit_off = client.post("/sentiment", json={"texts": [REVIEW, ""], "explain": False})
    assert explicit_off.content == sentiment.content
    generate = client.post("/generate", json={"prompt": "To be", "max_tokens": 50, "seed": 7})
    assert list(generate.json()) == ["text", "tokens"] and generate.content == compact(generate.content)
    assert client.post("/generate", json={"prompt": "To be", "max_tokens": 50, "seed": 7,
                                          "logprobs": 0}).content == generate.content
    with client.stream("POST", "/generate_stream",
                       json={"prompt": "To be", "max_tokens": 50, "seed": 7}) as stream:
        assert b"".join(stream.iter_raw()).decode() == generate.json()["text"]  # plain text chunks
    translate = client.post("/translate", json={"texts": ["ein mann"]})
    assert list(translate.json()[0]) == ["translation"]


# -- /sentiment explain -----------------------------------------------------------------------------


def test_explain_gives_tokens_trajectory_and_importance_ending_at_the_score(client, classifier):
    texts = [REVIEW, "", "good"]
    answers = client.post("/sentiment", json={"texts": texts, "explain": True}).json()
    plain = client.post("/sentiment", json={"texts": texts}).json()
    for text, answer, normal in zip(texts, answers, plain, strict=True):
        assert answer["label"] == normal["label"]
        assert answer["probabilities"]["positive"] == pytest.approx(normal["probabilities"]["positive"],
                                                                    abs=1e-6)
        assert len(answer["tokens"]) == len(answer["trajectory"]) == len(answer["importance"])
        if not text:
            assert answer["tokens"] == []
            continue
        assert answer["trajectory"][-1] == answer["probabilities"]["positive"]
        assert answer["score"] == answer["probabilities"][answer["label"]]
        expected = explanation(classifier.predict_ids(explanation_inputs(classifier.encode(text))).tolist())
        assert answer["trajectory"] == pytest.approx(expected[0], abs=1e-6)
        assert answer["importance"] == pytest.approx(expected[1], abs=1e-6)
    assert answers[0]["tokens"] == ["it", "'s", "not", "very", "funny", ",", "but", "the", "plot", "is",
                                    "great", "!"]


def test_explained_requests_batched_with_others_equal_single_ones(server, client):
    texts = [REVIEW, "the actor was awful", "a good film", "boring and long " * 5]
    alone = [client.post("/sentiment", json={"texts": [t], "explain": True}).json()[0] for t in texts]
    requests = [("/sentiment", {"texts": [t], "explain": True}) for t in texts]
    requests += [("/sentiment", {"texts": texts * 4})] * 4
    answers = fire_concurrently(server, requests)
    for single, response in zip(alone, answers[:len(texts)], strict=True):
        [together] = response.json()
        assert together["tokens"] == single["tokens"]
        assert together["trajectory"] == pytest.approx(single["trajectory"], abs=1e-6)
        assert together["importance"] == pytest.approx(single["importance"], abs=1e-6)


@pytest.mark.parametrize(("body", "message"), [
    ({"texts": ["a"] * 9, "explain": True}, "at most 8 texts (RNNSERVE_MAX_EXPLAIN_TEXTS); got 9"),
    ({"texts": ["fine", "a " * 65], "explain": True},
     "at most 64 tokens per text (RNNSERVE_MAX_EXPLAIN_TOKENS); texts.1 has 65"),
    ({"texts": ["fine"], "explain": "yes"}, "boolean"),
])
def test_explain_over_its_caps_is_a_400_naming_the_field(client, body, message):
    response = client.post("/sentiment", json=body)
    assert response.status_code == 400
    [error] = response.json()["detail"]
    assert error["loc"] == ["explain"] and message in error["msg"]


# -- /generate logprobs and /score ------------------------------------------------------------------


def test_generate_with_logprobs_gives_an_entry_per_character(client, generator):
    body = {"prompt": "To be", "max_tokens": 80, "seed": 3, "temperature": 0.7, "top_k": 4}
    plain = client.post("/generate", json=body).json()
    answer = client.post("/generate", json={**body, "logprobs": 5}).json()
    assert answer["text"] == plain["text"] == generator.generate("To be", 80, 0.7, 4, seed=3)
    assert "".join(e["char"] for e in answer["logprobs"]) == answer["text"]
    for entry in answer["logprobs"]:
        assert len(entry["top"]) == 4  # top_k 4 leaves 4 of the 5 asked for possible
        assert entry["logprob"] <= 0 and entry["char"] in [t["char"] for t in entry["top"]]


def test_generate_log_probs_are_the_negative_surprisals_score_gives(client):
    """Seeded, temperature 1, top_k 0: the distribution sampled from is the one /score reads."""
    for prompt, seed in (("To be", 11), ("", 12)):
        answer = client.post("/generate", json={"prompt": prompt, "max_tokens": 150, "seed": seed,
                                                "temperature": 1.0, "logprobs": 1}).json()
        score = client.post("/score", json={"text": answer["text"], "prompt": prompt}).json()
        assert [-s for s in score["surprisal"]] == pytest.approx(
            [e["logprob"] for e in answer["logprobs"]], abs=1e-4)
        assert score["nats_per_char"] == pytest.approx(sum(score["surprisal"]) / len(answer["text"]))


def test_generate_stream_with_logprobs_sends_them_with_each_chunk(client):
    body = {"prompt": "Once", "max_tokens": 2000, "seed": 3, "logprobs": 2}
    with client.stream("POST", "/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(data) for data in sse_events(b"".join(response.iter_raw()))]
    assert len(events) > 1
    for event in events:
        assert "".join(e["char"] for e in event["logprobs"]) == event["text"]
    whole = client.post("/generate", json=body).json()
    assert "".join(e["text"] for e in events) == whole["text"]
    assert [e for event in events for e in event["logprobs"]] == whole["logprobs"]


def test_score_marks_unknown_characters_and_batched_equals_alone(server, client, generator):
    answer = client.post("/score", json={"text": "ab\u00e9c", "prompt": "x"}).json()
    assert answer["surprisal"][2] is None and None not in answer["surprisal"][:2]
    known = [s for s in answer["surprisal"] if s is not None]
    assert answer["nats_per_char"] == pytest.approx(sum(known) / 3)
    assert answer["surprisal"][0] == pytest.approx(generator.score("ab\u00e9c", "x")[0], abs=1e-5)
    bodies = [{"text": "hello there, friend", "prompt": ""}, {"text": "a"},
              {"text": "xyz", "prompt": "To be"}]
    alone = [client.post("/score", json=body).json() for body in bodies]
    together = fire_concurrently(server, [("/score", body) for body in bodies * 3]
                                 + [("/generate", {"prompt": "a", "max_tokens": 300})] * 3)
    for single, response in zip(alone * 3, together[:9], strict=True):
        assert response.json()["surprisal"] == pytest.approx(single["surprisal"], abs=1e-5)


@pytest.mark.parametrize(("path", "body", "field", "message"), [
    ("/generate", {"prompt": "a", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    ("/generate_stream", {"prompt": "a", "logprobs": -1}, "logprobs", "greater than or equal to 0"),
    ("/score", {"text": ""}, "text", "at least 1 character"),
    ("/score", {"text": "a", "prompt": "p" * 1001}, "prompt", "at most 1000 characters"),
    ("/score", {"prompt": "a"}, "text", "required"),
])
def test_bad_new_options_are_a_400_naming_the_field(client, path, body, field, message):
    response = client.post(path, json=body)
    assert response.status_code == 400
    [error] = response.json()["detail"]
    assert error["loc"] == [field] and message in error["msg"]


# -- discovery ----------------------------------------------------------------------------------------


def test_models_list_their_capabilities(client):
    capabilities = {m["name"]: m["capabilities"] for m in client.get("/models").json()}
    assert capabilities["sentiment-rnn"] == {"/sentiment": ["explain"]}
    assert capabilities["char-generator"] == {"/generate": ["logprobs"], "/generate_stream": ["logprobs"],
                                              "/score": []}
    assert capabilities["translator-de-en"] == capabilities["translator-ko-en"] == {
        "/translate": ["return_attention"]}


def test_openapi_documents_every_new_field(client):
    spec = client.get("/docs.json").json()
    schemas = spec["components"]["schemas"]

    def properties(path: str) -> dict:
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return schemas[content["$ref"].rsplit("/", 1)[1]]["properties"] if "$ref" in content \
            else content["properties"]

    assert "description" in properties("/sentiment")["explain"]
    assert "description" in properties("/generate")["logprobs"]
    assert properties("/generate")["logprobs"]["maximum"] == 5
    assert {"text", "prompt"} <= set(properties("/score"))
    # BentoML names an answer's schema after its model, plus IODescriptor where it is the whole answer
    for model, fields in (("SentimentResult", ("tokens", "trajectory", "importance")),
                          ("GenerateResultIODescriptor", ("logprobs",)),
                          ("CharLogProb", ("char", "logprob", "top")),
                          ("ScoreResultIODescriptor", ("nats_per_char", "surprisal"))):
        assert model in schemas, sorted(schemas)
        for field in fields:
            assert "description" in schemas[model]["properties"][field], (model, field)


def test_the_playground_is_served_with_a_strict_content_security_policy(client):
    page = client.get("/playground/")
    assert page.status_code == 200 and "<title>rnn-serve playground" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "http" not in policy
    for asset in ("playground.js", "charts.js", "playground.css"):
        response = client.get(f"/playground/{asset}")
        assert response.status_code == 200 and response.headers["content-security-policy"] == policy
    assert client.get("/playground", follow_redirects=False).headers["location"].endswith("/playground/")
    spec = client.get("/docs.json").json()
    assert "/playground/" in spec["paths"]["/sentiment"]["post"]["description"]  # linked from /
