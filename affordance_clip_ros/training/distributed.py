"""DistributedDataParallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model.grounder import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only this process logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def syncs_batchnorm(self) -> bool:
        """Whether BatchNorm statistics are synchronised across processes (SyncBatchNorm, CUDA only)."""
        return self.enabled and self.device.type == "cuda"


def setup(device: str) -> DistContext:
    """Join the process group when torchrun started us (WORLD_SIZE > 1); else a one-process context.

    Under torchrun each process uses cuda:LOCAL_RANK (NCCL) when CUDA is available or
    ``device`` is cuda, and the CPU (gloo) when ``device`` is cpu.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        single = resolve_device(device)
        if single.type == "cuda" and single.index is not None:
            torch.cuda.set_device(single)  # pinned-memory thread and cuDNN on the chosen GPU, not GPU 0
        return DistContext(0, 1, 0, single)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank,
                       torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all processes (identity without DDP)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()
