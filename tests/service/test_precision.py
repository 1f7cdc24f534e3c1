"""RNNSERVE_PRECISION=float16, =int8 and =bfloat16 over real HTTP: the service answers with those copies of
its models."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from models.generator import CharGenerator
from models.quantize import with_precision
from models.sentiment import SentimentClassifier
from models.translator import Translator

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module", params=["float16", "int8", "bfloat16"])
def precision(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def client(precision, tiny_shipped_dir, tmp_path_factory) -> Iterator[httpx.Client]:
    with running_server(tiny_shipped_dir, tmp_path_factory.mktemp(precision),
                        RNNSERVE_PRECISION=precision) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_models_report_the_precision_and_the_artifacts_float_parameter_counts(client, precision,
                                                                               tiny_shipped_dir):
    cards = {card["name"]: card for card in client.get("/models").json()}
    assert {card["precision"] for card in cards.values()} == {precision}
    float_sentiment = SentimentClassifier.load(tiny_shipped_dir / "sentiment-rnn").module
    assert cards["sentiment-rnn"]["parameters"] == sum(p.numel() for p in float_sentiment.parameters())


def test_each_endpoint_answers_as_the_in_process_model_of_that_precision(client, precision,
                                                                        tiny_shipped_dir):
    # one text per request, sent one at a time: the same batch of one as in-process
    classifier = SentimentClassifier.load(tiny_shipped_dir / "sentiment-rnn")
    lowered = SentimentClassifier(with_precision(classifier.module, precision), classifier.vocab)
    moved = []
    for text in ("a good film", "It's not very funny, but the plot is great!"):
        got = list(client.post("/sentiment", json={"texts": [text]}).json()[0]["probabilities"].values())
        assert got == pytest.approx(lowered.predict_proba([text])[0].tolist(), abs=1e-6)
        moved.append(max(abs(a - b) for a, b in zip(got, classifier.predict_proba([text])[0].tolist(),
                                                    strict=True)))
    assert max(moved) > 1e-6  # the answers are the lowered copy's, not float32's

    generator = CharGenerator.load(tiny_shipped_dir / "char-generator")
    lowered_generator = CharGenerator(with_precision(generator.module, precision), generator.vocab)
    body = {"prompt": "To be", "max_tokens": 40, "temperature": 0.9, "seed": 5}
    assert client.post("/generate", json=body).json()["text"] == lowered_generator.generate(
        "To be", 40, 0.9, 0, seed=5)

    translator = Translator.load(tiny_shipped_dir / "translator-de-en")
    lowered_translator = Translator(with_precision(translator.module, precision), translator.source_spm,
                                 translator.target_spm)
    got = client.post("/translate", json={"texts": ["ein mann fährt fahrrad"], "beam_size": 3}).json()
    assert got == [{"translation": lowered_translator.translate(["ein mann fährt fahrrad"],
                                                              beam_size=3)[0].translation}]
