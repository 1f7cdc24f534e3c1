"""Checkpoints and early stopping: a run's progress (epochs, best metric, patience used, history)
is saved beside its weights after every epoch, so `--resume` goes on where it stopped, and the
best epoch's weights are what the run ships."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import nn

from training.devices import shutdown_distributed
from training.flags import CommonRun

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Progress:
    """Everything a resumed run needs besides the weights: written beside them."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def improved(self, metric: float, higher_is_better: bool) -> bool:
        """Record an epoch's validation metric; True when it is the best so far."""
        better = self.best_metric is None or (
            metric > self.best_metric if higher_is_better else metric < self.best_metric)
        if better:
            self.best_metric, self.best_epoch, self.bad_epochs = metric, self.epoch, 0
        else:
            self.bad_epochs += 1
        return better


def save_checkpoint(directory: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: Progress, best: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
             "progress": json.dumps(dataclasses.asdict(progress))}
    tmp = directory / "last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / "last.pt")
    if best:
        torch.save(module.state_dict(), directory / "best.pt")


def load_checkpoint(directory: Path, module: nn.Module,
                    optimizer: torch.optim.Optimizer) -> Progress | None:
    path = directory / "last.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress(**json.loads(state["progress"]))
    log.info("resumed from %s at epoch %d step %d", path, progress.epoch, progress.step)
    return progress


def resume_or_start(run: CommonRun, directory: Path, module: nn.Module,
                    optimizer: torch.optim.Optimizer) -> Progress:
    return (load_checkpoint(directory, module, optimizer) if run.resume else None) or Progress()


def end_epoch(progress: Progress, record: dict[str, float], metric: float, higher_is_better: bool,
              seconds: float, directory: Path, module: nn.Module,
              optimizer: torch.optim.Optimizer, rank: int) -> bool:
    """Book an epoch (or an evaluation interval): history, best metric, checkpoint. True if best."""
    progress.epoch += 1
    progress.seconds += seconds
    progress.history.append({"epoch": progress.epoch, **record})
    best = progress.improved(metric, higher_is_better)
    if rank == 0:
        save_checkpoint(directory, module, optimizer, progress, best)
    return best


def load_best(directory: Path, module: nn.Module) -> None:
    module.load_state_dict(torch.load(directory / "best.pt", map_location="cpu", weights_only=True))


def end_training(world: int, rank: int, directory: Path, module: nn.Module) -> bool:
    """Leave the process group; on rank 0 load the best weights onto the CPU for the artifact.
    True on the rank that writes the artifact."""
    shutdown_distributed(world)
    if rank != 0:
        return False
    load_best(directory, module)
    module.cpu().eval()
    return True
