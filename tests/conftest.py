"""Fixtures: tiny, randomly initialised models of every task (support.tiny_models builds them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.generator import CharGenerator
from models.sentiment import SentimentClassifier
from models.translator import Translator

from support.tiny_models import make_tiny_generator, make_tiny_sentiment, make_tiny_translator, write_shipped


@pytest.fixture(scope="session")
def tiny_sentiment() -> SentimentClassifier:
    return make_tiny_sentiment()


@pytest.fixture(scope="session")
def tiny_generator() -> CharGenerator:
    return make_tiny_generator()


@pytest.fixture(scope="session")
def tiny_translator() -> Translator:
    return make_tiny_translator()


@pytest.fixture(scope="session")
def tiny_shipped_dir(tmp_path_factory) -> Path:
    """All four served models, tiny and random, in the models/pretrained/ layout (the classifier
    is a BiLSTM that reads subwords, as the shipped one is, so batches take its ProjectedLSTM)."""
    directory = tmp_path_factory.mktemp("pretrained")
    write_shipped(directory, "sentiment-rnn", make_tiny_sentiment(cell="lstm", subword_buckets=64),
                  "sentiment", "lstm")
    write_shipped(directory, "char-generator", make_tiny_generator(), "generator", "gru")
    write_shipped(directory, "translator-de-en", make_tiny_translator(), "translator", "gru")
    write_shipped(directory, "translator-ko-en", make_tiny_translator(source_lang="ko", seed=1),
                  "translator", "gru")
    return directory
