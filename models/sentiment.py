"""Many-to-one: a sentence -> negative/positive.

Embedding -> (bi)RNN over packed sequences -> max and mean pooling over real tokens -> classifier.
Packing means padding never enters the recurrence, so a sentence gets the same answer
alone or in a batch with longer ones.

Optionally (`subword_buckets` > 0) each word's vector adds the mean of its hashed character
n-grams, fastText style (Bojanowski et al. 2017): "<unwatchable>" shares "<un", "watch", "able>"
with words seen in training, so a word the vocabulary lacks still carries meaning instead of
being one shared UNK vector.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from models.artifact import check_vocab_size, load_weights, read_config, save_module
from models.names import LABELS
from models.rnn import make_rnn, recurrence, run_padded
from models.text import sentiment_tokens
from models.vocab import PAD_ID, UNK_ID, Vocab

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
        table the (ids, offsets) of one bag per position (`Batch`) -> logits (B, C)."""
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


# The most frequent words whose projected input the fast path keeps: 4,096 x 8 x hidden_size
# floats (23 MB at the shipped 176 units), covering 87% of the words of SST-2 dev.
PROJECTED_WORDS = 4096


# From this many texts the fast path beats torch's packed LSTM on an AVX2 CPU as well: at 4 it
# read 0.76-1.00x torch's there, at 8 1.08-1.09x (`python -m loadtest.projected_lstm`). A lone
# text goes through torch's, whose oneDNN kernel needs no packing for it.
PROJECTED_MIN_BATCH = 8


def pooled_recurrence(gates_in: Tensor, w_hh: Tensor, active: list[int],
                      hidden: int) -> tuple[Tensor, Tensor]:
    """ProjectedLSTM's steps: the LSTM recurrence over gates_in (S, D, B, 4H), the input's share
    of the gate pre-activations (gate order i, f, o, g, g doubled), with w_hh (D, H, 4H). At
    step t the first active[t] rows read (rows sorted longest first). Returns the max and the sum
    over time of h, each (D, B, H)."""
    directions, batch = gates_in.size(1), gates_in.size(2)
    h = gates_in.new_zeros(directions, batch, hidden)
    c2 = gates_in.new_zeros(directions, batch, hidden)  # 2c, the cell state doubled
    maxed = gates_in.new_full((directions, batch, hidden), float("-inf"))
    summed = gates_in.new_zeros(directions, batch, hidden)
    for t in range(len(active)):
        n = active[t]
        gates = torch.baddbmm(gates_in[t, :, :n], h[:, :n], w_hh).sigmoid_()  # (D, n, 4H)
        i, f, o, g = gates.split(hidden, dim=-1)  # g = sigmoid(2 x), so tanh(x) = 2g - 1
        # c' = f c + i tanh(x), doubled: 2c' = f 2c + 4 i g - 2 i
        c2 = f * c2[:, :n]  # (D, n, H)
        c2.addcmul_(i, g, value=4.0).sub_(i, alpha=2.0)
        h = torch.sigmoid(c2).mul_(2).sub_(1).mul_(o)  # o * tanh(c) = o (2 sigmoid(2c) - 1)
        pooled = maxed[:, :n]
        torch.maximum(pooled, h, out=pooled)
        summed[:, :n] += h
    return maxed, summed


