"""service.app over real HTTP: one `bentoml serve` for the session, with the tiny random models.

Answers are compared with the same pipelines loaded in-process: the service must add batching,
validation and metrics, never change a result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.quantize import with_precision
from models.sentiment import LABELS, EncodedText
from models.translator import Translator
from models.vocab import UNK_ID
from service.config import Settings

from support.server import fire_concurrently, running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

RNNSERVE_METRICS = ("rnnserve_batch_size", "rnnserve_padding_efficiency", "rnnserve_queue_wait_seconds",
                    "rnnserve_compute_seconds", "rnnserve_input_length",
                    "rnnserve_generated_tokens_total", "rnnserve_time_to_first_token_seconds",
                    "rnnserve_errors_total", "rnnserve_active_sequences", "rnnserve_model_info",
                    "rnnserve_gc_pause_seconds")
REVIEWS = ["a good film", "", "It's not very funny, but the plot is great!",
           "boring boring boring and long " * 8, "the actor was awful", "Ünïcödé ✓ text", "fine"]
GERMAN = ["ein mann fährt fahrrad", "", "der film ist gut und nicht lang",
          "a very long plot " * 10, "kurz"]


# In-process references at the precision the service gives each task's models by default.
PRECISIONS = Settings().precisions


@pytest.fixture(scope="module")
def translators(tiny_shipped_dir) -> dict[str, Translator]:
    loaded = {"de": Translator.load(tiny_shipped_dir / "translator-de-en"),
              "ko": Translator.load(tiny_shipped_dir / "translator-ko-en")}
    return {source: Translator(with_precision(t.module, PRECISIONS["translator"]), t.source_spm,
                               t.target_spm) for source, t in loaded.items()}


def post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    return client.post(path, json=body)


def assert_same_sentiment(got: list[dict], expected: list[dict]) -> None:
    """Equal labels and probabilities equal to float rounding (batches sum in another order)."""
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for result, reference in zip(got, expected, strict=True):
        assert list(result["probabilities"].values()) == pytest.approx(
            list(reference["probabilities"].values()), abs=1e-6)


# -- health and discovery ---------------------------------------------------------------------


def test_live_and_ready(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_models_lists_the_four_models(client):
    response = client.get("/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()}
    assert set(models) == {"sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en"}
    for name, model in models.items():
        assert model["tag"] == f"{name}:vtest"
        assert model["cell"] == ("lstm" if name == "sentiment-rnn" else "gru")
        assert model["parameters"] > 0
        assert model["metrics"] == {"note": "tiny random test model"}
    assert [models[n]["task"] for n in sorted(models)] == ["generator", "sentiment", "translator",
                                                         "translator"]
    # by default the classifier is served in float32, the generator and translators with float16
    # weights (service.config.DEFAULT_PRECISION)
    assert {n: models[n]["precision"] for n in models} == {
        "sentiment-rnn": "float32", "char-generator": "float16", "translator-de-en": "float16",
        "translator-ko-en": "float16"}


# -- happy paths, equal to the in-process pipelines ------------------------------------------------


def test_sentiment_answers_in_order_with_the_models_probabilities(client, served_classifier):
    response = post(client, "/sentiment", {"texts": REVIEWS})
    assert response.status_code == 200
    results = response.json()
    expected = served_classifier.predict_proba(REVIEWS).tolist()
    assert len(results) == len(REVIEWS)
    for result, probabilities in zip(results, expected, strict=True):
        assert set(result) == {"label", "score", "probabilities"}
        assert list(result["probabilities"]) == list(LABELS)
        assert list(result["probabilities"].values()) == pytest.approx(probabilities, abs=1e-6)
        assert result["label"] == LABELS[probabilities.index(max(probabilities))]
        assert result["score"] == pytest.approx(max(probabilities), abs=1e-6)


def test_empty_sentiment_text_gets_the_models_prior(client, served_classifier):
    result = post(client, "/sentiment", {"texts": [""]}).json()[0]
    prior = served_classifier.predict_ids([EncodedText([UNK_ID], [()])])[0].tolist()  # no subwords either
    assert list(result["probabilities"].values()) == pytest.approx(prior, abs=1e-6)


def test_generate_returns_the_seeded_continuation(client, served_generator):
    body = {"prompt": "To be, or not", "max_tokens": 60, "temperature": 0.9, "top_k": 10, "seed": 7}
    response = post(client, "/generate", body)
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"text", "tokens"}
    assert result["tokens"] == len(result["text"]) == 60
    assert result["text"] == served_generator.generate("To be, or not", 60, 0.9, 10, seed=7)
    assert post(client, "/generate", body).json() == result


def test_generate_defaults_and_empty_prompt(client, served_generator):
    result = post(client, "/generate", {"prompt": "", "seed": 1}).json()
    assert result["tokens"] == 200
    assert result["text"] == served_generator.generate("", 200, 0.8, 0, seed=1)
    unseeded = [post(client, "/generate", {"prompt": "a", "max_tokens": 30}).json()["text"]
                for _ in range(2)]
    assert unseeded[0] != unseeded[1]  # null seed: a fresh random seed per request


def test_translate_answers_in_order_with_the_models_translations(client, translators):
    for source, beam_size in (("de", 1), ("de", 4), ("ko", 2)):
        response = post(client, "/translate", {"texts": GERMAN, "source": source, "beam_size": beam_size})
        assert response.status_code == 200
        expected = translators[source].translate(GERMAN, beam_size=beam_size)
        assert response.json() == [{"translation": t.translation} for t in expected]


def test_translate_source_defaults_to_german_and_max_length_caps_output(client, translators):
    default = post(client, "/translate", {"texts": ["ein mann"]}).json()
    assert default == [{"translation": translators["de"].translate(["ein mann"])[0].translation}]
    capped = post(client, "/translate", {"texts": ["ein mann"], "max_length": 3}).json()[0]
    assert capped["translation"] == translators["de"].translate(["ein mann"], max_length=3)[0].translation


def test_translate_with_attention(client, translators):
    response = post(client, "/translate", {"texts": GERMAN[:3], "return_attention": True, "beam_size": 3})
    expected = translators["de"].translate(GERMAN[:3], beam_size=3)
    for result, translation in zip(response.json(), expected, strict=True):
        assert set(result) == {"translation", "source_tokens", "target_tokens", "attention"}
        assert result["source_tokens"] == translation.source_tokens
        assert result["target_tokens"] == translation.target_tokens
        attention = result["attention"]
        assert len(attention) == len(result["target_tokens"])  # a row per target piece, EOS too
        for row, reference in zip(attention, translation.attention, strict=True):
            assert len(row) == len(result["source_tokens"])
            assert sum(row) == pytest.approx(1.0, abs=1e-5)
            assert row == pytest.approx(reference, abs=1e-5)  # the in-process model's weights


# -- batching: concurrent answers equal single answers ---------------------------------------------


def test_concurrent_sentiment_requests_equal_single_ones(server, client):
    texts = [f"{'good ' * (i % 9)}film {'not ' * (i % 4)}bad {i}" for i in range(48)]
    single = [post(client, "/sentiment", {"texts": [t]}).json()[0] for t in texts]
    batched = fire_concurrently(server, [("/sentiment", {"texts": [t]}) for t in texts])
    assert [r.status_code for r in batched] == [200] * len(texts)
    assert_same_sentiment([r.json()[0] for r in batched], single)


def test_concurrent_translations_with_different_beams_equal_single_ones(server, client):
    requests = [("/translate", {"texts": [f"der film {'und gut ' * (i % 5)}"], "beam_size": 1 + i % 8,
                                "source": "ko" if i % 5 == 0 else "de"}) for i in range(24)]
    single = [post(client, path, body).json() for path, body in requests]
    batched = fire_concurrently(server, requests)
    assert [r.json() for r in batched] == single


def test_concurrent_generations_equal_single_ones_and_same_seed_same_text(server, client):
    requests = [("/generate", {"prompt": f"Line {i}: ", "max_tokens": 50 + 20 * (i % 4), "seed": i % 6,
                               "temperature": 0.5 + 0.1 * (i % 10), "top_k": i % 3 * 5})
                for i in range(16)]
    single = [post(client, path, body).json() for path, body in requests]
    batched = fire_concurrently(server, requests)
    assert [r.json() for r in batched] == single
    same = fire_concurrently(server, [("/generate", {"prompt": "x", "max_tokens": 80, "seed": 42})] * 6)
    assert len({r.json()["text"] for r in same}) == 1


# -- errors -----------------------------------------------------------------------------------------

LONG = "x" * 1001
BAD_REQUESTS = [
    # (path, body (a str is sent as it is), the field the error must name, words of its message)
    ("/sentiment", "{\"texts\": [", None, "JSON"),
    ("/sentiment", "{}", "texts", "required"),
    ("/sentiment", {"texts": "not a list"}, "texts", "array"),
    ("/sentiment", {"texts": ["ok", 3]}, "texts.1", "string"),
    ("/sentiment", {"texts": []}, "texts", "at least 1"),
    ("/sentiment", {"texts": ["a"] * 65}, "texts", "at most 64"),
    ("/sentiment", {"texts": ["ok", LONG]}, "texts.1", "at most 1000 characters"),
    ("/sentiment", {"texts": ["ok"], "text": "typo"}, "text", "not permitted"),
    ("/sentiment", ["a list, not an object"], None, "object"),
    ("/generate", {"max_tokens": 5}, "prompt", "required"),
    ("/generate", {"prompt": "a", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("/generate", {"prompt": "a", "max_tokens": 2001}, "max_tokens", "less than or equal to 2000"),
    ("/generate", {"prompt": "a", "temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ("/generate", {"prompt": "a", "top_k": 2**31}, "top_k", "less than or equal to 2147483647"),
    ("/generate", {"prompt": "a", "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ("/generate", {"prompt": "a", "temperature": float("nan")}, "temperature", "finite number"),
    ("/generate", {"prompt": "a", "top_k": -1}, "top_k", "greater than or equal to 0"),
    ("/generate", {"prompt": "a", "seed": "abc"}, "seed", "integer"),
    ("/generate", {"prompt": "a", "max_tokens": "5"}, "max_tokens", "integer"),
    ("/generate", {"prompt": "a", "max_tokens": True}, "max_tokens", "integer"),
    ("/generate", {"prompt": "a", "seed": -1}, "seed", "greater than or equal to 0"),
    ("/generate", {"prompt": "a" * 1001}, "prompt", "at most 1000 characters"),
    ("/generate_stream", {"prompt": "a", "max_tokens": 2001}, "max_tokens", "2000"),
    ("/generate_stream", {"prompt": 5}, "prompt", "string"),
    ("/translate", {"texts": ["a"], "source": "fr"}, "source", "'de' or 'ko'"),
    ("/translate", {"texts": ["a"], "beam_size": 9}, "beam_size", "less than or equal to 8"),
    ("/translate", {"texts": ["a"], "beam_size": 0}, "beam_size", "greater than or equal to 1"),
    ("/translate", {"texts": ["a"], "max_length": 0}, "max_length", "greater than or equal to 1"),
    ("/translate", {"texts": ["a"], "max_length": 257}, "max_length", "less than or equal to 256"),
    ("/translate", {"texts": ["a"], "return_attention": "sure"}, "return_attention", "boolean"),
    ("/translate", {"texts": ["a" * 501]}, "texts.0", "at most 500 characters"),
    ("/translate", {"texts": ["a"] * 65}, "texts", "at most 64"),
]


@pytest.mark.parametrize(("path", "body", "field", "message"), BAD_REQUESTS,
                         ids=[f"{p}-{f or 'body'}-{m}" for p, _, f, m in BAD_REQUESTS])
def test_bad_input_is_a_400_naming_the_field_and_the_limit(client, path, body, field, message):
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    errors = response.json()["detail"]
    located = [e for e in errors if ".".join(map(str, e["loc"])) == (field or "")]
    assert located, errors
    assert message.lower() in located[0]["msg"].lower()


def test_a_body_sent_as_a_form_is_still_read_as_json(client):
    # curl -d sends application/x-www-form-urlencoded unless told otherwise
    response = client.post("/sentiment", content='{"texts": ["fine"]}',
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert len(response.json()) == 1


def test_wrong_method_is_a_405(client):
    assert client.get("/sentiment").status_code == 405
    assert client.post("/models").status_code == 405


def test_bad_requests_do_not_disturb_good_ones_served_with_them(server, client):
    good = [("/sentiment", {"texts": [f"good film {i}"]}) for i in range(12)]
    bad = [("/sentiment", {"texts": ["x" * 2000]}), ("/sentiment", {"texts": [None]}),
           ("/translate", {"texts": ["a"], "beam_size": 99}), ("/generate", {"prompt": 1})] * 3
    expected = [post(client, path, body).json()[0] for path, body in good]
    answers = fire_concurrently(server, [r for pair in zip(good, bad, strict=True) for r in pair])
    assert [a.status_code for a in answers[1::2]] == [400] * len(bad)
    assert [a.status_code for a in answers[::2]] == [200] * len(good)
    assert_same_sentiment([a.json()[0] for a in answers[::2]], expected)
    assert post(client, "/generate", {"prompt": "still", "max_tokens": 5}).status_code == 200


# -- metrics ----------------------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by its name and labels."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples}


def test_metrics_show_the_rnnserve_metrics_after_traffic(client):
    before = scrape(client)
    post(client, "/sentiment", {"texts": ["good", "bad film"]})
    post(client, "/translate", {"texts": ["ein mann"]})
    post(client, "/generate", {"prompt": "a", "max_tokens": 3})
    with client.stream("POST", "/generate_stream", json={"prompt": "a", "max_tokens": 3}) as response:
        response.read()
    post(client, "/sentiment", {"texts": []})
    text = client.get("/metrics").text
    for name in RNNSERVE_METRICS:
        assert f"\n{name}" in text, name
    for model in ("sentiment-rnn", "char-generator", "translator-de-en"):
        assert f'rnnserve_batch_size_count{{model="{model}"}}' in text
    assert 'rnnserve_padding_efficiency_count{model="sentiment-rnn"}' in text
    assert 'rnnserve_time_to_first_token_seconds_count{endpoint="generate_stream"}' in text
    assert 'rnnserve_generated_tokens_total{endpoint="generate"}' in text
    assert 'rnnserve_errors_total{endpoint="sentiment",kind="validation"}' in text
    assert 'rnnserve_model_info{cell="gru",model="translator-ko-en",tag="translator-ko-en:vtest",' \
           'task="translator"} 1.0' in text

    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after[key] - before.get(key, 0.0)

    # what this test's own requests added
    assert grew("rnnserve_batch_size_sum", model="sentiment-rnn") == 2  # two texts
    assert grew("rnnserve_batch_size_sum", model="translator-de-en") == 1
    assert grew("rnnserve_generated_tokens_total", endpoint="generate") == 3
    assert grew("rnnserve_generated_tokens_total", endpoint="generate_stream") == 3
    assert grew("rnnserve_time_to_first_token_seconds_count", endpoint="generate_stream") == 1
    assert grew("rnnserve_errors_total", endpoint="sentiment", kind="validation") == 1


@pytest.mark.slow
@pytest.mark.parametrize("setting", [None, "on"])
def test_the_access_log_is_off_unless_asked_for(tiny_shipped_dir, tmp_path, setting):
    settings = {} if setting is None else {"RNNSERVE_ACCESS_LOG": setting}
    with running_server(tiny_shipped_dir, tmp_path, **settings) as url:
        assert httpx.post(f"{url}/sentiment", json={"texts": ["a good film"]}).status_code == 200
    logged = "path=/sentiment" in (tmp_path / "server.log").read_text(encoding="utf-8")
    assert logged is (setting == "on")


def test_the_service_module_leaves_torch_to_the_workers():
    # BentoML's supervisor imports service.app for the service's configuration; if that loaded
    # torch and the models' modules, the supervisor would hold ~190 MB it never uses
    code = ("import sys, service.app; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('models.', 'service.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2]).stdout
    assert "'torch'" not in loaded
    assert "'service.app'" in loaded and "'service.runtime'" not in loaded
