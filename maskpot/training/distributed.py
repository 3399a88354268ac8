"""Data-parallel helpers (torch.distributed, gloo on CPU / nccl on CUDA).

A run is distributed when ``WORLD_SIZE`` > 1 in the environment (``torchrun`` sets it, with
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``). Each rank takes a disjoint,
equal shard of every global batch; gradients are averaged by DistributedDataParallel; metrics
are summed over ranks with :func:`all_reduce_sum`; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group described by the environment, if any (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, initialized_here=here)


def shard(indices: Sequence[int], rank: int, world_size: int) -> np.ndarray:
    """The ``rank``-th of ``world_size`` contiguous, equal-as-possible pieces of ``indices``."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.array_split(idx, world_size)[rank]


def all_reduce_sum(values: Dict[str, float], ctx: DistContext) -> Dict[str, float]:
    """Sum a dict of floats over ranks (float64; identity when not distributed)."""
    if not ctx.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Send a picklable object from ``src`` to every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _local_rank_main(rank: int, world_size: int, port: int, cfg: dict) -> None:
    import faulthandler

    # a rank that dies in native code (SIGABRT/SIGSEGV, e.g. in gloo) prints every thread's
    # Python stack to stderr, so a rare crash says where it happened
    faulthandler.enable(all_threads=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from maskpot.training.cli import run_training

    run_training(cfg)


def run_local(cfg: dict, nprocs: int) -> None:
    """Run the training ``cfg`` data-parallel on ``nprocs`` local processes (gloo, one torch
    thread each), like ``torchrun --nproc_per_node nprocs`` without a second command."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_local_rank_main, args=(int(nprocs), port, cfg), nprocs=int(nprocs), join=True,
                       start_method="spawn")
