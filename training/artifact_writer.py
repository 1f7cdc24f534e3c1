"""Writing a finished run's artifact: saved in fp16, reloaded and scored as it ships, with its
metrics, model card and training curve, its checksums, and (unless --no-store) a copy in the
BentoML store."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from models.artifact import CARD_FILE, CURVE_FILE, METRICS_FILE, parameter_count, record_checksums, write_json
from training import REPO_ROOT
from training.devices import hardware

if TYPE_CHECKING:
    from training.checkpoints import Progress
    from training.flags import CommonRun


class Pipeline(Protocol):
    """A task's model with what it needs around it (CharGenerator, SentimentClassifier,
    Translator): its module, and a save into an artifact folder."""

    module: nn.Module

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None: ...


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """What a training script ships: its names and card text, and how to save and score it."""

    name: str  # the store name, e.g. sentiment-rnn
    task: str  # sentiment, generator or translator: the training.train_<task> that made it
    cell: str  # the recurrent cell, a store label
    summary: str  # the model card's opening paragraph
    data_sha256: dict[str, str]  # each data file the run read, by name
    model: Pipeline  # what ships: saved in float16
    # loads the artifact from a folder and scores it: (validation, test) metrics
    evaluate: Callable[[Path], tuple[dict[str, float], dict[str, float]]]


@functools.cache
def git_commit() -> str:
    """HEAD when first asked, which parse_config does as a run starts: an artifact names the
    commit its run started from, not whatever was checked out by the time it finished."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = [k for k in history[0] if k != "epoch"] if history else []
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * max(len(keys), 1), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def model_card(name: str, summary: str, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [f"# {name}", "", summary, "", "## Test metrics", ""]
    lines += [f"- {k}: {v}" for k, v in metrics["test"].items()]
    lines += ["", "## Validation (model selection)", ""]
    lines += [f"- {k}: {v}" for k, v in metrics["validation"].items()]
    lines += ["", "## Architecture", "", "```json", json.dumps(config, indent=2), "```", "",
              "## Training", "",
              f"- data: {', '.join(f'{k} (sha256 {v[:12]}...)' for k, v in metrics['data_sha256'].items())}",
              f"- parameters: {metrics['parameters']:,}",
              f"- training time: {metrics['training_seconds']:.0f} s on {metrics['hardware']}",
              f"- best epoch: {metrics['best_epoch']}",
              f"- command: `{metrics['command']}`",
              f"- commit: {metrics['git_commit']}",
              "", "Reproduce the test numbers with `make evaluate`.", ""]
    return "\n".join(lines)


def run_metrics(spec: ArtifactSpec, validation: dict[str, float], test: dict[str, float],
                run: CommonRun, progress: Progress, device: torch.device,
                argv: list[str] | None) -> dict[str, Any]:
    """metrics.json: the scores of the saved artifact and how the run that made it went."""
    return {
        "model": spec.name, "task": spec.task, "cell": spec.cell, "validation": validation,
        "test": test, "data_sha256": spec.data_sha256, "git_commit": git_commit(),
        "parameters": parameter_count(spec.model.module),
        "training_seconds": round(progress.seconds, 1), "hardware": hardware(device),
        "best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
        "run_config": dataclasses.asdict(run),
        "command": " ".join(["python -m", f"training.train_{spec.task}",
                             *(sys.argv[1:] if argv is None else argv)]),
        "torch": torch.__version__,
    }


def write_card_files(folder: Path, spec: ArtifactSpec, metrics: dict[str, Any],
                     history: list[dict[str, float]]) -> None:
    """metrics.json, the model card and the training curve beside the saved model, checksummed
    with it."""
    config = json.loads((folder / "config.json").read_text())["model"]
    write_json(folder / METRICS_FILE, metrics)
    (folder / CARD_FILE).write_text(model_card(spec.name, spec.summary, config, metrics),
                                    encoding="utf-8")
    if history:
        plot_curve(history, folder / CURVE_FILE, spec.name)
    record_checksums(folder, [p.name for p in (folder / METRICS_FILE, folder / CARD_FILE,
                                               folder / CURVE_FILE) if p.is_file()])


def copy_to_store(folder: Path, spec: ArtifactSpec, metrics: dict[str, Any]) -> Path:
    """The finished folder as a model in the BentoML store; returns its path there."""
    import bentoml

    from training.store import save_to_store

    def copy(path: Path) -> None:
        for item in folder.iterdir():
            (path / item.name).write_bytes(item.read_bytes())

    model = save_to_store(spec.name, copy, labels={"task": spec.task, "cell": spec.cell},
                          metadata={"task": spec.task, "cell": spec.cell,
                                    "parameters": metrics["parameters"],
                                    **{f"test_{k}": v for k, v in metrics["test"].items()}})
    return Path(bentoml.models.get(model.tag).path)


def finish_artifact(spec: ArtifactSpec, run: CommonRun, progress: Progress, device: torch.device,
                    argv: list[str] | None) -> tuple[Path, dict[str, Any]]:
    """Save (fp16), reload, evaluate exactly what ships, write metrics/card/curve, store it (--store).

    Returns the artifact folder (in the store when `run.store`) and its metrics.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.name}-"))
    spec.model.save(folder, dtype=torch.float16)
    validation, test = spec.evaluate(folder)
    metrics = run_metrics(spec, validation, test, run, progress, device, argv)
    write_card_files(folder, spec, metrics, progress.history)
    if not run.store:
        return folder, metrics
    return copy_to_store(folder, spec, metrics), metrics
