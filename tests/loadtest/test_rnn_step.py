"""loadtest.rnn_step: one step both ways gives the same logits; the table has every batch size."""

from __future__ import annotations

import re

import torch

from loadtest.rnn_step import BATCHES, measure

from support.tiny_models import make_tiny_generator


def test_measure_times_every_batch_both_ways_and_finds_the_same_logits():
    generator = make_tiny_generator("lstm")
    with torch.inference_mode():
        lines = measure(generator, ["To be, or not", "ROMEO:\n"], repeats=2)
    step_rows = [line for line in lines if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in step_rows] == list(BATCHES)
    for row in step_rows:
        slow, fast, _, gap = (cell.strip() for cell in row.split("|")[2:6])
        assert float(slow) > 0 and float(fast) > 0
        assert float(gap) < 1e-5  # the cell functions compute what torch's LSTM does
    prompt_row = lines[-1].split("|")
    assert prompt_row[1].strip() == "2 prompts (10)"  # the median of 13 and 7 characters
    assert float(prompt_row[2]) > 0 and float(prompt_row[3]) > 0
    assert torch.backends.mkldnn.enabled  # switched back on
