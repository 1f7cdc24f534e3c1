"""loadtest.projected_lstm: both paths timed at every batch size, and found to agree."""

from __future__ import annotations

import re

import pytest
import torch

from loadtest.projected_lstm import BATCHES, measure

from support.tiny_models import made_up_sentences, make_tiny_sentiment


def test_measure_times_every_batch_both_ways_and_finds_the_same_probabilities():
    classifier = make_tiny_sentiment(cell="lstm", subword_buckets=64)
    reviews = [classifier.encode(text) for text in made_up_sentences(80, seed=3)]
    with torch.inference_mode():
        lines = measure(classifier, reviews, rounds=1)
    rows = [line.split("|") for line in lines if re.match(r"\| \d+ \|", line)]
    assert [int(row[1]) for row in rows] == [size for size in BATCHES for _ in range(2)]
    assert {row[2].strip() for row in rows} == {"similar lengths", "mixed lengths (dev order)"}
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows)
    gap = re.search(r"dev reviews, 32 at a time: (\S+)\. ", lines[-1])
    assert gap and float(gap.group(1)) < 1e-5


def test_measure_refuses_a_classifier_without_the_path():
    with pytest.raises(SystemExit, match="no ProjectedLSTM path"):
        measure(make_tiny_sentiment(cell="gru"), [], rounds=1)
