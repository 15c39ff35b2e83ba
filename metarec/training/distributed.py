"""Multi-process meta-training with PyTorch DDP semantics, launched by torchrun.

Every rank draws the same global task batch from the same seeded sampler and keeps its own
slice of it (``index[rank::world]``); after the backward pass the gradients are averaged with
``all_reduce``, so each optimizer step equals a single process's step on the whole batch (the
meta-loss is a mean over equally many tasks per rank). Validation is computed identically on
every rank, so early stopping agrees; only rank 0 writes checkpoints and artifacts.

    torchrun --nproc_per_node=4 -m metarec.pipeline.ddp --params params.yaml

NCCL on GPUs (each rank on cuda:LOCAL_RANK), gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the group."""

    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's slice of a global batch of task indices."""
        if len(index) % self.size:
            raise ValueError(f"train.tasks_per_batch ({len(index)}) must be a multiple of the "
                             f"number of processes ({self.size})")
        return index[self.rank::self.size]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (a missing one counts as zero)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.size

    def barrier(self) -> None:
        dist.barrier()


def init_from_env(backend: str | None = None) -> World | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...); None when
    this process was not started by a distributed launcher."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size())
