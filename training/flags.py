"""A training run's config from the command line: one dataclass field per flag, its help text,
choices and bounds in the field, and presets of defaults (profiles) that any flag overrides."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.quantize import cpu_has_bfloat16
from training.artifact_writer import git_commit


def help_field(default: Any, help: str, choices: tuple | None = None,
               minimum: float | None = None, maximum: float | None = None) -> Any:
    """A dataclass field whose help text, choices and bounds (inclusive) become the argparse
    flag's."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                        "minimum": minimum, "maximum": maximum})


def weight_drop_field(default: float) -> Any:
    """The --weight-drop flag of the scripts whose models run through models.rnn.recurrence."""
    return help_field(default, "DropConnect on the recurrent weights W_hh while training "
                      "(AWD-LSTM's weight drop)", minimum=0.0, maximum=0.99)


def parse_config(cls: type, argv: list[str] | None, profiles: dict[str, dict[str, Any]],
                 description: str) -> Any:
    """Build run config `cls` from a --profile's defaults overridden by one flag per field."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", choices=sorted(profiles), default="full",
                        help="preset of defaults (%(choices)s); any flag below overrides it")
    fields = dataclasses.fields(cls)
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
        # argparse %-formats help text: a literal "%" in a field's help must not reach it raw.
        text = f"{f.metadata['help']} (default {f.default!r}, or the profile's)".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text,
                                choices=f.metadata["choices"])
    args = parser.parse_args(argv)
    git_commit()  # the commit this run starts from (cached for its artifact's metrics)
    values = {**profiles[args.profile]}
    values.update({k: v for k, v in vars(args).items() if k != "profile" and v is not None})
    config = cls(**values)
    for f in fields:
        value, flag = getattr(config, f.name), f"--{f.name.replace('_', '-')}"
        minimum, maximum = f.metadata["minimum"], f.metadata["maximum"]
        if minimum is not None and value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            parser.error(f"{flag} must be <= {maximum}, got {value}")
    return config


AUTOCAST_DTYPES = ("off", "bfloat16")  # float16 would need a gradient scaler as well


@dataclasses.dataclass
class CommonRun:
    """Flags every training script has; each task's RunConfig adds its own after these."""

    seed: int = help_field(1, "random seed")
    device: str = help_field("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    checkpoint_dir: str = help_field("", "where last.pt/best.pt go (default checkpoints/<model>)")
    resume: bool = help_field(False, "continue from checkpoint_dir/last.pt (a fresh start if none)")
    store: bool = help_field(True, "save the artifact into the BentoML store")
    autocast: str = help_field("off", "run each training step's forward pass and loss under "
                               "torch.autocast in this dtype (faster where the hardware has bfloat16: "
                               "AVX512-BF16 or AMX CPUs, recent GPUs); the weights, the optimizer "
                               "and validation stay float32", choices=AUTOCAST_DTYPES)

    def checkpoints(self, name: str) -> Path:
        return Path(self.checkpoint_dir or f"checkpoints/{name}")

    def step_precision(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """What train_epoch enters around each step's loss: autocast to --autocast, or nothing."""
        if self.autocast == "off":
            return contextlib.nullcontext
        if device.type == "cpu" and self.autocast == "bfloat16" and not cpu_has_bfloat16():
            # oneDNN has no bfloat16 LSTM there: the first step would fail deep inside torch
            raise SystemExit("--autocast bfloat16: this CPU has no bfloat16 support in oneDNN "
                             f"(torch reports {torch.backends.cpu.get_cpu_capability()}; it needs "
                             "AVX512-BF16 or AMX): train with --autocast off")
        return lambda: torch.autocast(device.type, dtype=getattr(torch, self.autocast))
