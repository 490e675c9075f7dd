"""Multi-GPU / multi-node training via ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m defectssft train PROJECT ...`` sets RANK/WORLD_SIZE/LOCAL_RANK;
``setup()`` reads them and joins the process group (NCCL on CUDA, gloo on CPU). Without those
variables everything runs in one process and the helpers below are no-ops. Only rank 0 writes
logs, checkpoints and the model version.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_kind: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun, else a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_kind != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        # Every rank must be done with the group before any rank tears it down: a rank that
        # closes its gloo connections while the other still uses them aborts the other
        # ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


def exit_process(rc: int) -> NoReturn:
    """End a torchrun worker with status ``rc`` once its work is saved.

    Skips the interpreter's teardown: with gloo on CPU (torch 2.14) a worker sometimes aborted
    there ("terminate called without an active exception") after every file was written, and
    torchrun then reported the whole run as failed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when running distributed, else itself."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def any_true(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (stop requests, time budget)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_tensor(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (keeps running SSL statistics identical on every rank)."""
    if not info.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world


def average_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Average float buffers (BatchNorm running stats) over ranks: DDP keeps them per rank,
    and the EMA teacher must be identical everywhere."""
    if not info.enabled:
        return
    for buf in module.buffers():
        if buf.dtype.is_floating_point:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world)


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank (e.g. the run folder name)."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
