"""The steps of a training loop that the three scripts share: an epoch of optimizer steps with a
progress bar, Polyak weight averaging, and a timer. Small functions, not a Trainer: each script
keeps its own loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from training.checkpoints import Progress


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module,
                   clip: float) -> None:
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()


def weight_average(module: nn.Module, decay: float
                   ) -> tuple[AveragedModel | None, nn.Module, nn.Module]:
    """Polyak averaging: an exponential moving average of `module`'s weights (`decay` per step,
    0 = off). Returns (averaged, served, saved): the average to update after every optimizer step
    (None when off), the module that validation scores and the artifact ships (the average when
    on), and the one checkpoints hold (both, so a resumed run goes on averaging where it stopped).
    """
    if not decay:
        return None, module, module
    averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay))
    return averaged, averaged.module, nn.ModuleDict({"model": module, "ema": averaged})


def train_epoch(batches: Sequence[Any], batch_loss: Callable[[Any], torch.Tensor],
                optimizer: torch.optim.Optimizer, module: nn.Module, clip: float,
                progress: Progress, rank: int, averaged: AveragedModel | None = None,
                schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                ) -> float:
    """One optimizer step per item of `batches` (what `batch_loss(batch)` needs to run the
    DDP-wrapped model on one batch), with a progress bar; `averaged` (see weight_average) and
    `schedule` follow every step, and each loss is computed inside `precision()`
    (CommonRun.step_precision). Returns the mean training loss."""
    module.train()
    total = 0.0
    bar = tqdm(batches, desc=f"epoch {progress.epoch + 1}", disable=rank != 0, unit="batch")
    for batch in bar:
        with precision():
            loss = batch_loss(batch).float()
        optimizer_step(loss, optimizer, module, clip)
        if schedule:
            schedule.step()
        if averaged:
            averaged.update_parameters(module)
        total += loss.item()
        progress.step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return total / len(batches)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
