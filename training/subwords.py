"""Training sentencepiece models whose special ids match models.vocab."""

from __future__ import annotations

import io
from collections.abc import Iterable

import sentencepiece as spm

from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def train_sentencepiece(sentences: Iterable[str], vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0) -> spm.SentencePieceProcessor:
    """Train in memory; `hard_vocab_limit=False` lets tiny corpora end up with fewer pieces."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        hard_vocab_limit=False, minloglevel=2, num_threads=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())
