"""Many-to-one: a sentence -> negative/positive.

Embedding -> (bi)RNN over packed sequences -> max and mean pooling over real tokens -> classifier.
Packing means padding never enters the recurrence, so a sentence gets the same answer
alone or in a batch with longer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.artifact import check_vocab_size, load_weights, read_config, save_module
from models.rnn import make_rnn, recurrence, run_padded
from models.text import sentiment_tokens
from models.vocab import PAD_ID, UNK_ID, Vocab

TASK = "sentiment"
LABELS = ("negative", "positive")
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


class SentimentRNN(nn.Module):
    def __init__(self, config: SentimentConfig):
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD_ID)
        self.rnn = make_rnn(config.cell, config.embedding_dim, config.hidden_size,
                            config.num_layers, config.bidirectional, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        # max-pool and mean-pool over time, concatenated
        self.classifier = nn.Linear(2 * directions * config.hidden_size, config.num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, S) padded with PAD_ID, lengths (B,) >= 1 -> logits (B, C)."""
        embedded = self.dropout(self.embedding(tokens))  # (B, S, E)
        rnn = recurrence(self.rnn, self.config.weight_drop, self.training)
        outputs, _ = run_padded(rnn, embedded, lengths)  # (B, S, D*H)
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None, :]
                < lengths.to(tokens.device)[:, None]).unsqueeze(-1)  # (B, S, 1)
        max_pooled = outputs.masked_fill(~mask, float("-inf")).amax(dim=1)  # (B, D*H)
        mean_pooled = outputs.sum(dim=1) / lengths.to(outputs)[:, None]  # padding rows are 0
        return self.classifier(self.dropout(torch.cat([max_pooled, mean_pooled], dim=-1)))


class SentimentClassifier:
    """The vocabulary and the network together: raw texts in, probabilities out."""

    def __init__(self, module: SentimentRNN, vocab: Vocab):
        check_vocab_size(VOCAB_FILE, len(vocab), module.embedding.num_embeddings)
        self.module = module
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw text. An empty text becomes one UNK: the model's prior."""
        return self.vocab.encode(sentiment_tokens(text)) or [UNK_ID]

    @staticmethod
    def collate(sequences: list[list[int]]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([len(s) for s in sequences])
        tokens = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = torch.tensor(seq)
        return tokens, lengths

    @torch.inference_mode()
    def predict_ids(self, sequences: list[list[int]]) -> Tensor:
        """Probabilities (B, C) for already-encoded sequences."""
        tokens, lengths = self.collate(sequences)
        return torch.softmax(self.module(tokens, lengths), dim=-1)

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
