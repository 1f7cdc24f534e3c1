"""Many-to-many: a sentence in one language -> a sentence in another.

Encoder: a bidirectional RNN over packed source pieces.
Decoder: an RNN over target pieces whose top state attends over the encoder outputs
(the "global attention" decoder of Luong et al. 2015). The score is either additive
(Bahdanau et al. 2014: v^T tanh(W_q q + W_k k)) or multiplicative (Luong "general": q^T W k),
masked so padding gets exactly zero weight. Attending after the recurrence lets training run
the decoder RNN over the whole target in one call instead of a Python loop per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece as spm
import torch
from torch import Tensor, nn

from models.artifact import (
    ArtifactError,
    check_vocab_size,
    load_weights,
    read_config,
    record_checksums,
    save_module,
)
from models.rnn import State, from_state, make_rnn, run_padded, run_rnn, to_state
from models.text import normalize_translation
from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

TASK = "translator"
ATTENTIONS = ("additive", "multiplicative")
SOURCE_SPM = "source.model"
TARGET_SPM = "target.model"


@dataclass(frozen=True)
class TranslatorConfig:
    source_vocab_size: int
    target_vocab_size: int
    source_lang: str = "de"
    target_lang: str = "en"
    embedding_dim: int = 256
    hidden_size: int = 256  # per encoder direction; the decoder has 2 * hidden_size
    num_layers: int = 1
    cell: str = "gru"
    attention: str = "additive"
    attention_size: int = 256
    dropout: float = 0.3
    max_source_pieces: int = 256


class Attention(nn.Module):
    """Scores a decoder query against every encoder output; softmax over real source positions."""

    def __init__(self, kind: str, query_size: int, key_size: int, attention_size: int):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "additive":
            self.key_proj = nn.Linear(key_size, attention_size, bias=False)
            self.query_proj = nn.Linear(query_size, attention_size, bias=True)
            self.v = nn.Linear(attention_size, 1, bias=False)
        else:
            self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """Once per source: keys (B, S, K) -> (B, S, A) additive or (B, S, Q) multiplicative."""
        return self.key_proj(keys)

    def forward(self, query: Tensor, projected_keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), projected_keys (B, S, *), values (B, S, K), mask (B, S) True on real
        tokens -> context (B, T, K), weights (B, T, S) summing to 1 over real tokens."""
        if self.kind == "additive":
            q = self.query_proj(query)  # (B, T, A)
            scores = self.v(torch.tanh(q[:, :, None, :] + projected_keys[:, None, :, :]))  # (B,T,S,1)
            scores = scores.squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(query, projected_keys.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(weights, values), weights  # (B, T, K), (B, T, S)


@dataclass
class Encoded:
    """What the decoder needs from the encoder, batch-first, sliceable per row."""

    outputs: Tensor  # (B, S, 2H)
    keys: Tensor  # (B, S, A) or (B, S, 2H)
    mask: Tensor  # (B, S) True on real tokens

    def repeat(self, times: int) -> Encoded:
        return Encoded(self.outputs.repeat_interleave(times, 0), self.keys.repeat_interleave(times, 0),
                       self.mask.repeat_interleave(times, 0))


class Seq2Seq(nn.Module):
    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.source_embedding = nn.Embedding(config.source_vocab_size, config.embedding_dim,
                                             padding_idx=PAD_ID)
        self.target_embedding = nn.Embedding(config.target_vocab_size, config.embedding_dim,
                                             padding_idx=PAD_ID)
        self.encoder = make_rnn(config.cell, config.embedding_dim, h, config.num_layers,
                                bidirectional=True, dropout=config.dropout)
        self.decoder = make_rnn(config.cell, config.embedding_dim, 2 * h, config.num_layers,
                                dropout=config.dropout)
        # the encoder's final forward+backward states initialise the decoder
        self.bridge = nn.Linear(2 * h, 2 * h)
        self.attention = Attention(config.attention, 2 * h, 2 * h, config.attention_size)
        self.combine = nn.Linear(4 * h, 2 * h)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(2 * h, config.target_vocab_size)

    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Encoded, State]:
        """source (B, S), lengths (B,) -> encoder outputs and the decoder's initial state."""
        embedded = self.dropout(self.source_embedding(source))  # (B, S, E)
        outputs, hidden = run_padded(self.encoder, embedded, lengths)  # (B, S, 2H)
        layers, batch = self.config.num_layers, source.shape[0]

        def bridge(part: Tensor) -> Tensor:  # (L*2, B, H) -> (L, B, 2H)
            part = part.view(layers, 2, batch, -1).permute(0, 2, 1, 3).reshape(layers, batch, -1)
            return torch.tanh(self.bridge(part))

        state = tuple(bridge(part) for part in to_state(hidden))
        mask = source != PAD_ID  # (B, S)
        return Encoded(outputs, self.attention.project_keys(outputs), mask), state

    def decode(self, target_in: Tensor, state: State, enc: Encoded) -> tuple[Tensor, State, Tensor]:
        """target_in (B, T) -> logits (B, T, V), state, attention (B, T, S)."""
        embedded = self.dropout(self.target_embedding(target_in))  # (B, T, E)
        outputs, hidden = run_rnn(self.decoder, embedded, from_state(state, self.config.cell))  # (B, T, 2H)
        context, weights = self.attention(outputs, enc.keys, enc.outputs, enc.mask)  # (B, T, 2H)
        combined = torch.tanh(self.combine(torch.cat([outputs, context], dim=-1)))  # (B, T, 2H)
        return self.output(self.dropout(combined)), to_state(hidden), weights

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T, V) for target_in = BOS + target[:-1]."""
        enc, state = self.encode(source, lengths)
        logits, _, _ = self.decode(target_in, state, enc)
        return logits


@dataclass
class Hypothesis:
    tokens: list[int]  # target piece ids, without BOS/EOS
    attention: Tensor  # (len(tokens) + 1, S): a row per emitted piece, EOS included
    score: float = field(default=0.0)  # length-normalised log-probability


@torch.inference_mode()
def beam_search(model: Seq2Seq, source: Tensor, lengths: Tensor, beam_sizes: list[int],
                max_lengths: list[int], length_penalty: float = 1.0) -> list[Hypothesis]:
    """Batched beam search where every sentence has its own beam size and max length.

    Beam size 1 is greedy decoding. Beams past a sentence's own size are kept at -inf, so a
    sentence decodes the same alone or batched with sentences that ask for wider beams.
    Finished beams stay in the beam with a frozen score; the search stops when every beam of
    every sentence has emitted EOS or reached its max length. The best beam is chosen by
    score / length ** length_penalty.
    """
    batch, k = source.shape[0], max(beam_sizes)
    enc, state = model.encode(source, lengths)
    enc = enc.repeat(k)  # (B*K, S, *)
    state = tuple(part.repeat_interleave(k, 1) for part in state)  # (L, B*K, 2H)
    device = source.device
    width = torch.tensor(beam_sizes, device=device)  # (B,)
    limit = torch.tensor(max_lengths, device=device).repeat_interleave(k)  # (B*K,)
    beam_index = torch.arange(k, device=device)
    # only beam 0 is live at the start; beams past a sentence's width never are
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    done = torch.zeros(batch * k, dtype=torch.bool, device=device)
    length = torch.zeros(batch * k, dtype=torch.long, device=device)
    history: list[tuple[Tensor, Tensor, Tensor]] = []  # (tokens, parents, attention) per step
    for _ in range(int(max(max_lengths))):
        logits, state, attn = model.decode(tokens[:, None], state, enc)  # (B*K, 1, V)
        logp = torch.log_softmax(logits[:, 0].float(), dim=-1)  # (B*K, V)
        vocab = logp.shape[-1]
        # a finished beam extends only by PAD at no cost, keeping its score
        finished_row = torch.full_like(logp[0], float("-inf"))
        finished_row[PAD_ID] = 0.0
        logp = torch.where(done[:, None], finished_row, logp)
        # a live beam at its length limit must end now
        at_limit = ~done & (length + 1 >= limit)
        eos_only = torch.full_like(logp[0], float("-inf"))
        eos_only[EOS_ID] = 0.0
        logp = torch.where(at_limit[:, None], logp + eos_only, logp)
        logp[~done, PAD_ID] = float("-inf")  # live beams never emit PAD or BOS
        logp[~done, BOS_ID] = float("-inf")
        candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab)  # (B, K*V)
        top_scores, top_index = candidates.topk(k, dim=-1)  # (B, K)
        top_scores = top_scores.masked_fill(beam_index[None, :] >= width[:, None], float("-inf"))
        parents = (top_index // vocab + (torch.arange(batch, device=device) * k)[:, None]).view(-1)
        tokens = (top_index % vocab).view(-1)  # (B*K,)
        state = tuple(part.index_select(1, parents) for part in state)
        was_done = done.index_select(0, parents)
        length = length.index_select(0, parents) + (~was_done).long()
        done = was_done | (tokens == EOS_ID)
        scores = top_scores
        history.append((tokens, parents, attn[:, 0].index_select(0, parents)))
        if bool(done.view(batch, k)[scores > float("-inf")].all()):
            break
    normalised = scores / length.view(batch, k).clamp(min=1).float() ** length_penalty
    best = normalised.argmax(dim=-1).tolist()  # (B,)
    step_tokens = torch.stack([h[0] for h in history]).tolist()  # (T, B*K)
    step_parents = torch.stack([h[1] for h in history]).tolist()  # (T, B*K)
    step_attn = torch.stack([h[2] for h in history])  # (T, B*K, S)
    results = []
    for row in range(batch):
        flat = row * k + best[row]
        pieces, steps = [], []
        for t in range(len(history) - 1, -1, -1):
            if step_tokens[t][flat] != PAD_ID:
                pieces.append(step_tokens[t][flat])
                steps.append((t, flat))
            flat = step_parents[t][flat]
        pieces.reverse()
        steps.reverse()
        rows = step_attn[[t for t, _ in steps], [f for _, f in steps]].float()  # (len, S)
        if pieces and pieces[-1] == EOS_ID:
            pieces = pieces[:-1]
        results.append(Hypothesis(pieces, rows, float(normalised[row, best[row]])))
    return results


@dataclass
class Translation:
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    attention: list[list[float]]  # target x source, each row sums to 1


class Translator:
    """Sentencepiece models for both languages and the seq2seq network together."""

    def __init__(self, module: Seq2Seq, source_spm: spm.SentencePieceProcessor,
                 target_spm: spm.SentencePieceProcessor):
        check_vocab_size(SOURCE_SPM, source_spm.get_piece_size(),
                         module.source_embedding.num_embeddings)
        check_vocab_size(TARGET_SPM, target_spm.get_piece_size(),
                         module.target_embedding.num_embeddings)
        for name, sp in ((SOURCE_SPM, source_spm), (TARGET_SPM, target_spm)):
            # checked on every load, so not an assert (python -O would skip it)
            specials = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
            if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
                raise ArtifactError(f"{name}: special ids (pad, unk, bos, eos) = {specials}, "
                                    f"models.vocab has {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")
        self.module = module
        self.source_spm = source_spm
        self.target_spm = target_spm

    @property
    def config(self) -> TranslatorConfig:
        return self.module.config

    def encode_source(self, text: str) -> list[int]:
        """Source piece ids + EOS, truncated to max_source_pieces. An empty text is just EOS."""
        ids = self.source_spm.encode(normalize_translation(text))
        return ids[: self.config.max_source_pieces - 1] + [EOS_ID]

    def default_max_length(self, source_ids: list[int]) -> int:
        return 2 * len(source_ids) + 10

    def collate(self, sequences: list[list[int]]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([len(s) for s in sequences])
        tokens = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = torch.tensor(seq)
        return tokens, lengths

    def translate_ids(self, sequences: list[list[int]], beam_sizes: list[int],
                      max_lengths: list[int | None]) -> list[Hypothesis]:
        source, lengths = self.collate(sequences)
        limits = [m if m is not None else self.default_max_length(s)
                  for s, m in zip(sequences, max_lengths, strict=True)]
        return beam_search(self.module, source, lengths, beam_sizes, limits)

    def translate(self, texts: list[str], beam_size: int = 1,
                  max_length: int | None = None) -> list[Translation]:
        sequences = [self.encode_source(t) for t in texts]
        hyps = self.translate_ids(sequences, [beam_size] * len(texts), [max_length] * len(texts))
        return [self.to_translation(s, h) for s, h in zip(sequences, hyps, strict=True)]

    def to_translation(self, source_ids: list[int], hyp: Hypothesis) -> Translation:
        return Translation(
            translation=self.target_spm.decode(hyp.tokens),
            source_tokens=[self.source_spm.id_to_piece(i) for i in source_ids],
            target_tokens=[self.target_spm.id_to_piece(i) for i in hyp.tokens] + ["</s>"],
            attention=hyp.attention[:, : len(source_ids)].tolist(),
        )

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        directory = Path(directory)
        save_module(directory, TASK, self.config, self.module, dtype)
        (directory / SOURCE_SPM).write_bytes(self.source_spm.serialized_model_proto())
        (directory / TARGET_SPM).write_bytes(self.target_spm.serialized_model_proto())
        record_checksums(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Translator:
        directory = Path(directory)
        config = TranslatorConfig(**read_config(directory, TASK))
        module = load_weights(directory, Seq2Seq(config))
        source = spm.SentencePieceProcessor(model_file=str(directory / SOURCE_SPM))
        target = spm.SentencePieceProcessor(model_file=str(directory / TARGET_SPM))
        return cls(module, source, target)