@cache
def compiled_recurrence() -> Callable[[Tensor, Tensor, list[int], int], tuple[Tensor, Tensor]]:
    """`pooled_recurrence` compiled by TorchScript, else the Python function itself.

    Compiled, the ~14 small ops of each step run from C++: 1.2x the Python loop's sentences/s at
    batch 28 (1.3x at 8) with the same numbers, and the whole recurrence runs without the GIL.
    In Python each op gives the GIL up and must win it back, so while a serving worker's event
    loop runs Python the model thread stalls at every op; compiled, they run side by side.
    Torch 2.13 deprecates torch.jit.script in favour of torch.compile, which needs a C++
    compiler at run time (the container has none): the warning is silenced here, and the Python
    loop, which gives the same numbers, stays the fallback wherever scripting fails.
    The profiling executor specialises on the first two calls: serving warms it up.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(pooled_recurrence)
    except Exception:  # no source files to compile, or a torch without TorchScript
        log.warning("TorchScript could not compile the LSTM recurrence; using the Python loop",
                    exc_info=True)
        return pooled_recurrence


class ProjectedLSTM:
    """SentimentRNN's forward pass at inference, for a batch of texts, by a faster route to the
    same numbers. For one float32 LSTM layer, one direction or two.

    Where torch's packed LSTM spends its time on a length-sorted batch of 32 SST-2 sentences: ~40%
    in the input projection W_ih x_t, much of the rest in packing, unpacking and re-sorting.
    - A vocabulary word's input x_t (its embedding plus its subwords' mean) is always the same
      vector, so W_ih x_t + b_ih + b_hh is computed once, here, for the `words` most frequent ones;
      a batch gathers rows of that table. Rarer words and UNK (whose subwords vary) are projected
      per batch.
    - Both directions run as one recurrence: the backward direction reads each text reversed and
      left-aligned, like the forward one, so at step t the same rows are active in both (the texts
      longer than t: a prefix, once sorted longest first) and one batched product (baddbmm) steps
      both. As with packing, no step ever reads padding.
    - Max and mean pooling over time do not depend on the order of the steps, so each step's
      outputs are pooled as they come instead of stored, padded and unpadded.
    - tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh costs ~5x its sigmoid per element here, so the
      candidate gate's rows are doubled in the weights and every gate takes one sigmoid.
    The results equal the module's own up to float32 rounding (tests/models/test_sentiment.py),
    and, like them, do not depend on a text's batchmates beyond that rounding.
    """

    def __init__(self, module: SentimentRNN, vocab: Vocab, words: int = PROJECTED_WORDS):
        if not self.supports(module):
            raise ValueError("ProjectedLSTM runs a float32 single-layer LSTM classifier in eval mode")
        config = module.config
        self.module = module
        self.hidden_size = hidden = config.hidden_size
        self.directions = 2 if config.bidirectional else 1
        self.words = min(words, config.vocab_size)
        self.recurrence = compiled_recurrence()  # pooled_recurrence runs the same steps in Python
        rnn = module.rnn
        suffixes = ("", "_reverse")[: self.directions]
        # torch's gate order is i, f, g, o; here i, f, o, g, with g's rows doubled (tanh above)
        order = torch.cat([torch.arange(2 * hidden), torch.arange(3 * hidden, 4 * hidden),
                           torch.arange(2 * hidden, 3 * hidden)])
        scale = torch.ones(4 * hidden, 1)
        scale[3 * hidden:] = 2.0
        with torch.no_grad():
            self.w_ih = torch.cat([getattr(rnn, f"weight_ih_l0{s}")[order] * scale
                                   for s in suffixes])  # (D*4H, E)
            self.bias = torch.cat([(getattr(rnn, f"bias_ih_l0{s}") + getattr(rnn, f"bias_hh_l0{s}"))[order]
                                   * scale[:, 0] for s in suffixes])  # (D*4H,)
            self.w_hh = torch.stack([(getattr(rnn, f"weight_hh_l0{s}")[order] * scale).T
                                     for s in suffixes]).contiguous()  # (D, H, 4H)
            ids = torch.arange(self.words)
            bags = None
            if config.subword_buckets:
                bags = bag_offsets([subword_ids(word, config.subword_buckets, config.subword_min_n,
                                                config.subword_max_n) for word in vocab.itos[: self.words]])
            projected = self._project(module.embed(ids, bags))  # (K, D, 4H)
            # row d * K + id: word id's projection for direction d
            self.table = projected.transpose(0, 1).reshape(self.directions * self.words, 4 * hidden)

    @staticmethod
    def supports(module: nn.Module) -> bool:
        rnn = getattr(module, "rnn", None)
        return (isinstance(module, SentimentRNN) and not module.training and type(rnn) is nn.LSTM
                and rnn.num_layers == 1 and rnn.bias and not rnn.proj_size
                and rnn.weight_hh_l0.dtype == module.embedding.weight.dtype == torch.float32
                and rnn.weight_hh_l0.device.type == "cpu")

    def _project(self, inputs: Tensor) -> Tensor:
        """(N, E) input vectors -> (N, D, 4H) gate pre-activations from the input."""
        return torch.addmm(self.bias, inputs, self.w_ih.T).view(len(inputs), self.directions, -1)

    def logits(self, texts: list[EncodedText]) -> Tensor:
        """(B, C) logits of `texts`, in their order."""
        batch, hidden, directions = len(texts), self.hidden_size, self.directions
        order = sorted(range(batch), key=lambda i: -len(texts[i]))  # longest first
        lengths = [len(texts[i]) for i in order]
        steps = lengths[0]
        tokens = torch.tensor([texts[i].words + [PAD_ID] * (steps - len(texts[i])) for i in order])  # (B, S)
        length = torch.tensor(lengths)
        position = torch.arange(steps)
        real = position[None, :] < length[:, None]  # (B, S)
        read = [tokens]
        if directions == 2:  # each text reversed, left-aligned: step t reads word length - 1 - t
            backward = (length[:, None] - 1 - position[None, :]).clamp(min=0)  # (B, S)
            read.append(tokens.gather(1, backward).masked_fill(~real, PAD_ID))
        read = torch.stack(read)  # (D, B, S)
        rare = (read >= self.words) | (read == UNK_ID)
        index = read.masked_fill(rare, PAD_ID) + (torch.arange(directions) * self.words)[:, None, None]
        gates_in = self.table.index_select(0, index.permute(2, 0, 1).reshape(-1)).view(
            steps, directions, batch, 4 * hidden)  # (S, D, B, 4H)
        self._put_rare(gates_in, texts, order, tokens, rare[0] & real, length)

        active, rows = [], batch  # rows of the batch still reading at each step
        for t in range(steps):
            while lengths[rows - 1] <= t:
                rows -= 1
            active.append(rows)
        maxed, summed = self.recurrence(gates_in, self.w_hh, active, hidden)  # (D, B, H) each
        # (D, B, H) -> (B, D*H): forward then backward, the layout of torch's outputs
        max_pooled = maxed.transpose(0, 1).reshape(batch, directions * hidden)
        mean_pooled = summed.transpose(0, 1).reshape(batch, directions * hidden) / length[:, None]
        logits = self.module.classifier(torch.cat([max_pooled, mean_pooled], dim=-1))  # (B, C)
        return logits[torch.tensor(order).argsort()]

    def _put_rare(self, gates_in: Tensor, texts: list[EncodedText], order: list[int], tokens: Tensor,
                  rare: Tensor, length: Tensor) -> None:
        """Project the words the table lacks and write them into gates_in (S, D, B, 4H), in place:
        word t of row b is step t forward and step length - 1 - t backward."""
        rows, positions = rare.nonzero(as_tuple=True)
        if not len(rows):
            return
        bags = None
        if self.module.subwords is not None:
            bags = bag_offsets([texts[order[b]].subwords[t]
                                for b, t in zip(rows.tolist(), positions.tolist(), strict=True)])
        projected = self._project(self.module.embed(tokens[rows, positions], bags))  # (N, D, 4H)
        gates_in[positions, 0, rows] = projected[:, 0]
        if self.directions == 2:
            gates_in[length[rows] - 1 - positions, 1, rows] = projected[:, 1]


class SentimentClassifier:
    """The vocabulary and the network together: raw texts in, probabilities out."""

    def __init__(self, module: SentimentRNN, vocab: Vocab):
        check_vocab_size(VOCAB_FILE, len(vocab), module.embedding.num_embeddings)
        self.module = module
        self.vocab = vocab
        self._projected: ProjectedLSTM | None = None
        self._projected_of: tuple[nn.Module, tuple[bool | int, ...]] | None = None

    def encode(self, text: str) -> EncodedText:
        """A raw text as the network reads it. An empty text becomes one UNK: the model's prior."""
        config = self.module.config
        words = truncate_tokens(sentiment_tokens(text, config.normalizer), config.max_tokens)
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
        return self.module(batch.tokens, batch.lengths, batch.subwords)

    def projected(self) -> ProjectedLSTM | None:
        """The fast path (`ProjectedLSTM`) for the module and weights as they are now, built on
        first use and again if either changes; None where it does not apply."""
        module = self.module
        # the versions count in-place changes (an optimizer step, load_state_dict)
        state = (module.training, *(parameter._version for parameter in module.parameters()))
        if self._projected_of is None or self._projected_of != (module, state):
            self._projected = ProjectedLSTM(module, self.vocab) if ProjectedLSTM.supports(module) else None
            self._projected_of = (module, state)
        return self._projected

    @torch.inference_mode()
    def predict_ids(self, texts: list[EncodedText]) -> Tensor:
        """Probabilities (B, C) for already-encoded texts, in float32 whatever the model's dtype."""
        projected = self.projected() if len(texts) >= PROJECTED_MIN_BATCH else None
        logits = projected.logits(texts) if projected is not None else self.logits(self.collate(texts))
        return torch.softmax(logits.float(), dim=-1)

    def predict_proba(self, texts: list[str]) -> Tensor:
        return self.predict_ids([self.encode(t) for t in texts])

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        save_module(directory, TASK, self.module.config, self.module, dtype)
        self.vocab.save(Path(directory) / VOCAB_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> SentimentClassifier:
        config = SentimentConfig(**read_config(directory, TASK))
        module = load_weights(directory, SentimentRNN(config))
        return cls(module, Vocab.load(Path(directory) / VOCAB_FILE))
