"""Many-to-one: a sentence -> negative/positive.

Embedding -> (bi)RNN over packed sequences -> max and mean pooling over real tokens -> classifier.
Packing means padding never enters the recurrence, so a sentence gets the same answer
alone or in a batch with longer ones.

Optionally (`subword_buckets` > 0) each word's vector adds the mean of its hashed character
n-grams, fastText style (Bojanowski et al. 2017): "<unwatchable>" shares "<un", "watch", "able>"
with words seen in training, so a word the vocabulary lacks still carries meaning instead of
being one shared UNK vector.

Optionally (`ngram_features` > 0) a bag-of-n-grams part (models.ngram: TF-IDF over word uni- and
bigrams into a logistic regression, fitted by training/train_ngram.py) reads the same token ids,
and the classifier's log-odds of positive are a weighted sum of the two parts' log-odds
(`mix_rnn`, `mix_ngram`, `mix_bias` in the config, fitted on dev): the recurrent model brings word
order and subwords, the linear part sharp per-word evidence over many more n-grams.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.artifact import check_vocab_size, load_weights, read_config, record_checksums, save_module
from models.names import LABELS
from models.ngram import NgramLogistic
from models.rnn import make_rnn, recurrence, run_padded
from models.text import sentiment_tokens
from models.vocab import PAD_ID, UNK_ID, Vocab

if TYPE_CHECKING:
    from models.projected_lstm import ProjectedLSTM

log = logging.getLogger(__name__)

TASK = "sentiment"
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class SentimentConfig:
    vocab_size: int
    embedding_dim: int = 300
    hidden_size: int = 256
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = True
    dropout: float = 0.5
    weight_drop: float = 0.0  # DropConnect on W_hh while training (models.rnn.weight_dropped)
    num_classes: int = len(LABELS)
    subword_buckets: int = 0  # hashed character n-gram embeddings (0 = words only)
    subword_min_n: int = 3
    subword_max_n: int = 5
    # How text becomes tokens (models.text): a config without these fields (an artifact saved
    # before they existed) keeps the reading it was trained with, normaliser 1 and every token.
    normalizer: int = 1
    max_tokens: int = 0  # longer texts keep their first and last max_tokens // 2 tokens (0 = all)
    # The bag-of-n-grams part (models.ngram) and how its log-odds join the recurrent part's: a
    # config without these fields (saved before they existed) is the recurrent model alone.
    ngram_features: int = 0  # features of the n-gram part (0 = no n-gram part)
    ngram_sublinear_tf: bool = True
    # combined log-odds of positive = mix_rnn x the RNN's + mix_ngram x the n-gram part's + mix_bias
    mix_rnn: float = 1.0
    mix_ngram: float = 0.0
    mix_bias: float = 0.0


def truncate_tokens(words: list[str], max_tokens: int) -> list[str]:
    """The first and last max_tokens // 2 tokens of a longer text (0 = keep all). A review
    states its verdict mostly at its start and its end (Sun et al. 2019 found head + tail the
    best cut for long-review classification), and the cut bounds the work one text can ask for.

    >>> truncate_tokens(list("abcdefg"), 4)
    ['a', 'b', 'f', 'g']
    """
    if not max_tokens or len(words) <= max_tokens:
        return words
    head = max_tokens // 2
    return words[:head] + words[len(words) - (max_tokens - head):]


CACHED_WORD_CHARS = 32  # longer words (rare, or sent to fill memory) are hashed every time


def subword_ids(word: str, buckets: int, min_n: int, max_n: int) -> tuple[int, ...]:
    """The hashed ids of the character n-grams of "<word>" (crc32: the same in every process).

    >>> len(subword_ids("good", 1000, 3, 5))  # <go goo ood od> <goo good ood> <good good>
    9
    """
    if len(word) > CACHED_WORD_CHARS:
        return _hashed_ngrams(word, buckets, min_n, max_n)
    return _cached_ngrams(word, buckets, min_n, max_n)


def _hashed_ngrams(word: str, buckets: int, min_n: int, max_n: int) -> tuple[int, ...]:
    marked = f"<{word}>"
    return tuple(zlib.crc32(marked[i:i + n].encode("utf-8")) % buckets
                 for n in range(min_n, max_n + 1) for i in range(len(marked) - n + 1))


# At most 16,384 words of at most 32 characters: a few MB whatever the service is sent.
_cached_ngrams = lru_cache(maxsize=1 << 14)(_hashed_ngrams)


@dataclass(frozen=True)
class EncodedText:
    """A text as the network reads it: word ids, and per word its subword ids (all empty when the
    model has no subword table). len() is its length in tokens."""
    words: list[int]
    subwords: list[tuple[int, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    def part(self, positions: list[int]) -> EncodedText:
        """The text made of the words at `positions`; none: the empty text (one UNK, the prior)."""
        if not positions:
            return EncodedText([UNK_ID], [()] if self.subwords else [])
        return EncodedText([self.words[i] for i in positions],
                           [self.subwords[i] for i in positions] if self.subwords else [])


def explanation_inputs(text: EncodedText) -> list[EncodedText]:
    """What explaining `text` (of n >= 1 words) reads, as one batch: its n prefixes, the last of
    which is the whole text, then the n texts with one word left out."""
    n = len(text)
    prefixes = [text.part(list(range(end))) for end in range(1, n + 1)]
    left_out = [text.part([i for i in range(n) if i != out]) for out in range(n)]
    return prefixes + left_out


def explanation(probabilities: list[list[float]]) -> tuple[list[float], list[float]]:
    """From the probabilities (2n, C) of `explanation_inputs`: the trajectory, P(positive) after
    each prefix (the many-to-one model read as many-to-many; the last is the whole text's), and
    each word's importance, how much P(positive) drops when that word alone is left out (occlusion:
    positive for a word that pulls towards positive)."""
    n = len(probabilities) // 2
    positive = LABELS.index("positive")
    trajectory = [row[positive] for row in probabilities[:n]]
    importance = [trajectory[-1] - row[positive] for row in probabilities[n:]]
    return trajectory, importance


@dataclass(frozen=True)
class Batch:
    """Padded network input: tokens (B, S), lengths (B,), and with subwords the flat subword ids
    and the offset of each of the B * S positions' bags (row-major), for nn.EmbeddingBag."""
    tokens: Tensor
    lengths: Tensor
    subwords: tuple[Tensor, Tensor] | None = None

    def to(self, device: torch.device | str) -> Batch:
        subwords = None if self.subwords is None else tuple(t.to(device) for t in self.subwords)
        return Batch(self.tokens.to(device), self.lengths, subwords)


