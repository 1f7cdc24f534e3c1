"""One-to-many: a prompt -> a stream of characters from a char-level RNN language model.

The step API (`step(tokens, state) -> logits, state`) is what serving batches: every
sequence's memory is a fixed-size state, so requests can join and leave a running batch
by slicing and concatenating states (Karpathy 2015, "The Unreasonable Effectiveness of RNNs").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.artifact import check_vocab_size, load_weights, read_config, record_checksums, save_module
from models.rnn import State, from_state, make_rnn, recurrence, run_rnn, to_state
from models.sequence_state import SequenceState
from models.vocab import PAD_ID, SPECIALS, UNK_ID, Vocab

TASK = "generator"
VOCAB_FILE = "vocab.json"
# An empty prompt starts the text as if after a blank line.
EMPTY_PROMPT = "\n"


@dataclass(frozen=True)
class CharLMConfig:
    vocab_size: int
    embedding_dim: int = 64
    hidden_size: int = 512
    num_layers: int = 2
    cell: str = "lstm"
    dropout: float = 0.2
    weight_drop: float = 0.0  # DropConnect on W_hh while training (models.rnn.weight_dropped)


class CharLM(nn.Module):
    def __init__(self, config: CharLMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = make_rnn(config.cell, config.embedding_dim, config.hidden_size,
                            config.num_layers, dropout=config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch_size: int) -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        parts = 2 if self.config.cell == "lstm" else 1
        weight = self.embedding.weight  # the one float weight an int8 copy keeps (models.quantize)
        return tuple(weight.new_zeros(shape) for _ in range(parts))

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (B, T) -> logits (B, T, V) and the state after the last step."""
        if state is None:
            state = self.init_state(tokens.shape[0])
        embedded = self.embedding(tokens)  # (B, T, E)
        rnn = recurrence(self.rnn, self.config.weight_drop, self.training)
        outputs, hidden = run_rnn(rnn, embedded, from_state(state, self.config.cell))  # (B, T, H)
        return self.head(self.dropout(outputs)), to_state(hidden)

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One character per sequence: tokens (B,) -> logits (B, V), next state."""
        logits, state = self(tokens[:, None], state)  # (B, 1, V)
        return logits[:, 0], state


def check_sampling(temperature: float, top_k: int) -> None:
    """Raise ValueError unless every row of a batch can sample with these options.

    temperature: any finite number from 0 (the likeliest token: see sample_next); top_k: 0 (off)
    or more, any size (clamp_top_k). Other values would fail or mislead inside a shared batch.
    """
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be 0 (off) or more, got {top_k}")


def clamp_top_k(top_k: int, vocab_size: int) -> int:
    """`top_k` as sample_next takes it: k at least the vocabulary means all of it, as 0 does,
    so any k fits a tensor whatever the model's vocabulary."""
    return 0 if top_k >= vocab_size else top_k


