"""ProjectedLSTM: SentimentRNN's inference for a batch of texts by a faster route to the same
numbers, with its recurrence compiled by TorchScript.

models/sentiment.py holds the model and the classifier that uses this path for batches of
PROJECTED_MIN_BATCH texts or more; `python -m loadtest.projected_lstm` measures both paths.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor, nn

from models.sentiment import EncodedText, SentimentRNN, bag_offsets, subword_ids
from models.vocab import PAD_ID, UNK_ID, Vocab

log = logging.getLogger(__name__)


# The most frequent words whose projected input the fast path keeps: 4,096 x 8 x hidden_size
# floats (23 MB at the shipped 176 units), covering 87% of the words of SST-2 dev.
PROJECTED_WORDS = 4096


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

    Compiled, the ~14 small ops of each step run from C++, faster than the Python loop with the
    same numbers (reports/bench/HISTORY.md), and the whole recurrence runs without the GIL.
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


