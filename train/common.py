"""Training helpers not covered by train.splits / train.metrics: seeding and torch.distributed placement."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Process placement under torchrun (world_size 1 when run as a plain process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return placement and this rank's device.

    ``device`` None means CUDA when available, else the CPU (gloo).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("distributed training: rank %d of %d, backend %s (local rank %d)", rank, world,
             torch.distributed.get_backend(), local)
    return DistInfo(rank, local, world), torch.device(f"cuda:{local}" if cuda else "cpu")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
