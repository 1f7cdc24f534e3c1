"""The artifact format: one folder that rebuilds a trained model on its own.

    config.json          {"format_version", "task", "model": <architecture config>, ...}
    weights.safetensors  the state_dict (no pickle), fp16 or fp32 storage; a large table may be
                         stored as int8 rows, each with its own scale (see save_module)
    <tokenizer files>    vocab.json, or sentencepiece models
    metrics.json         written by training: test metrics, data sha256, commit, time, hardware
    README.md            the model card, training_curve.png beside it
    checksums.json       the sha256 and size of every file above (models.integrity)

Loading needs nothing but this folder: no training code, no data. It verifies the checksums and
the weights first, so a damaged or altered artifact is refused rather than served.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.integrity import CHECKSUMS_FILE as CHECKSUMS_FILE
from models.integrity import WEIGHTS_FILE as WEIGHTS_FILE
from models.integrity import ArtifactError as ArtifactError
from models.integrity import record_checksums as record_checksums
from models.integrity import verify_artifact

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
CURVE_FILE = "training_curve.png"
# a tensor stored as int8 rows has its per-row scales beside it under its name plus this suffix
# (a state_dict key never holds a colon)
ROW_SCALE_SUFFIX = ":row_scale"


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing artifact file: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def save_module(directory: str | Path, task: str, config: Any, module: nn.Module,
                dtype: torch.dtype = torch.float32, int8_rows: tuple[str, ...] = ()) -> None:
    """Write config.json and weights.safetensors for `module`, built from dataclass `config`.

    Floats are stored as `dtype`; the 2-D tensors named in `int8_rows` (embedding tables, which
    are most of a small model's bytes) as int8 rows with a `dtype` scale each (quantize_rows):
    half the bytes of float16. Refuses weights with NaN or infinity (fp16 storage overflows past
    65504): they would load and answer NaN. The caller writes its tokenizer files, then
    `record_checksums(directory)`.
    """
    directory = Path(directory)
    state = module.state_dict()
    unknown = [name for name in int8_rows if name not in state or state[name].dim() != 2]
    if unknown:
        raise ValueError(f"int8_rows {unknown}: not 2-D tensors of the module")
    tensors = {}
    for k, v in state.items():
        if k in int8_rows:
            tensors[k], tensors[k + ROW_SCALE_SUFFIX] = quantize_rows(v, dtype)
        else:
            tensors[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ArtifactError(f"{directory}: refusing to write weights: tensor {name!r} holds "
                                f"{bad} NaN or infinite values (as {dtype})")
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, "task": task,
                                         "model": dataclasses.asdict(config)})
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"task": task})


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, scales (R, 1) as `scale_dtype`) with rows x scales ~ `weight` (R, D): each
    row's scale is its largest magnitude / 127 (rounded to `scale_dtype` first, so the rows are
    quantized with the scale that is stored), every value within half a step of it. An all-zero
    row (a padding embedding) has scale 0 and stays exactly 0."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127.0).to(scale_dtype)
    step = scale.float()
    rows = torch.where(step > 0, weight / step.where(step > 0, torch.ones_like(step)),
                       torch.zeros_like(weight))
    return rows.round_().clamp_(-127, 127).to(torch.int8).contiguous(), scale.contiguous()


def dequantize_rows(state: dict[str, torch.Tensor], where: str | Path) -> dict[str, torch.Tensor]:
    """`state` with each int8-row tensor and its scales (save_module) back as one float tensor."""
    state = dict(state)
    for key in [k for k in state if k.endswith(ROW_SCALE_SUFFIX)]:
        name, scale = key[:-len(ROW_SCALE_SUFFIX)], state.pop(key)
        rows = state.get(name)
        if rows is None or rows.dtype != torch.int8 or rows.dim() != 2 or scale.shape != (len(rows), 1):
            raise ArtifactError(f"{where}: {key!r} {tuple(scale.shape)} does not scale the rows of an "
                                f"int8 tensor {name!r}")
        state[name] = rows.float() * scale.float()
    return state


def verify(directory: str | Path) -> None:
    """Refuse a damaged artifact (models.integrity.verify_artifact); warn when it has no checksums."""
    if not verify_artifact(directory):
        log.warning("%s: no %s (written before checksums were recorded): its files cannot be "
                    "verified, only its weights were checked", directory, CHECKSUMS_FILE)


def read_config(directory: str | Path, task: str) -> dict[str, Any]:
    """The architecture config of an artifact of `task`, checked for format and task.

    Loading starts here, so the whole artifact is verified here first.
    """
    verify(directory)
    config = read_json(Path(directory) / CONFIG_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{directory}: format_version {config.get('format_version')!r}, "
                            f"this code reads {FORMAT_VERSION}")
    if config.get("task") != task:
        raise ArtifactError(f"{directory}: artifact is for task {config.get('task')!r}, not {task!r}")
    return config["model"]


def load_weights(directory: str | Path, module: nn.Module) -> nn.Module:
    """Load weights into `module` (strict), cast to the module's dtype, in eval mode."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"missing artifact file: {path}")
    try:
        state = load_file(str(path))
    except SafetensorError as err:  # verify() reads the layout first: this is a last resort
        raise ArtifactError(f"{path}: not a readable safetensors file: {err}") from err
    state = dequantize_rows(state, path)
    reference = module.state_dict()
    try:
        module.load_state_dict({k: v.to(reference[k].dtype) if k in reference else v
                                for k, v in state.items()})
    except RuntimeError as err:  # shape or key mismatch: config and weights disagree
        raise ArtifactError(f"{directory}: weights do not fit config.json: {err}") from err
    return module.eval()


def check_vocab_size(name: str, vocab_size: int, rows: int) -> None:
    if vocab_size != rows:
        raise ArtifactError(f"{name}: tokenizer has {vocab_size} entries, embedding has {rows} rows")


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
