"""The same task, the same budget, three cells: what gated memory buys.

    python -m training.experiments.compare_cells --tasks sentiment generator translator

Each run uses the task's script with `--no-store` and a reduced, equal budget per cell, selects
on validation as usual, and reports test metrics, parameters and training time. Writes
reports/cells.json and reports/cells.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from models.rnn import CELLS
from training import REPO_ROOT, train_generator, train_sentiment, train_translator

log = logging.getLogger(__name__)

# Budgets small enough for a 2-core CPU: the point is the comparison, not the headline number.
BUDGETS = {
    "sentiment": (train_sentiment.main, ["--epochs", "2", "--hidden-size", "128", "--ema", "0",
                                         "--weight-drop", "0", "--subword-buckets", "0"], "accuracy"),
    "generator": (train_generator.main, ["--hidden-size", "256", "--steps", "400",
                                         "--eval-every", "200", "--ema", "0", "--seq-len", "128",
                                         "--dropout", "0.2", "--weight-drop", "0"], "val_loss"),
    "translator": (train_translator.main, ["--pair", "de-en", "--epochs", "1", "--hidden-size", "128",
                                           "--embedding-dim", "128", "--attention-size", "128",
                                           "--source-vocab", "4000", "--target-vocab", "4000",
                                           "--test-beam", "1"], "bleu"),
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(BUDGETS), default=sorted(BUDGETS),
                        help="which tasks to compare")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports",
                        help="folder for cells.json and cells.md")
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        run, flags, metric = BUDGETS[task]
        for cell in CELLS:
            checkpoints = f"checkpoints/cells/{task}-{cell}"
            metrics = run([*flags, "--cell", cell, "--no-store", "--checkpoint-dir", checkpoints])
            rows.append({"task": task, "cell": cell, "metric": metric,
                         "validation": metrics["validation"][metric], "test": metrics["test"][metric],
                         "parameters": metrics["parameters"],
                         "training_seconds": metrics["training_seconds"],
                         "hardware": metrics["hardware"], "command": metrics["command"]})
            log.info("%s", rows[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cells.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Cells compared: rnn vs gru vs lstm", "",
             "Same task, same reduced budget per cell (see `training/experiments/compare_cells.py`). "
             "Generator: val_loss in nats/char (lower is better), on the validation split, "
             "which is its report split.", "",
             "| task | cell | metric | validation | test | parameters | training s | hardware |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['cell']} | {r['metric']} | {r['validation']} | {r['test']} | "
              f"{r['parameters']:,} | {r['training_seconds']:.0f} | {r['hardware']} |" for r in rows]
    lines += ["", "Reproduce: `python -m training.experiments.compare_cells`", ""]
    (args.out / "cells.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
