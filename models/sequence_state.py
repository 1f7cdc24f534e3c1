"""The whole memory of a generation, as bytes: what continuing it later needs, and nothing more.

An RNN's past fits in its recurrent state, a fixed size whatever the length of the text: for an
LSTM, (h, c) per layer. A generation that stopped also holds the last character it sampled,
which the model has not read yet (the next step reads it), and its sampler's position (the
torch.Generator's state), so that continuing draws exactly what one longer generation would.

Layout (little-endian), FORMAT_VERSION 1: a header (version, state parts, layers, hidden size,
pending token, generator-state bytes), then each part as float32 (L, H), then the generator
state. `unpack` checks every size against the model it is meant for and raises ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch
from torch import Tensor

from models.rnn import State

FORMAT_VERSION = 1
_HEADER = struct.Struct("<BBHIII")  # version, parts, num_layers, hidden_size, pending, rng bytes


@dataclass(frozen=True)
class SequenceState:
    state: State  # parts of (L, 1, H): (h, c) for an LSTM, (h,) for a GRU
    pending: int  # the last sampled token, not yet read by the model
    rng: Tensor  # torch.Generator.get_state(): uint8 (N,)


def pack(sequence: SequenceState) -> bytes:
    parts = [part.detach().to(torch.float32).reshape(part.shape[0], -1).contiguous()
             for part in sequence.state]  # (L, H) each
    num_layers, hidden_size = parts[0].shape
    rng = sequence.rng.to(torch.uint8).contiguous()
    header = _HEADER.pack(FORMAT_VERSION, len(parts), num_layers, hidden_size, sequence.pending,
                          rng.numel())
    return header + b"".join(part.numpy().tobytes() for part in parts) + rng.numpy().tobytes()


def unpack(data: bytes, *, parts: int, num_layers: int, hidden_size: int,
           vocab_size: int) -> SequenceState:
    """The state in `data`, for a model of this shape; ValueError when it does not fit."""
    if len(data) < _HEADER.size:
        raise ValueError(f"{len(data)} bytes: shorter than the {_HEADER.size}-byte header")
    version, got_parts, got_layers, got_hidden, pending, rng_bytes = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
    if (got_parts, got_layers, got_hidden) != (parts, num_layers, hidden_size):
        raise ValueError(f"state of {got_parts} x ({got_layers}, {got_hidden}), the model's is "
                         f"{parts} x ({num_layers}, {hidden_size})")
    if not 0 <= pending < vocab_size:
        raise ValueError(f"pending token {pending} outside the vocabulary of {vocab_size}")
    floats = parts * num_layers * hidden_size * 4
    if len(data) != _HEADER.size + floats + rng_bytes:
        raise ValueError(f"{len(data)} bytes, expected {_HEADER.size + floats + rng_bytes}")
    values = torch.frombuffer(bytearray(data[_HEADER.size:_HEADER.size + floats]),
                              dtype=torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("state values not finite")
    state = tuple(values.reshape(parts, num_layers, 1, hidden_size).unbind(0))  # (L, 1, H) each
    rng = torch.frombuffer(bytearray(data[_HEADER.size + floats:]), dtype=torch.uint8)
    try:
        torch.Generator().set_state(rng)
    except RuntimeError as error:
        raise ValueError(f"generator state: {error}") from None
    return SequenceState(state, pending, rng)
