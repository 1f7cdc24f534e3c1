"""Explanations over real HTTP (`explain`, `logprobs`, /score, /models capabilities, OpenAPI):
one `bentoml serve` with the tiny random models. Answers are compared with the pipelines loaded
in-process; requests without the new options must be answered exactly as before."""

from __future__ import annotations

import json

import pytest

from models.sentiment import explanation, explanation_inputs

from support.server import fire_concurrently

pytestmark = [pytest.mark.slow, pytest.mark.server]

REVIEW = "It's not very funny, but the plot is great!"


def compact(content: bytes) -> bytes:
    """The answer re-encoded as the service writes JSON: compact, in its own key order."""
    return json.dumps(json.loads(content), ensure_ascii=False, separators=(",", ":")).encode()


def sse_events(body: bytes) -> list[str]:
    """The data of each message event of a stream (data lines joined with "\\n"), up to its
    `event: end`, which must be there."""
    events = []
    for block in body.decode().split("\n\n"):
        lines = block.split("\n")
        if lines[0] == "event: end":
            return events
        if block:
            events.append("\n".join(line.removeprefix("data: ") for line in lines))
    raise AssertionError("the stream has no event: end")


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
        # the text's events, as without logprobs before: no JSON around the text
        assert "".join(sse_events(b"".join(stream.iter_raw()))) == generate.json()["text"]
    translate = client.post("/translate", json={"texts": ["ein mann"]})
    assert list(translate.json()[0]) == ["translation"]


# -- /sentiment explain -----------------------------------------------------------------------------


def test_explain_gives_tokens_trajectory_and_importance_ending_at_the_score(client, served_classifier):
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
        inputs = explanation_inputs(served_classifier.encode(text))
        expected = explanation(served_classifier.predict_ids(inputs).tolist())
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


def test_generate_with_logprobs_gives_an_entry_per_character(client, served_generator):
    body = {"prompt": "To be", "max_tokens": 80, "seed": 3, "temperature": 0.7, "top_k": 4}
    plain = client.post("/generate", json=body).json()
    answer = client.post("/generate", json={**body, "logprobs": 5}).json()
    assert answer["text"] == plain["text"] == served_generator.generate("To be", 80, 0.7, 4, seed=3)
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


def test_score_marks_unknown_characters_and_batched_equals_alone(server, client, served_generator):
    answer = client.post("/score", json={"text": "ab\u00e9c", "prompt": "x"}).json()
    assert answer["surprisal"][2] is None and None not in answer["surprisal"][:2]
    known = [s for s in answer["surprisal"] if s is not None]
    assert answer["nats_per_char"] == pytest.approx(sum(known) / 3)
    assert answer["surprisal"][0] == pytest.approx(served_generator.score("ab\u00e9c", "x")[0], abs=1e-5)
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
