"""What the in-process measurements (`loadtest.rnn_step`, `loadtest.projected_lstm`,
`loadtest.sessions`) share: their common flags, the median time of a call, and how they publish
their tables: a markdown page, printed, and written to `--out` when one is given."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models" / "pretrained"


def measurement_parser(description: str, artifact: str) -> argparse.ArgumentParser:
    """--models (the folder holding `artifact`), --threads and --out; a measurement adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", type=Path, default=SHIPPED_MODELS,
                        help=f"folder holding the {artifact} artifact (the shipped one by default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the service's default: 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    return parser


def command_line(module: str, argv: list[str] | None) -> str:
    """How the measurement was run, for its page: `python -m module` and its arguments."""
    return " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])


def milliseconds(call: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `call` over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def publish(title: str, command: str, setup: str, lines: list[str], out: Path | None) -> None:
    """`setup`: what the timings ran with, after the torch version ("1 torch thread(s), ...")."""
    text = "\n".join([f"# {title}", "", f"Written by `{command}` with torch {torch.__version__}, {setup}.",
                      "", *lines, ""])
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
