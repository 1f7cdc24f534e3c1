"""models.rnn: the Elman recurrence is the memory; states slice and join per row."""

from __future__ import annotations

import pytest
import torch

from models.rnn import (
    CELLS,
    cat_states,
    elman_recurrence,
    from_state,
    make_rnn,
    one_step,
    run_padded,
    run_rnn,
    select_state,
    to_state,
    weight_dropped,
)


def test_elman_memory_is_a_decaying_sum_of_past_inputs():
    # W_hh = 0.9 I, W_xh = I, no bias, identity activation: h_t = 0.9 h_{t-1} + x_t, so
    # h_3 = 0.81 x_1 + 0.9 x_2 + x_3: older inputs are remembered, but fade geometrically.
    size = 3
    x1, x2, x3 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 0.5, 0.5])
    x = torch.stack([x1, x2, x3])[None]  # (1, 3, 3)
    h = elman_recurrence(x, w_xh=torch.eye(size), w_hh=0.9 * torch.eye(size), activation=lambda z: z)
    assert h.shape == (1, 3, size)
    torch.testing.assert_close(h[0, 0], x1)
    torch.testing.assert_close(h[0, 1], 0.9 * x1 + x2)
    torch.testing.assert_close(h[0, 2], 0.81 * x1 + 0.9 * x2 + x3)


def test_elman_uses_bias_and_initial_state():
    x = torch.zeros(2, 1, 2)
    h0 = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    b = torch.tensor([0.5, 0.25])
    h = elman_recurrence(x, torch.eye(2), 0.5 * torch.eye(2), b=b, h0=h0, activation=lambda z: z)
    torch.testing.assert_close(h[:, 0], 0.5 * h0 + b)


def test_torch_rnn_computes_the_elman_recurrence():
    torch.manual_seed(0)
    rnn = make_rnn("rnn", input_size=4, hidden_size=5)
    assert isinstance(rnn, torch.nn.RNN) and rnn.nonlinearity == "tanh" and rnn.batch_first
    x = torch.randn(3, 7, 4)
    h0 = torch.randn(1, 3, 5)
    outputs, last = rnn(x, h0)
    reference = elman_recurrence(x, rnn.weight_ih_l0, rnn.weight_hh_l0,
                                 b=rnn.bias_ih_l0 + rnn.bias_hh_l0, h0=h0[0])
    torch.testing.assert_close(outputs, reference)
    torch.testing.assert_close(last[0], reference[:, -1])


def test_make_rnn_builds_every_cell_batch_first():
    for cell, cls in zip(CELLS, (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM), strict=True):
        rnn = make_rnn(cell, 3, 4, num_layers=2, bidirectional=True, dropout=0.1)
        assert type(rnn) is cls
        assert rnn.batch_first and rnn.bidirectional and rnn.num_layers == 2 and rnn.dropout == 0.1
    # dropout only acts between layers: a one-layer RNN gets none (torch warns otherwise)
    assert make_rnn("gru", 3, 4, num_layers=1, dropout=0.5).dropout == 0.0


def test_make_rnn_rejects_unknown_cell_naming_the_choices():
    with pytest.raises(ValueError, match="transformer") as err:
        make_rnn("transformer", 3, 4)
    for cell in CELLS:
        assert repr(cell) in str(err.value)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_select_and_cat_states_round_trip(cell):
    torch.manual_seed(0)
    rnn = make_rnn(cell, 3, 4, num_layers=2)
    x = torch.randn(5, 6, 3)
    _, hidden = rnn(x)
    state = to_state(hidden)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(part.shape == (2, 5, 4) for part in state)

    pieces = [select_state(state, torch.tensor(rows)) for rows in ([0, 1], [2], [3, 4])]
    for part, joined in zip(state, cat_states(pieces), strict=True):
        assert torch.equal(part, joined)

    # a state slice is the state of running those rows alone
    rows = torch.tensor([4, 1])
    _, alone = rnn(x[rows])
    for part, expected in zip(select_state(state, rows), to_state(alone), strict=True):
        torch.testing.assert_close(part, expected)

    # and it is what the cell accepts back as its initial state: continuing from it is running on
    restored = from_state(state, cell)
    assert isinstance(restored, tuple) == (cell == "lstm")
    more = torch.randn(5, 2, 3)
    continued, _ = rnn(more, restored)
    whole, _ = rnn(torch.cat([x, more], dim=1))
    torch.testing.assert_close(continued, whole[:, -2:])


