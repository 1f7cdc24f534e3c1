"""Dynamic int8 quantization of a trained model, for CPU serving.

The weights of every LSTM, GRU and Linear layer are stored as int8 with one scale per tensor;
activations are quantized on the fly at each matrix product, so no calibration data is needed.
Embeddings and the plain Elman `nn.RNN` (PyTorch has no dynamic int8 kernel for it) stay
float32. The artifact on disk is unchanged: quantization happens at load time, and its effect on
accuracy, BLEU and loss is measured by `python -m loadtest.bench` on the validation splits.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

PRECISIONS = ("float32", "int8")
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


def with_precision(module: nn.Module, precision: str) -> nn.Module:
    """`module` as loaded (float32), or its dynamic int8 copy."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return module if precision == "float32" else dynamic_int8(module)
