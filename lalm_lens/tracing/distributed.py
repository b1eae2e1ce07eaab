"""Runs under `torchrun`: the standard environment, one device per rank, a barrier — no scheduler of our own.

`torchrun --nproc-per-node N lalm-lens trace-dataset ...` (or `srun` + `torchrun` on
several nodes) sets `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; each rank takes every
N-th item, writes its own records file, and rank 0 merges them when all are done.
Without those variables everything runs in one process, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def share(self, items: list) -> list:
        """This rank's items: every `world`-th, starting at `rank` (the same split whatever was done before)."""
        return [item for i, item in enumerate(items) if i % self.world == self.rank]


def from_env() -> Dist:
    """The torchrun environment (one process when it is not set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def default_device(dist: Dist) -> str:
    """The device a rank uses by default: its own GPU (`cuda:LOCAL_RANK`) when there are GPUs."""
    if torch.cuda.is_available():
        return f"cuda:{dist.local_rank}" if dist.active else "cuda"
    return "cpu"


def setup(device) -> Dist:
    """Join the process group when started by torchrun (`nccl` on GPUs, `gloo` on the CPU)."""
    dist = from_env()
    if dist.active:
        import torch.distributed as td

        if not td.is_initialized():
            cuda = torch.device(device).type == "cuda"
            if cuda:
                torch.cuda.set_device(dist.local_rank)
            td.init_process_group("nccl" if cuda else "gloo")
    return dist
