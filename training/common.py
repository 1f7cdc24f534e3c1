"""What the three training scripts share: run configs from flags, devices, seeds, distributed
data parallel, checkpoints, early stopping and writing the finished artifact into the store.

Small functions, not a Trainer: each script keeps its own loop.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from models.artifact import CARD_FILE, CURVE_FILE, METRICS_FILE, parameter_count, record_checksums, write_json
from models.quantize import cpu_has_bfloat16

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    import random

    random.seed(seed)


# ---- distributed data parallel (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) ----

def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    log.info("distributed data parallel: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return dist.get_rank(), world


def wrap_ddp(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    if world == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def shutdown_distributed(world: int) -> None:
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


# ---- checkpoints and early stopping ----

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


# ---- the finished artifact ----

@functools.cache
def git_commit() -> str:
    """HEAD when first asked, which parse_config does as a run starts: an artifact names the
    commit its run started from, not whatever was checked out by the time it finished."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


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


def finish_artifact(name: str, task: str, cell: str, summary: str, save: Callable[[Path], None],
                    evaluate: Callable[[Path], tuple[dict[str, float], dict[str, float]]],
                    module: nn.Module, run_config: Any, progress: Progress, device: torch.device,
                    data_sha256: dict[str, str], argv: list[str] | None,
                    store: bool = True) -> tuple[Path, dict[str, Any]]:
    """Save (fp16), reload, evaluate exactly what ships, write metrics/card/curve, store it.

    `evaluate(folder)` loads the artifact from `folder` and returns (validation, test) metrics.
    Returns the artifact folder (in the store when `store`) and its metrics.
    """
    import sys

    import bentoml

    from training.store import save_to_store

    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    save(tmp)
    validation, test = evaluate(tmp)
    config = json.loads((tmp / "config.json").read_text())["model"]
    metrics = {
        "model": name, "task": task, "cell": cell, "validation": validation, "test": test,
        "data_sha256": data_sha256, "git_commit": git_commit(), "parameters": parameter_count(module),
        "training_seconds": round(progress.seconds, 1), "hardware": hardware(device),
        "best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
        "run_config": dataclasses.asdict(run_config),
        "command": " ".join(["python -m", f"training.train_{task}",
                             *(sys.argv[1:] if argv is None else argv)]),
        "torch": torch.__version__,
    }
    write_json(tmp / METRICS_FILE, metrics)
    (tmp / CARD_FILE).write_text(model_card(name, summary, config, metrics), encoding="utf-8")
    if progress.history:
        plot_curve(progress.history, tmp / CURVE_FILE, name)
    record_checksums(tmp, [p.name for p in (tmp / METRICS_FILE, tmp / CARD_FILE, tmp / CURVE_FILE)
                           if p.is_file()])
    if not store:
        return tmp, metrics

    def copy(path: Path) -> None:
        for item in tmp.iterdir():
            (path / item.name).write_bytes(item.read_bytes())

    model = save_to_store(name, copy, labels={"task": task, "cell": cell},
                          metadata={"task": task, "cell": cell, "parameters": metrics["parameters"],
                                    **{f"test_{k}": v for k, v in test.items()}})
    return Path(bentoml.models.get(model.tag).path), metrics


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def epoch_batches(lengths: list[int], batch_size: int, seed: int, rank: int, world: int,
                  start_epoch: int) -> Iterator[list[list[int]]]:
    """Each epoch's length_batches from one seeded generator. A resumed run replays the draws of
    its finished epochs, so it sees the batches an uninterrupted run would have."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(start_epoch):
        length_batches(lengths, batch_size, generator, rank, world)
    while True:
        yield length_batches(lengths, batch_size, generator, rank, world)


def length_batches(lengths: list[int], batch_size: int, generator: torch.Generator | None,
                   rank: int = 0, world: int = 1, pool: int = 50) -> list[list[int]]:
    """Index batches of similar lengths, so little compute goes to padding.

    Shuffle (when a generator is given), sort within pools of `pool` batches by length, cut
    batches, shuffle their order, then give each rank every world-th batch (DDP sharding).
    """
    count = len(lengths)
    order = torch.randperm(count, generator=generator).tolist() if generator else list(range(count))
    batches = []
    for start in range(0, count, batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if world > 1:  # equal counts per rank, or DDP's all-reduce would wait forever
        batches = batches[: len(batches) // world * world][rank::world]
    return batches