class SentimentRNN(nn.Module):
    def __init__(self, config: SentimentConfig):
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD_ID)
        self.subwords = (nn.EmbeddingBag(config.subword_buckets, config.embedding_dim, mode="mean")
                         if config.subword_buckets else None)
        self.rnn = make_rnn(config.cell, config.embedding_dim, config.hidden_size,
                            config.num_layers, config.bidirectional, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        # max-pool and mean-pool over time, concatenated
        self.classifier = nn.Linear(2 * directions * config.hidden_size, config.num_classes)
        # read by SentimentClassifier beside forward(), which is the recurrent part alone
        self.ngram = (NgramLogistic(config.ngram_features, config.vocab_size, config.ngram_sublinear_tf)
                      if config.ngram_features else None)

    def embed(self, tokens: Tensor, subwords: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The input vectors of word ids `tokens` (any shape), each plus the mean of its bag of
        subwords (one bag per id, row-major) when the model reads subwords -> tokens.shape + (E,)."""
        embedded = self.embedding(tokens)
        if self.subwords is not None:
            if subwords is None:
                raise ValueError("this model reads subwords: pass the (ids, offsets) of a Batch")
            embedded = embedded + self.subwords(*subwords).view_as(embedded)  # empty bags are 0
        return embedded

    def forward(self, tokens: Tensor, lengths: Tensor,
                subwords: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """tokens (B, S) padded with PAD_ID, lengths (B,) >= 1, and for a model with a subword
        table the (ids, offsets) of one bag per position (`Batch`) -> logits (B, C) of the
        recurrent part (what training fits; SentimentClassifier adds the n-gram part's)."""
        embedded = self.dropout(self.embed(tokens, subwords))  # (B, S, E)
        rnn = recurrence(self.rnn, self.config.weight_drop, self.training)
        outputs, _ = run_padded(rnn, embedded, lengths)  # (B, S, D*H)
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None, :]
                < lengths.to(tokens.device)[:, None]).unsqueeze(-1)  # (B, S, 1)
        max_pooled = outputs.masked_fill(~mask, float("-inf")).amax(dim=1)  # (B, D*H)
        mean_pooled = outputs.sum(dim=1) / lengths.to(outputs)[:, None]  # padding rows are 0
        return self.classifier(self.dropout(torch.cat([max_pooled, mean_pooled], dim=-1)))


def bag_offsets(bags: list[tuple[int, ...]]) -> tuple[Tensor, Tensor]:
    """nn.EmbeddingBag's (ids, offsets) for `bags`, one bag per position (an empty bag is 0)."""
    sizes = torch.tensor([len(bag) for bag in bags], dtype=torch.long)
    ids = torch.tensor([i for bag in bags for i in bag], dtype=torch.long)
    return ids, sizes.cumsum(0) - sizes


# From this many texts the fast path beats torch's packed LSTM on an AVX2 CPU as well; at 4 it
# does not always (`python -m loadtest.projected_lstm` measures both; docs/batching.md). A lone
# text goes through torch's, whose oneDNN kernel needs no packing for it.
PROJECTED_MIN_BATCH = 8


class SentimentClassifier:
    """The vocabulary and the network together: raw texts in, probabilities out."""

    def __init__(self, module: SentimentRNN, vocab: Vocab):
        check_vocab_size(VOCAB_FILE, len(vocab), module.embedding.num_embeddings)
        self.module = module
        self.vocab = vocab
        self._projected: ProjectedLSTM | None = None
        self._projected_of: tuple[nn.Module, tuple[bool | int, ...]] | None = None

    def tokens(self, text: str) -> list[str]:
        """The tokens of a raw text that the model reads: its normaliser's, cut to max_tokens."""
        config = self.module.config
        return truncate_tokens(sentiment_tokens(text, config.normalizer), config.max_tokens)

    def encode(self, text: str) -> EncodedText:
        """A raw text as the network reads it. An empty text becomes one UNK: the model's prior
        (for the n-gram part too, which then reads one unknown word)."""
        config = self.module.config
        words = self.tokens(text)
        ids = self.vocab.encode(words) or [UNK_ID]
        if not config.subword_buckets:
            return EncodedText(ids)
        subwords = [subword_ids(word, config.subword_buckets, config.subword_min_n,
                                config.subword_max_n) for word in words] or [()]
        return EncodedText(ids, subwords)

    @staticmethod
    def collate(texts: list[EncodedText]) -> Batch:
        """The padded batch, built as Python lists and turned into tensors once each: a torch
        call per row would be hundreds of calls per batch, each of which gives up and takes back
        the GIL (a serving thread waits for it while the event loop runs)."""
        longest = max(len(t) for t in texts)
        tokens = torch.tensor([t.words + [PAD_ID] * (longest - len(t)) for t in texts], dtype=torch.long)
        lengths = torch.tensor([len(t) for t in texts])
        if not any(text.subwords for text in texts):
            return Batch(tokens, lengths)
        # one bag per position, row-major; padding's bags are empty
        bags = [bag for text in texts for bag in [*text.subwords, *[()] * (longest - len(text))]]
        return Batch(tokens, lengths, bag_offsets(bags))

    def logits(self, batch: Batch) -> Tensor:
        """(B, C) logits of the whole classifier: the recurrent part's, combined with the n-gram
        part's where the model has one."""
        logits = self.module(batch.tokens, batch.lengths, batch.subwords)  # (B, C)
        if self.module.ngram is None:
            return logits
        real = torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]  # (B, S)
        rows = torch.arange(len(batch.lengths)).repeat_interleave(batch.lengths)  # (N,)
        return self.combine(logits, self.module.ngram(batch.tokens.cpu()[real], rows, len(batch.lengths)))

    def combine(self, logits: Tensor, ngram_log_odds: Tensor) -> Tensor:
        """The recurrent part's logits (B, C) and the n-gram part's log-odds of positive (B,) ->
        the combined logits (B, C): -z/2 and z/2 for combined log-odds z, so softmax gives
        P(positive) = sigmoid(z)."""
        config = self.module.config
        positive = LABELS.index("positive")
        recurrent = (logits[:, positive] - logits[:, 1 - positive]).float()  # (B,)
        z = config.mix_rnn * recurrent + config.mix_ngram * ngram_log_odds + config.mix_bias  # (B,)
        halves = [-z / 2, z / 2] if positive == 1 else [z / 2, -z / 2]
        return torch.stack(halves, dim=-1)  # (B, 2)

    def _recurrent_logits(self, texts: list[EncodedText]) -> Tensor:
        """(B, C) logits of the recurrent part, by the fast path where it applies."""
        projected = self.projected() if len(texts) >= PROJECTED_MIN_BATCH else None
        if projected is not None:
            return projected.logits(texts)
        batch = self.collate(texts)
        return self.module(batch.tokens, batch.lengths, batch.subwords)

    @torch.inference_mode()
    def part_log_odds(self, texts: list[EncodedText]) -> tuple[Tensor, Tensor | None]:
        """Each part's log-odds of positive (B,), in float32: the recurrent part's, and the n-gram
        part's (None without one). What training fits the combination's weights on."""
        logits = self._recurrent_logits(texts).float()  # (B, C)
        positive = LABELS.index("positive")
        recurrent = logits[:, positive] - logits[:, 1 - positive]
        if self.module.ngram is None:
            return recurrent, None
        return recurrent, self.module.ngram.log_odds([t.words for t in texts])

    def projected(self) -> ProjectedLSTM | None:
        """The fast path (`ProjectedLSTM`) for the module and weights as they are now, built on
        first use and again if either changes; None where it does not apply."""
        module = self.module
        # the versions count in-place changes (an optimizer step, load_state_dict)
        state = (module.training, *(parameter._version for parameter in module.parameters()))
        if self._projected_of is None or self._projected_of != (module, state):
            from models.projected_lstm import ProjectedLSTM  # it builds on this module's types

            self._projected = ProjectedLSTM(module, self.vocab) if ProjectedLSTM.supports(module) else None
            self._projected_of = (module, state)
        return self._projected

    @torch.inference_mode()
    def predict_ids(self, texts: list[EncodedText]) -> Tensor:
        """Probabilities (B, C) for already-encoded texts, in float32 whatever the model's dtype."""
        logits = self._recurrent_logits(texts)  # (B, C)
        if self.module.ngram is not None:
            logits = self.combine(logits, self.module.ngram.log_odds([t.words for t in texts]))
        return torch.softmax(logits.float(), dim=-1)

    def predict_proba(self, texts: list[str]) -> Tensor:
        return self.predict_ids([self.encode(t) for t in texts])

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32,
             int8_embeddings: bool = False) -> None:
        """Write the artifact; `int8_embeddings` stores the word and subword tables (most of the
        bytes) as int8 rows with a `dtype` scale each (models.artifact.save_module)."""
        tables = ("embedding.weight",) + (("subwords.weight",) if self.module.subwords is not None else ())
        save_module(directory, TASK, self.module.config, self.module, dtype,
                    int8_rows=tables if int8_embeddings else ())
        self.vocab.save(Path(directory) / VOCAB_FILE)
        record_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> SentimentClassifier:
        config = SentimentConfig(**read_config(directory, TASK))
        module = load_weights(directory, SentimentRNN(config))
        return cls(module, Vocab.load(Path(directory) / VOCAB_FILE))
