"""training.baseline: the TF-IDF + logistic-regression baseline on made-up reviews."""

from __future__ import annotations

import fake_data
import numpy as np

from training import baseline


def test_fit_learns_the_sentiment_words_and_reads_raw_text_like_the_rnn():
    model = baseline.fit(fake_data.sentiment_pairs(300, 0), c=4.0)
    assert model.predict(["a great film", "an awful film"]) == [1, 0]
    # normaliser 2: "Dont" and "do n't" are the same two tokens to it
    assert model.predict(["Dont"]) == model.predict(["do n't"])
    assert baseline.accuracy(model, fake_data.sentiment_pairs(100, 1)) > 90.0


def test_train_and_select_picks_c_on_dev_and_test_row_has_every_domain():
    sst2, fdu = fake_data.sst2_splits(), fake_data.fdu_mtl_splits()
    model, dev = baseline.train_and_select(sst2, fdu, "sst2+fdu_mtl")
    assert model.c in baseline.C_GRID
    assert dev["selection"] == round((dev["sst2_accuracy"] + dev["fdu_mean_accuracy"]) / 2, 2)
    row = baseline.test_row(model, sst2, fdu)
    assert set(row) == {"accuracy", "fdu_mean_accuracy", *(f"fdu_{d}" for d in fake_data.FDU_DOMAINS)}
    assert row["fdu_mean_accuracy"] == round(sum(row[f"fdu_{d}"] for d in fake_data.FDU_DOMAINS) / 2, 2)


def test_the_regression_is_solved_to_its_optimum():
    """At the optimum of C x log-loss + |w|^2 / 2 the gradient is zero; a solver stopped early
    (scikit-learn's default tolerance) leaves it ~1e-5 here, and where it stops moves with the BLAS
    thread count."""
    pairs = fake_data.sentiment_pairs(300, 0)
    model = baseline.fit(pairs, c=64.0)
    vectorizer, regression = model.pipeline[0], model.pipeline[-1]
    features = vectorizer.transform([text for text, _ in pairs])
    labels = np.array([label for _, label in pairs])
    residual = regression.predict_proba(features)[:, 1] - labels
    gradient = np.concatenate([features.T @ residual + regression.coef_[0] / 64.0, [residual.sum()]])
    assert np.abs(gradient).max() / len(pairs) < 1e-5
