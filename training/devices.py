"""Where a training run computes: its device, its seeds, and the process group of distributed
data parallel (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without it a run is one process)."""

from __future__ import annotations

import logging
import os
import platform
import random

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def hardware(device: torch.device) -> str:
    """The device in words, for the artifact's metrics and model card."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


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
