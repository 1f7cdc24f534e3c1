"""models.integrity's byte-level check of float weights against torch's own isfinite."""

from __future__ import annotations

import pytest
import torch

from models import integrity
from models.integrity import EXPONENT_MASKS, ITEM_SIZES, has_non_finite

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_16_bit_pattern_is_judged_as_torch_judges_it(dtype):
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    finite = torch.isfinite(patterns.view(DTYPES[dtype]).float()).tolist()
    data = patterns.numpy().tobytes()
    judged = [has_non_finite(data, 2 * i, 2 * i + 2, 2, EXPONENT_MASKS[dtype]) for i in range(2**16)]
    assert judged == [not f for f in finite]
    assert sum(judged) == 2 * 2 ** (7 if dtype == "BF16" else 10)  # +-inf and the NaNs


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("chunk_bytes", [integrity.CHUNK_BYTES, 30])  # 30: many chunks, uneven
def test_one_non_finite_value_among_extremes_is_found_where_it_lies(dtype, bad, chunk_bytes, monkeypatch):
    monkeypatch.setattr(integrity, "CHUNK_BYTES", chunk_bytes)
    info = torch.finfo(DTYPES[dtype])
    values = torch.tensor([info.max, info.min, info.tiny, -info.tiny, 0.0, -0.0, 1.0] * 50,
                          dtype=DTYPES[dtype])
    width = ITEM_SIZES[dtype]
    prefix = b"abc"  # the tensor starts at an odd offset, as in a safetensors file
    data = prefix + values.view(torch.uint8).numpy().tobytes()
    assert not has_non_finite(data, len(prefix), len(data), width, EXPONENT_MASKS[dtype])
    values[123] = bad
    data = prefix + values.view(torch.uint8).numpy().tobytes()
    assert has_non_finite(data, len(prefix), len(data), width, EXPONENT_MASKS[dtype])
    start = len(prefix) + 124 * width  # the same bytes after it: none there
    assert not has_non_finite(data, start, len(data), width, EXPONENT_MASKS[dtype])
