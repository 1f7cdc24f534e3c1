"""How the in-process measurements (`loadtest.rnn_step`, `loadtest.projected_lstm`) publish their
tables: a markdown page, printed, and written to `--out` when one is given."""

from __future__ import annotations

from pathlib import Path

import torch


def publish(title: str, command: str, setup: str, lines: list[str], out: Path | None) -> None:
    """`setup`: what the timings ran with, after the torch version ("1 torch thread(s), ...")."""
    text = "\n".join([f"# {title}", "", f"Written by `{command}` with torch {torch.__version__}, {setup}.",
                      "", *lines, ""])
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
