"""Evaluation: the metric functions on tiny models, the report table, and the shipped models'
model cards reproduced by `make evaluate` (needs RNNSERVE_DATA_DIR)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from training import evaluate
from training.store import SHIPPED_DIR, STORE_INFO_FILE

from support.tiny_models import make_tiny_generator, make_tiny_sentiment


def test_sentiment_accuracy_counts_correct_predictions():
    model = make_tiny_sentiment()
    texts = ["good film", "bad film", "a dull plot", "great actor"]
    predicted = model.predict_proba(texts).argmax(dim=-1).tolist()
    pairs = list(zip(texts, predicted, strict=True))
    assert evaluate.sentiment_accuracy(model, pairs, batch_size=3)["accuracy"] == 100.0
    flipped = [(t, 1 - label) for t, label in pairs]
    assert evaluate.sentiment_accuracy(model, flipped)["accuracy"] == 0.0
    # the one wrong answer sits in the last, short batch (3 + 1): it must be counted too
    assert evaluate.sentiment_accuracy(model, [*pairs[:3], flipped[3]], batch_size=3)["accuracy"] == 75.0


def test_char_loss_equals_cross_entropy_of_windows_from_a_zero_state():
    model = make_tiny_generator()
    text = "the quick brown fox jumps over the lazy dog. " * 4
    result = evaluate.char_loss(model, text, window=16, batch_size=3)
    ids = torch.tensor(model.encode(text))
    count = (len(ids) - 1) // 16
    losses = []
    for w in range(count):
        window = ids[w * 16: w * 16 + 17]
        logits, _ = model.module(window[None, :-1])
        losses.append(torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum"))
    expected = float(torch.stack(losses).sum().detach()) / (count * 16)
    assert result["val_loss"] == pytest.approx(expected, abs=1e-4)
    assert result["bits_per_char"] == pytest.approx(expected / math.log(2), abs=1e-3)


def test_markdown_table_marks_targets_met_or_not():
    rows = [{"model": "sentiment-rnn", "tag": "sentiment-rnn:v1", "accuracy": 84.0},
            {"model": "char-generator", "tag": "char-generator:v1", "val_loss": 1.39}]
    table = evaluate.markdown_table(rows)
    assert "| sentiment-rnn | sentiment-rnn:v1 | accuracy | 84.0 | 86.0 | no |" in table
    assert "| char-generator | char-generator:v1 | val_loss | 1.39 | 1.4 | yes |" in table


def test_markdown_table_marks_the_fdu_mean_target_too():
    rows = [{"model": "sentiment-rnn", "tag": "t", "accuracy": 86.5, "fdu_mean_accuracy": 87.9,
             "fdu_books": 90.0}]
    table = evaluate.markdown_table(rows)
    assert "| sentiment-rnn | t | accuracy | 86.5 | 86.0 | yes |" in table
    assert "| sentiment-rnn | t | fdu_mean_accuracy | 87.9 | 88.0 | no |" in table
    assert "| sentiment-rnn | t | fdu_books | 90.0 |  |  |" in table


def test_sentiment_table_puts_models_side_by_side_with_the_targets():
    rows = [{"model": "sentiment-rnn", "tag": "a", "accuracy": 86.5, "fdu_mean_accuracy": 80.0,
             "fdu_books": 81.0, "fdu_toys_games": 79.0},
            {"model": "tfidf-logreg (sst2)", "tag": "C=4", "accuracy": 83.0, "fdu_mean_accuracy": 75.0,
             "fdu_books": 76.0, "fdu_toys_games": 74.0},
            {"model": "char-generator", "tag": "g", "val_loss": 1.4}]
    table = evaluate.sentiment_table(rows).splitlines()
    assert table[0] == "| test accuracy (%) | target | sentiment-rnn `a` | tfidf-logreg (sst2) `C=4` |"
    assert "| SST-2 test | 86.0 | 86.5 | 83.0 |" in table
    assert "| **FDU-MTL mean (14 domains)** | 88.0 | 80.0 | 75.0 |" in table
    assert "| toys games |  | 79.0 | 74.0 |" in table
    assert evaluate.sentiment_table([rows[2]]) == ""


def test_domain_accuracy_weighs_each_domain_alike():
    model = make_tiny_sentiment()
    texts = ["good film", "bad film", "a dull plot", "great actor"]
    predicted = model.predict_proba(texts).argmax(dim=-1).tolist()
    right = list(zip(texts, predicted, strict=True))
    wrong = [(t, 1 - label) for t, label in right]
    scores = evaluate.domain_accuracy(model, {"big": right * 3, "small": wrong[:1]})
    assert scores == {"big": 100.0, "small": 0.0, "mean": 50.0}


def test_folder_row_names_a_shipped_copy_by_its_tag_else_by_its_path(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"model": "sentiment-rnn"}))
    assert evaluate.folder_row(tmp_path) == {"model": "sentiment-rnn", "tag": str(tmp_path)}
    (tmp_path / STORE_INFO_FILE).write_text(json.dumps({"name": "sentiment-rnn", "version": "v2"}))
    assert evaluate.folder_row(tmp_path) == {"model": "sentiment-rnn", "tag": "sentiment-rnn:v2"}
    stored = tmp_path / "models" / "sentiment-rnn" / "v3"  # a store model's folder
    stored.mkdir(parents=True)
    (stored / "metrics.json").write_text(json.dumps({"model": "sentiment-rnn"}))
    (stored / "model.yaml").write_text("name: sentiment-rnn\n")
    assert evaluate.folder_row(stored) == {"model": "sentiment-rnn", "tag": "sentiment-rnn:v3"}


SHIPPED = sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / STORE_INFO_FILE).is_file())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RNNSERVE_DATA_DIR"), reason="needs RNNSERVE_DATA_DIR")
@pytest.mark.parametrize("name", SHIPPED)
def test_evaluate_reproduces_the_shipped_model_card(name):
    folder = SHIPPED_DIR / name
    card = json.loads((folder / "metrics.json").read_text())["test"]
    measured = evaluate.evaluate_folder(folder, "test")
    for key, value in card.items():
        assert measured[key] == pytest.approx(value, abs=0.011), key
