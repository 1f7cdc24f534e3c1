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
