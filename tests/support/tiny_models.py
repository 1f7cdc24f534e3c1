"""Tiny, randomly initialised models of every task, built from made-up text (never dataset text).

Shared by the tests (`from support.tiny_models import ...`) and by the fixtures in conftest.py.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from models.artifact import record_checksums, write_json
from models.generator import CharGenerator, CharLM, CharLMConfig
from models.ngram import NgramLogistic, ngram_keys
from models.sentiment import SentimentClassifier, SentimentConfig, SentimentRNN
from models.text import sentiment_tokens
from models.translator import Seq2Seq, Translator, TranslatorConfig
from models.vocab import Vocab
from training.store import STORE_INFO_FILE
from training.subwords import train_sentencepiece

WORDS = ("good great fine bad awful dull film movie plot actor scene story it is was not very "
         "the a and but of to funny boring long short").split()
CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'\n-"


def made_up_sentences(count: int, seed: int, words: list[str] = WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) for _ in range(count)]


def make_tiny_sentiment(cell: str = "gru", seed: int = 0, subword_buckets: int = 0
                        ) -> SentimentClassifier:
    torch.manual_seed(seed)
    vocab = Vocab.build(sentiment_tokens(s) for s in made_up_sentences(50, seed))
    config = SentimentConfig(vocab_size=len(vocab), embedding_dim=16, hidden_size=12, cell=cell,
                             dropout=0.0, subword_buckets=subword_buckets)
    return SentimentClassifier(SentimentRNN(config).eval(), vocab)


def _as_given(keys):
    return keys


def with_ngram_part(classifier: SentimentClassifier, mix: tuple[float, float, float]
                    ) -> SentimentClassifier:
    """`classifier` with an n-gram part fitted (scikit-learn, as training.train_ngram fits it) on
    made-up sentences through its own token ids, combined by `mix` (rnn, ngram, bias)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    sentences = made_up_sentences(200, 5)
    size = len(classifier.vocab)
    keys = [ngram_keys(classifier.encode(s).words, size) for s in sentences]
    labels = [int(("good" in s) or ("great" in s)) for s in sentences]
    vectorizer = TfidfVectorizer(analyzer=_as_given, sublinear_tf=True)
    regression = LogisticRegression(C=4.0).fit(vectorizer.fit_transform(keys), labels)
    part = NgramLogistic.from_fitted(vectorizer.vocabulary_, vectorizer.idf_.tolist(),
                                     regression.coef_[0].tolist(), float(regression.intercept_[0]),
                                     size, True)
    config = replace(classifier.module.config, ngram_features=len(part.keys), mix_rnn=mix[0],
                     mix_ngram=mix[1], mix_bias=mix[2])
    module = SentimentRNN(config)
    module.load_state_dict({**classifier.module.state_dict(),
                            **{f"ngram.{k}": v for k, v in part.state_dict().items()}})
    return SentimentClassifier(module.eval(), classifier.vocab)


def make_tiny_generator(cell: str = "gru", seed: int = 0) -> CharGenerator:
    torch.manual_seed(seed)
    vocab = Vocab.build([CHARS])
    config = CharLMConfig(vocab_size=len(vocab), embedding_dim=8, hidden_size=16, num_layers=2,
                          cell=cell, dropout=0.0)
    return CharGenerator(CharLM(config).eval(), vocab)


def make_tiny_translator(cell: str = "gru", attention: str = "additive", source_lang: str = "de",
                         seed: int = 0) -> Translator:
    torch.manual_seed(seed)
    source = train_sentencepiece(made_up_sentences(300, seed), vocab_size=60)
    target = train_sentencepiece(made_up_sentences(300, seed + 1), vocab_size=60)
    config = TranslatorConfig(source_vocab_size=source.get_piece_size(),
                              target_vocab_size=target.get_piece_size(), source_lang=source_lang,
                              embedding_dim=16, hidden_size=12, cell=cell, attention=attention,
                              attention_size=10, dropout=0.0)
    return Translator(Seq2Seq(config).eval(), source, target)


def write_shipped(directory: Path, name: str, pipeline, task: str, cell: str) -> Path:
    """An artifact folder in the shipped layout that `training.store import-shipped` reads."""
    folder = directory / name
    pipeline.save(folder)
    write_json(folder / "metrics.json", {"note": "tiny random test model"})
    record_checksums(folder, ["metrics.json"])
    write_json(folder / STORE_INFO_FILE, {"name": name, "version": "vtest", "labels": {"task": task},
                                          "metadata": {"task": task, "cell": cell}})
    return folder
