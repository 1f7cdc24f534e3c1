"""Lower-precision copies of a trained model, for CPU serving: bfloat16 or dynamic int8.

- bfloat16: every weight and activation in bfloat16 (8 bits of mantissa), which CPUs with
  AVX512-BF16 or AMX multiply at twice float32's rate or more, from half the memory traffic. Each
  value is rounded on its own, so an answer does not depend on what else is in its batch except
  through the kernels a batch size selects (a lone text vs a batch of them).
- int8: the weights of every LSTM, GRU and Linear layer stored as int8 with one scale per tensor;
  activations are quantized on the fly at each matrix product with one scale per batch, so no
  calibration data is needed, but an answer moves with its batchmates. Embeddings and the plain
  Elman `nn.RNN` (PyTorch has no dynamic int8 kernel for it) stay float32.

The artifact on disk is unchanged: the copy is made at load time, and its effect on accuracy,
BLEU, loss and batch independence is measured by `python -m loadtest.bench` on the validation
splits.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

QUANTIZED_LAYERS = {nn.LSTM, nn.GRU, nn.Linear}


def dynamic_int8(module: nn.Module) -> nn.Module:
    """An int8 copy of `module` in eval mode; `module` itself is left as it was."""
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; the eager API is what torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # inplace=False: quantize_dynamic converts its own deep copy
        quantized = torch.ao.quantization.quantize_dynamic(module, QUANTIZED_LAYERS, dtype=torch.qint8,
                                                           inplace=False)
    return quantized.eval()


def bfloat16(module: nn.Module) -> nn.Module:
    """A bfloat16 copy of `module` in eval mode; `module` itself is left as it was."""
    return copy.deepcopy(module).to(torch.bfloat16).eval()


COPIES: dict[str, Callable[[nn.Module], nn.Module]] = {"bfloat16": bfloat16, "int8": dynamic_int8}
PRECISIONS = ("float32", *COPIES)


def with_precision(module: nn.Module, precision: str) -> nn.Module:
    """`module` as loaded (float32), or its bfloat16 or dynamic int8 copy."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return module if precision == "float32" else COPIES[precision](module)
