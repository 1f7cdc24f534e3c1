"""Lower-precision copies of a trained model, for CPU serving: float16 weights, bfloat16 or int8.

- float16: the weights of every LSTM, GRU and Linear layer stored as float16 and widened back to
  float32 inside the matrix products (FBGEMM's fp16 kernels); activations and arithmetic stay
  float32. Every shipped artifact already stores its weights in float16, so for them nothing is
  rounded: only the order of the sums changes. An answer does not depend on its batchmates. At
  small batches, where a step is bound by reading its weights, half the bytes make it faster.
- bfloat16: every weight and activation in bfloat16 (8 bits of mantissa), which CPUs with
  AVX512-BF16 or AMX multiply at twice float32's rate or more, from half the memory traffic. Each
  value is rounded on its own, so an answer does not depend on what else is in its batch except
  through the kernels a batch size selects (a lone text vs a batch of them).
- int8: the weights of every LSTM, GRU and Linear layer stored as int8 with one scale per tensor;
  activations are quantized on the fly at each matrix product with one scale per batch, so no
  calibration data is needed, but an answer moves with its batchmates.

In the float16 and int8 copies, embeddings and the plain Elman `nn.RNN` (PyTorch has no dynamic
kernel for it) stay float32.

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

from models.names import PRECISIONS

QUANTIZED_LAYERS = {nn.LSTM, nn.GRU, nn.Linear}


def dynamic_int8(module: nn.Module) -> nn.Module:
    """An int8 copy of `module` in eval mode; `module` itself is left as it was."""
    return _quantize_dynamic(module, torch.qint8)


def _quantize_dynamic(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; the eager API is what torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # inplace=False: quantize_dynamic converts its own deep copy
        quantized = torch.ao.quantization.quantize_dynamic(module, QUANTIZED_LAYERS, dtype=dtype,
                                                           inplace=False)
    return quantized.eval()


def dynamic_float16(module: nn.Module) -> nn.Module:
    """A copy of `module` in eval mode with float16 LSTM/GRU/Linear weights and float32
    arithmetic; `module` itself is left as it was."""
    return _quantize_dynamic(module, torch.float16)


def bfloat16(module: nn.Module) -> nn.Module:
    """A bfloat16 copy of `module` in eval mode; `module` itself is left as it was."""
    return copy.deepcopy(module).to(torch.bfloat16).eval()


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it is
    emulated, slower than float32, and has no bfloat16 LSTM to train with."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


COPIES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "float16": dynamic_float16, "bfloat16": bfloat16, "int8": dynamic_int8}


def with_precision(module: nn.Module, precision: str) -> nn.Module:
    """`module` as loaded (float32), or its float16-weight, bfloat16 or dynamic int8 copy."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return module if precision == "float32" else COPIES[precision](module)
