"""The process's place in a distributed run, read from the environment that torchrun or
submitit's ``TorchDistributedEnvironment().export()`` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

Where that environment is set, the process joins a process group and the model is wrapped in DDP at
every world size, one included, as the reference's ``init_distributed_mode`` does: a one-GPU job
runs the same code path as a 64-GPU one. A plain ``python`` process (no MASTER_ADDR) stays single.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # in a process group: the model is wrapped in DDP

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the process group the environment describes (NCCL on GPUs, gloo on CPUs)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    distributed = world_size > 1 or ("WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return DistEnv(rank, world_size, local_rank, device, distributed)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