@pytest.mark.parametrize("cell", CELLS)
def test_run_padded_gives_each_row_what_it_gets_alone(cell):
    torch.manual_seed(0)
    rnn = make_rnn(cell, 4, 5, num_layers=2, bidirectional=True).eval()
    inputs = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 2, 4])
    with torch.inference_mode():
        outputs, hidden = run_padded(rnn, inputs, lengths)  # packed: the lengths differ
        for row, length in enumerate(lengths.tolist()):
            alone, alone_hidden = run_padded(rnn, inputs[row:row + 1, :length], lengths[row:row + 1])
            torch.testing.assert_close(outputs[row, :length], alone[0])
            assert not bool(outputs[row, length:].any())  # padding gives zeros
            for part, alone_part in zip(to_state(hidden), to_state(alone_hidden), strict=True):
                torch.testing.assert_close(part[:, row], alone_part[:, 0])


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_runs_the_rnn_with_dropped_recurrent_weights_only(cell):
    torch.manual_seed(0)
    rnn = make_rnn(cell, 3, 6, num_layers=2)
    x = torch.randn(2, 5, 3)
    before = {name: w.detach().clone() for name, w in rnn.named_parameters()}

    torch.manual_seed(7)
    outputs, _ = weight_dropped(rnn, 0.5, x)
    # the same draws, by hand: a copy whose W_hh (and only those) are the dropped ones
    reference = make_rnn(cell, 3, 6, num_layers=2)
    reference.load_state_dict(rnn.state_dict())
    torch.manual_seed(7)
    with torch.no_grad():
        for name, weight in reference.named_parameters():
            if name.startswith("weight_hh"):
                weight.copy_(torch.nn.functional.dropout(weight, 0.5, training=True))
    torch.testing.assert_close(outputs, reference(x)[0])
    assert not torch.allclose(outputs, rnn(x)[0])

    outputs.sum().backward()  # the gradient reaches the raw weights, which stay untouched
    assert all(rnn.get_parameter(f"weight_hh_l{k}").grad.abs().sum() > 0 for k in range(2))
    for name, weight in rnn.named_parameters():
        torch.testing.assert_close(weight.detach(), before[name])


def test_weight_drop_of_zero_is_the_plain_rnn():
    rnn = make_rnn("lstm", 3, 4)
    x, state = torch.randn(2, 5, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 4))
    outputs, (h, c) = weight_dropped(rnn, 0.0, x, state)
    expected, (h_ref, c_ref) = rnn(x, state)
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close((h, c), (h_ref, c_ref))


def random_hidden(rnn: torch.nn.RNNBase, batch: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    shape = (rnn.num_layers, batch, rnn.hidden_size)
    return (torch.randn(shape), torch.randn(shape)) if rnn.mode == "LSTM" else torch.randn(shape)


@pytest.mark.parametrize("rnn", [
    torch.nn.RNN(4, 6, num_layers=2, batch_first=True),
    torch.nn.RNN(4, 6, num_layers=2, batch_first=True, nonlinearity="relu", bias=False),
    torch.nn.GRU(4, 6, num_layers=2, batch_first=True),
    torch.nn.LSTM(4, 6, num_layers=3, batch_first=True),
    torch.nn.LSTM(4, 6, batch_first=True, bias=False),
], ids=["rnn-tanh", "rnn-relu-no-bias", "gru", "lstm-3-layers", "lstm-no-bias"])
def test_one_step_is_the_rnns_own_step(rnn):
    torch.manual_seed(0)
    rnn.eval()
    inputs, hidden = torch.randn(5, 1, 4), random_hidden(rnn, 5)
    with torch.inference_mode():
        outputs, new_hidden = one_step(rnn, inputs, hidden)
        expected, expected_hidden = rnn(inputs, hidden)  # oneDNN's kernels for the LSTMs
        torch.testing.assert_close(outputs, expected)
        torch.testing.assert_close(new_hidden, expected_hidden)
        with torch.backends.mkldnn.flags(enabled=False):  # torch's native kernels: bit for bit
            expected, expected_hidden = rnn(inputs, hidden)
        assert torch.equal(outputs, expected)
        for part, expected_part in zip(to_state(new_hidden), to_state(expected_hidden), strict=True):
            assert torch.equal(part, expected_part)


def test_one_step_runs_in_bfloat16():
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True).eval().to(torch.bfloat16)
    inputs = torch.randn(3, 1, 4, dtype=torch.bfloat16)
    hidden = tuple(part.to(torch.bfloat16) for part in random_hidden(rnn, 3))
    with torch.inference_mode():
        outputs, _ = one_step(rnn, inputs, hidden)
        expected, _ = rnn(inputs, hidden)
    assert outputs.dtype == torch.bfloat16
    torch.testing.assert_close(outputs, expected, atol=0.02, rtol=0.02)


def test_run_rnn_steps_by_cell_only_one_inference_step(monkeypatch):
    import models.rnn

    calls = []
    monkeypatch.setattr(models.rnn, "one_step", lambda *args: calls.append(args) or ("stepped", None))
    lstm = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True, dropout=0.5)
    hidden = random_hidden(lstm, 2)
    one, two = torch.randn(2, 1, 4), torch.randn(2, 2, 4)
    run_rnn(lstm, one, hidden)  # training: dropout between layers is torch's to draw
    run_rnn(lstm.eval(), two, hidden)  # a sequence: oneDNN's set-up pays for itself
    bidirectional = torch.nn.LSTM(4, 6, batch_first=True, bidirectional=True).eval()
    run_rnn(bidirectional, one, (torch.randn(2, 2, 6), torch.randn(2, 2, 6)))
    assert calls == []
    assert run_rnn(lstm, one, hidden) == ("stepped", None)
