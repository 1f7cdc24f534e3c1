"""The shipped models (models/pretrained/) served as `make serve` serves them: sensible answers."""

from __future__ import annotations

import httpx
import pytest

from training.store import SHIPPED_DIR, STORE_INFO_FILE

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

SERVED = ("sentiment-rnn", "char-generator", "translator-de-en", "translator-ko-en")
MISSING = [name for name in SERVED if not (SHIPPED_DIR / name / STORE_INFO_FILE).is_file()]


@pytest.fixture(scope="module")
def shipped_client(tmp_path_factory):
    if MISSING:
        pytest.skip(f"no shipped model in {SHIPPED_DIR} for {', '.join(MISSING)}: train and ship them first")
    with running_server(None, tmp_path_factory.mktemp("shipped")) as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        yield client


def test_clear_reviews_are_classified_right(shipped_client):
    texts = ["An absolute masterpiece: moving, funny and beautifully acted. I loved every minute.",
             "A dull, boring mess. The plot makes no sense and the acting is awful. Avoid it."]
    response = shipped_client.post("/sentiment", json={"texts": texts})
    assert response.status_code == 200
    assert [r["label"] for r in response.json()] == ["positive", "negative"]


def test_a_simple_german_sentence_translates_sensibly(shipped_client):
    for beam_size in (1, 4):
        response = shipped_client.post("/translate", json={"texts": ["Ein Mann fährt Fahrrad."],
                                                           "source": "de", "beam_size": beam_size})
        assert response.status_code == 200
        english = response.json()[0]["translation"].lower()
        assert "man" in english, english
        assert "bike" in english or "bicycle" in english, english


def test_the_shipped_models_are_listed_with_their_metrics(shipped_client):
    models = shipped_client.get("/models").json()
    assert sorted(m["name"] for m in models) == sorted(SERVED)
    assert all(m["metrics"] for m in models)


def test_the_shipped_models_fit_the_repository_budget():
    budget = 60 * 1000 * 1000  # bytes, for all four together
    size = sum(path.stat().st_size for path in SHIPPED_DIR.rglob("*") if path.is_file())
    assert 0 < size <= budget, f"{SHIPPED_DIR} holds {size:,} bytes, over the {budget:,} budget"