def sampling_logits(logits: Tensor, temperature: Tensor, top_k: Tensor) -> tuple[Tensor, Tensor]:
    """The logits sampling draws from, and which rows are greedy.

    logits (B, V), temperature (B,), top_k (B,) -> scaled (B, V) float32, greedy (B,) bool:
    specials masked, divided by each row's temperature, all but each row's top_k (0 = off) set
    to -inf. A temperature of 0, or one so small that logits / temperature overflows float32,
    makes the row greedy (the limit of sampling as the temperature falls to 0): its scaled
    logits keep only the likeliest token. A row whose logits are not finite (a damaged model) or
    whose temperature is negative or NaN raises ValueError, before any row draws, so the caller
    can sample the rows one by one and fail only that one.
    """
    logits = logits.float().clone()
    logits[:, : len(SPECIALS)] = float("-inf")  # never emit padding, unknown or boundaries
    broken = ~torch.isfinite(logits[:, len(SPECIALS):]).all(dim=-1) | ~(temperature >= 0)  # (B,)
    if bool(broken.any()):
        raise ValueError(f"rows {broken.nonzero()[:, 0].tolist()} cannot be sampled: logits not "
                         "finite or temperature not >= 0")
    allowed = logits
    logits = allowed / temperature[:, None]
    greedy = ~torch.isfinite(logits.amax(dim=-1))  # (B,) overflowed to +/-inf, or 0/0 = NaN
    if bool(greedy.any()):
        only_likeliest = torch.full_like(allowed, float("-inf"))
        only_likeliest.scatter_(1, allowed.argmax(dim=-1, keepdim=True), 0.0)  # (B, V)
        logits = torch.where(greedy[:, None], only_likeliest, logits)
    vocab = logits.shape[-1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    if bool((k < vocab).any()):
        kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits, greedy


def sample_next(logits: Tensor, temperature: Tensor, top_k: Tensor,
                generators: list[torch.Generator | None]) -> Tensor:
    """Sample one token per row with its own temperature, top-k (0 = off) and RNG.

    logits (B, V), temperature (B,), top_k (B,) -> tokens (B,). Each row draws only from its
    own generator, so a seeded request gives the same text whatever it is batched with. A greedy
    row (sampling_logits) takes its likeliest token and draws nothing from its generator.
    """
    scaled, greedy = sampling_logits(logits, temperature, top_k)
    probs = torch.softmax(scaled, dim=-1)  # (B, V)
    if bool(greedy.any()):
        likeliest = scaled.argmax(dim=-1)  # (B,)
        return torch.cat([likeliest[row, None] if greedy[row] else
                          torch.multinomial(probs[row], 1, generator=gen)
                          for row, gen in enumerate(generators)])
    return torch.cat([torch.multinomial(probs[row], 1, generator=gen)
                      for row, gen in enumerate(generators)])


def sampled_log_probs(logits: Tensor, temperature: Tensor, top_k: Tensor, tokens: Tensor,
                      k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The log-probability of each row's sampled token under the distribution it was drawn from
    (after temperature and top-k), and that distribution's k likeliest tokens.

    logits (B, V), temperature (B,), top_k (B,), tokens (B,) -> chosen (B,), top values (B, k),
    top ids (B, k). Alternatives outside a row's top_k have log-probability -inf.
    """
    log_probs = torch.log_softmax(sampling_logits(logits, temperature, top_k)[0], dim=-1)  # (B, V)
    chosen = log_probs.gather(1, tokens[:, None])[:, 0]  # (B,)
    top = log_probs.topk(k, dim=-1)  # (B, k) each
    return chosen, top.values, top.indices


class CharGenerator:
    """The character vocabulary and the language model together."""

    def __init__(self, module: CharLM, vocab: Vocab):
        check_vocab_size(VOCAB_FILE, len(vocab), module.embedding.num_embeddings)
        self.module = module
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return [self.vocab.stoi.get(ch, UNK_ID) for ch in (text or EMPTY_PROMPT)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab.decode(ids))

    @torch.inference_mode()
    def prime(self, prompt: str) -> tuple[Tensor, State]:
        """Run the prompt through the model: logits for the first new character (V,), state."""
        ids = torch.tensor([self.encode(prompt)])  # (1, P)
        logits, state = self.module(ids)
        return logits[0, -1], state

    @torch.inference_mode()
    def resume(self, sequence: SequenceState, prompt: str) -> tuple[Tensor, State]:
        """Continue from a saved sequence: read its pending character, then `prompt` (which may
        be empty: nothing more). Logits for the next character (V,), and the state."""
        like = self.module.init_state(1)[0]
        state = tuple(part.to(like.dtype) for part in sequence.state)  # (L, 1, H) each
        ids = torch.tensor([[sequence.pending, *(self.encode(prompt) if prompt else [])]])  # (1, 1 + P)
        logits, state = self.module(ids, state)
        return logits[0, -1], state

    @torch.inference_mode()
    def generate(self, prompt: str, max_tokens: int, temperature: float = 0.8, top_k: int = 0,
                 seed: int | None = None) -> str:
        """Sample a continuation one character at a time (the unbatched reference)."""
        check_sampling(temperature, top_k)
        top_k = clamp_top_k(top_k, self.module.config.vocab_size)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, state = self.prime(prompt)
        logits = logits[None]
        out: list[int] = []
        for _ in range(max_tokens):
            token = sample_next(logits, torch.tensor([temperature]), torch.tensor([top_k]),
                                [generator])
            out.append(int(token))
            logits, state = self.module.step(token, state)
        return self.decode(out)

    def log_prob_entries(self, logits: Tensor, temperature: Tensor, top_k: Tensor, tokens: Tensor,
                         k: int) -> list[dict]:
        """Per row, the sampled character, its log-probability and the k likeliest alternatives
        (those the row's top-k left possible), as /generate's `logprobs` entries."""
        chosen, values, ids = sampled_log_probs(logits, temperature, top_k, tokens, k)
        return [{"char": self.decode([token]), "logprob": logprob,
                 "top": [{"char": self.decode([i]), "logprob": v}
                         for i, v in zip(row_ids, row_values, strict=True) if v != float("-inf")]}
                for token, logprob, row_ids, row_values
                in zip(tokens.tolist(), chosen.tolist(), ids.tolist(), values.tolist(), strict=True)]

    def score_ids(self, texts: list[tuple[list[int], int]]) -> list[list[float | None]]:
        """Each text's surprisal, in one padded batch.

        `texts`: (ids, start) pairs: a prompt's ids and then the text's, start = the prompt's
        length (>= 1). Returns per text the surprisal -log p (nats) of ids[start:], each after
        the ids before it, under the distribution a generation at temperature 1 and top-k 0
        samples from; None for a character that distribution never gives (outside the
        vocabulary). Right padding cannot reach the real positions of a left-to-right model.
        """
        longest = max(len(ids) for ids, _ in texts)
        tokens = torch.tensor([ids + [PAD_ID] * (longest - len(ids)) for ids, _ in texts])  # (B, S)
        logits, _ = self.module(tokens[:, :-1])  # (B, S-1, V): position p predicts p + 1
        batch, steps, vocab = logits.shape
        flat = logits.reshape(batch * steps, vocab)  # (B*(S-1), V)
        ones = torch.ones(batch * steps)
        scaled, _ = sampling_logits(flat, ones, torch.zeros_like(ones, dtype=torch.long))
        log_probs = torch.log_softmax(scaled, dim=-1).view(batch, steps, vocab)  # (B, S-1, V)
        picked = log_probs.gather(2, tokens[:, 1:, None])[..., 0].tolist()  # (B, S-1)
        return [[None if value == float("-inf") else -value for value in row[start - 1:len(ids) - 1]]
                for row, (ids, start) in zip(picked, texts, strict=True)]

    def score_job(self, prompt: str, text: str) -> tuple[list[int], int]:
        """(ids, start) of `text` after `prompt` for score_ids."""
        context = self.encode(prompt)
        return context + [self.vocab.stoi.get(ch, UNK_ID) for ch in text], len(context)

    @torch.inference_mode()
    def score(self, text: str, prompt: str = "") -> list[float | None]:
        """The surprisal of each character of `text` after `prompt` (score_ids, alone)."""
        return self.score_ids([self.score_job(prompt, text)])[0]

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        save_module(directory, TASK, self.module.config, self.module, dtype)
        self.vocab.save(Path(directory) / VOCAB_FILE)
        record_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> CharGenerator:
        config = CharLMConfig(**read_config(directory, TASK))
        module = load_weights(directory, CharLM(config))
        return cls(module, Vocab.load(Path(directory) / VOCAB_FILE))
