"""The artifact format: one folder that rebuilds a trained model on its own.

    config.json          {"format_version", "task", "model": <architecture config>, ...}
    weights.safetensors  the state_dict (no pickle), fp16 or fp32 storage
    <tokenizer files>    vocab.json, or sentencepiece models
    metrics.json         written by training: test metrics, data sha256, commit, time, hardware
    README.md            the model card, training_curve.png beside it

Loading needs nothing but this folder: no training code, no data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
CURVE_FILE = "training_curve.png"


class ArtifactError(ValueError):
    """An artifact folder is incomplete or its parts disagree."""


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing artifact file: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def save_module(directory: str | Path, task: str, config: Any, module: nn.Module,
                dtype: torch.dtype = torch.float32) -> None:
    """Write config.json and weights.safetensors for `module`, built from dataclass `config`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, "task": task,
                                         "model": dataclasses.asdict(config)})
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
               for k, v in module.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"task": task})


def read_config(directory: str | Path, task: str) -> dict[str, Any]:
    """The architecture config of an artifact of `task`, checked for format and task."""
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
    state = load_file(str(path))
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
