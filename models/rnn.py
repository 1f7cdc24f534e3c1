"""The recurrent cells every model can choose from, and the state they carry.

The plain (Elman) RNN is the memory in its simplest form:
    h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)
GRU and LSTM add gates that decide how much of h_{t-1} to keep, which is what lets
them hold information across long sequences where the plain cell's memory fades.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = ("rnn", "gru", "lstm")

# A recurrent state is always a tuple of (L * D, B, H) tensors: (h,) for rnn/gru, (h, c) for lstm.
# One shape for all cells lets serving slice and concatenate states without knowing the cell.
State = tuple[Tensor, ...]


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
             bidirectional: bool = False, dropout: float = 0.0) -> nn.RNNBase:
    """A batch-first torch RNN of the chosen cell."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    return cls(input_size, hidden_size, num_layers=num_layers, batch_first=True,
               bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)


def run_padded(rnn: nn.RNNBase | Callable, inputs: Tensor, lengths: Tensor
               ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """A batch_first `rnn` over padded `inputs` (B, S, E) whose rows have `lengths` (B,).

    -> outputs (B, S, D*H) with zeros on padding, and the final hidden state of each row's last
    real step. Rows of unequal length go through a packed sequence, so padding never enters the
    recurrence; a batch with no padding (a lone text, say) skips packing, which gives the same
    numbers without the packing's copies.
    """
    if int(lengths.min()) == inputs.shape[1]:
        return rnn(inputs)
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, hidden = rnn(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
    return outputs, hidden


def weight_dropped(rnn: nn.RNNBase, p: float, *args: object
                   ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """`rnn(*args)` with DropConnect on its hidden-to-hidden weights (the AWD-LSTM's weight drop,
    Merity et al. 2017): each call draws one mask per W_hh, so every time step of the batch sees
    the same thinned memory, which regularises the recurrence itself where dropout between layers
    cannot reach. Training only; at inference the full weights are the expectation.
    """
    dropped = {name: F.dropout(weight, p, training=True)
               for name, weight in rnn.named_parameters() if name.startswith("weight_hh")}
    return functional_call(rnn, dropped, args)


def recurrence(rnn: nn.RNNBase, weight_drop: float, training: bool) -> nn.RNNBase | Callable:
    """What a model calls to run `rnn`: itself, or while training with `weight_drop` > 0, the
    same rnn with weight drop (`weight_dropped`)."""
    return partial(weight_dropped, rnn, weight_drop) if training and weight_drop else rnn


# torch's functions for one step of each cell, as nn.RNNBase.mode names it
CELL_STEPS = {"RNN_TANH": torch.rnn_tanh_cell, "RNN_RELU": torch.rnn_relu_cell,
              "GRU": torch.gru_cell, "LSTM": torch.lstm_cell}


def run_rnn(rnn: nn.RNNBase | Callable, inputs: Tensor, hidden: Tensor | tuple[Tensor, Tensor]
            ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """`rnn(inputs, hidden)` for batch_first `inputs` (B, T, I); a single time step of a
    one-direction torch RNN at inference goes through `one_step` instead, the same arithmetic."""
    if (inputs.shape[1] == 1 and type(rnn) in (nn.RNN, nn.GRU, nn.LSTM) and not rnn.training
            and not rnn.bidirectional and not getattr(rnn, "proj_size", 0) and rnn.batch_first):
        return one_step(rnn, inputs, hidden)
    return rnn(inputs, hidden)


def one_step(rnn: nn.RNNBase, inputs: Tensor, hidden: Tensor | tuple[Tensor, Tensor]
             ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """One time step of `rnn` (one direction, batch_first, inference): inputs (B, 1, I) ->
    (outputs (B, 1, H), hidden), by torch's cell functions one layer after another.

    Torch's own RNN computes the same (bit for bit in float32 when it runs its native kernels),
    but on CPU it hands a float LSTM to oneDNN, which sets up every call anew: for one step that
    costs more than the step (`python -m loadtest.rnn_step` measures both ways). Over a whole
    sequence oneDNN's set-up pays for itself, so prompts and teacher forcing keep torch's path.
    """
    cell = CELL_STEPS[rnn.mode]
    lstm = rnn.mode == "LSTM"
    x = inputs[:, 0]  # (B, I)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"weight_{kind}_l{layer}") for kind in ("ih", "hh")]
        biases = [getattr(rnn, f"bias_{kind}_l{layer}") if rnn.bias else None for kind in ("ih", "hh")]
        if lstm:
            x, c = cell(x, (hidden[0][layer], hidden[1][layer]), *weights, *biases)
            cs.append(c)
        else:
            x = cell(x, hidden[layer], *weights, *biases)
        hs.append(x)
    outputs = x[:, None]  # (B, 1, H)
    return (outputs, (torch.stack(hs), torch.stack(cs))) if lstm else (outputs, torch.stack(hs))


def elman_recurrence(x: Tensor, w_xh: Tensor, w_hh: Tensor, b: Tensor | None = None,
                     h0: Tensor | None = None,
                     activation: Callable[[Tensor], Tensor] = torch.tanh) -> Tensor:
    """Reference Elman recurrence, one step at a time. x: (B, T, I) -> hidden states (B, T, H).

    Written out so the memory can be read (and tested) directly; nn.RNN computes the same.
    """
    batch, steps, _ = x.shape
    h = x.new_zeros(batch, w_hh.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(steps):
        pre = h @ w_hh.T + x[:, t] @ w_xh.T  # (B, H)
        if b is not None:
            pre = pre + b
        h = activation(pre)
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (B, T, H)


def to_state(hidden: Tensor | tuple[Tensor, Tensor]) -> State:
    return tuple(hidden) if isinstance(hidden, tuple) else (hidden,)


def from_state(state: State, cell: str) -> Tensor | tuple[Tensor, Tensor]:
    return (state[0], state[1]) if cell == "lstm" else state[0]


def select_state(state: State, index: Tensor) -> State:
    """Rows `index` of every part of the state (batch is dim 1)."""
    return tuple(part.index_select(1, index) for part in state)


def cat_states(states: Sequence[State]) -> State:
    """Join states of several batches along the batch dimension."""
    return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
