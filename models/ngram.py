"""The bag-of-n-grams part of the sentiment classifier: TF-IDF over word uni- and bigrams into a
logistic regression, computed in torch (serving needs no scikit-learn).

It reads the very token ids the recurrent part reads (models.sentiment: normalised, cut, mapped
through the same vocabulary, unknown words as UNK), so a feature is a vocabulary id or a pair of
them. Each feature is one integer key, `ngram_keys`:

    unigram (a)     -> a                    in [0, V)
    bigram  (a, b)  -> (a + 1) * V + b      in [V, (V + 1) * V)

Training (training/train_ngram.py) hands `ngram_keys` to scikit-learn's TfidfVectorizer as its
analyzer and fits a LogisticRegression on the result; `NgramLogistic.from_fitted` copies the
kept keys, their idf and the regression's coefficients. The forward pass then computes what
sklearn computes (tests/models/test_ngram.py checks it to float tolerance):

    tf(t, d)  = count of t in d, or 1 + ln(count) with sublinear tf
    idf(t)    = ln((1 + n) / (1 + df(t))) + 1           (smooth_idf, fitted: stored)
    x(d)      = tf * idf over the kept features, scaled to unit L2 norm (a text with none is 0)
    decision  = x(d) . coef + intercept                 (the log-odds of positive)

A batch of a few texts (at most LOOKUP_MAX_TEXTS, the usual request at low load) is computed
from a dictionary of the kept features instead: a dozen tensor ops cost more than a few dozen
lookups. Both paths compute the same sums; they agree to float32 rounding.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor, nn

# keys are int32: (V + 1) * V must stay below 2^31, so a vocabulary of at most this many words
MAX_VOCAB = 46_340
# batches of at most this many texts take the dictionary path
LOOKUP_MAX_TEXTS = 8


def ngram_keys(ids: list[int], vocab_size: int) -> list[int]:
    """The n-gram keys of one text's word ids: its unigrams, then its bigrams, in order.

    >>> ngram_keys([5, 7, 5], 10)
    [5, 7, 5, 67, 85]
    """
    return ids + [(a + 1) * vocab_size + b for a, b in zip(ids, ids[1:], strict=False)]


class NgramLogistic(nn.Module):
    """TF-IDF over uni+bigram keys -> logistic regression: word ids in, log-odds of positive out.

    `keys` (F,) sorted int32, `idf` (F,) and `coef` (F,) per kept feature, `intercept` (1,).
    Fitted, not trained by gradient: its parameters do not require grad.
    """

    def __init__(self, features: int, vocab_size: int, sublinear_tf: bool = True):
        super().__init__()
        if vocab_size > MAX_VOCAB:
            raise ValueError(f"an n-gram part reads at most {MAX_VOCAB} words (int32 keys), "
                             f"not {vocab_size}")
        self.vocab_size = vocab_size
        self.sublinear_tf = sublinear_tf
        self.register_buffer("keys", torch.arange(features, dtype=torch.int32))
        self.idf = nn.Parameter(torch.ones(features), requires_grad=False)
        self.coef = nn.Parameter(torch.zeros(features), requires_grad=False)
        self.intercept = nn.Parameter(torch.zeros(1), requires_grad=False)
        self._table: dict[int, tuple[float, float]] = {}
        self._table_of: tuple = ()

    @classmethod
    def from_fitted(cls, vocabulary: dict[int, int], idf: list[float], coef: list[float],
                    intercept: float, vocab_size: int, sublinear_tf: bool) -> NgramLogistic:
        """From a fitted TfidfVectorizer's vocabulary_ ({key: column}) and idf_, and a binary
        LogisticRegression's coef_[0] and intercept_[0] (columns in the vectorizer's order)."""
        order = sorted(vocabulary)  # searchsorted needs the keys sorted
        columns = [vocabulary[key] for key in order]
        module = cls(len(order), vocab_size, sublinear_tf)
        with torch.no_grad():
            module.keys.copy_(torch.tensor(order, dtype=torch.int32))
            module.idf.copy_(torch.tensor(idf, dtype=torch.float64)[columns])
            module.coef.copy_(torch.tensor(coef, dtype=torch.float64)[columns])
            module.intercept.fill_(float(intercept))
        return module

    def forward(self, ids: Tensor, rows: Tensor, batch: int) -> Tensor:
        """ids (N,) the word ids of `batch` texts one after another, rows (N,) the text of each
        (non-decreasing) -> (B,) decision values, float32 whatever the module's dtype."""
        if batch <= LOOKUP_MAX_TEXTS:
            return self._by_lookup(ids.tolist(), rows.tolist(), batch)
        features = len(self.keys)
        joined = rows[1:] == rows[:-1]  # (N-1,) neighbours in the same text form a bigram
        keys = torch.cat([ids, ((ids[:-1] + 1) * self.vocab_size + ids[1:])[joined]]).to(torch.int32)
        key_rows = torch.cat([rows, rows[:-1][joined]])  # (K,)
        column = torch.searchsorted(self.keys, keys).clamp_(max=max(features - 1, 0))  # (K,)
        kept = self.keys[column] == keys if features else torch.zeros_like(keys, dtype=torch.bool)
        pairs, counts = torch.unique(key_rows[kept].long() * features + column[kept],
                                     return_counts=True)  # one per (text, feature)
        row, column = pairs // features, pairs % features
        tf = counts.float()
        if self.sublinear_tf:
            tf = tf.log_().add_(1.0)
        weight = tf * self.idf.float()[column]  # (P,) tf-idf before the norm
        norm = torch.zeros(batch).index_add_(0, row, weight * weight).sqrt_()  # (B,)
        score = torch.zeros(batch).index_add_(0, row, weight * self.coef.float()[column])  # (B,)
        return score / norm.clamp(min=torch.finfo(torch.float32).tiny) + self.intercept.float()

    def log_odds(self, texts: list[list[int]]) -> Tensor:
        """(B,) decision values for texts' word ids: forward's, without building tensors for a
        batch that takes the dictionary path."""
        if len(texts) <= LOOKUP_MAX_TEXTS:
            rows = [row for row, text in enumerate(texts) for _ in text]
            return self._by_lookup([i for text in texts for i in text], rows, len(texts))
        return self(*flat_ids(texts), len(texts))

    def _by_lookup(self, ids: list[int], rows: list[int], batch: int) -> Tensor:
        """forward's sums for a few texts, feature by feature from a dictionary."""
        table = self._features()
        counts = [Counter() for _ in range(batch)]
        for i, (word, row) in enumerate(zip(ids, rows, strict=True)):
            counts[row][word] += 1
            if i + 1 < len(ids) and rows[i + 1] == row:
                counts[row][(word + 1) * self.vocab_size + ids[i + 1]] += 1
        decisions = []
        for text in counts:
            score = norm = 0.0
            for key, count in text.items():
                if (found := table.get(key)) is not None:
                    weight = (1.0 + math.log(count) if self.sublinear_tf else float(count)) * found[0]
                    norm += weight * weight
                    score += weight * found[1]
            decisions.append(score / math.sqrt(norm) if norm > 0.0 else 0.0)
        return torch.tensor(decisions, dtype=torch.float32) + self.intercept.float()

    def _features(self) -> dict[int, tuple[float, float]]:
        """key -> (idf, coef) of the kept features, rebuilt whenever the tensors were replaced or
        written to (loading a state, a change of dtype)."""
        of = tuple((t.data_ptr(), t._version) for t in (self.keys, self.idf, self.coef))
        if of != self._table_of:
            self._table = dict(zip(self.keys.tolist(),
                                   zip(self.idf.float().tolist(), self.coef.float().tolist(), strict=True),
                                   strict=True))
            self._table_of = of
        return self._table


def flat_ids(texts: list[list[int]]) -> tuple[Tensor, Tensor]:
    """NgramLogistic's (ids, rows) for a batch of texts' word ids."""
    ids = torch.tensor([i for text in texts for i in text], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(texts)), torch.tensor([len(t) for t in texts]))
    return ids, rows
