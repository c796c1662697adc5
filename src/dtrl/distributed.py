"""Data-parallel training across the processes that torchrun starts.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in every process it
starts. With more than one process, training joins a process group (NCCL for
CUDA tensors, gloo for CPU tensors), wraps the model in
DistributedDataParallel, and lets rank 0 alone write logs, checkpoints and
evaluations. A plain single process (no torchrun) touches none of this, so its
results stay exactly what they were before distributed training existed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dtrl.errors import DtrlError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and rank within its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Under torchrun each process drives the GPU of its local rank."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to call in training: DDP (gradients averaged over ranks) or the model itself."""
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def share(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result to every rank.

        A :class:`DtrlError` raised on rank 0 is raised on every rank, so all
        processes stop with the same one-line message instead of waiting.
        """
        if not self.enabled:
            return fn()
        result: Any = None
        error: DtrlError | None = None
        if self.is_main:
            try:
                result = fn()
            except DtrlError as e:  # other ranks get a plain copy: subclasses need not pickle
                error, result = e, DtrlError(str(e))
        box = [result]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if isinstance(box[0], DtrlError):
            raise box[0]
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` in rank order, on rank 0; other ranks get an empty list."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out or []

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_env() -> Dist:
    """Read torchrun's variables; without them this is the single process of rank 0."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DtrlError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers: start distributed runs with torchrun"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise DtrlError(f"RANK={rank} does not fit WORLD_SIZE={world}: start distributed runs with torchrun")
    return Dist(rank, world, local)


@contextmanager
def process_group() -> Iterator[Dist]:
    """Join torchrun's process group for the duration of a run; a no-op for one process.

    A group that the caller already initialised is used as it is and left open.
    """
    info = from_env()
    if dist.is_initialized():
        yield Dist(dist.get_rank(), dist.get_world_size(), info.local_rank)
        return
    if not info.enabled:
        yield info
        return
    if torch.cuda.is_available():
        if info.local_rank >= torch.cuda.device_count():
            raise DtrlError(
                f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(info.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield info
    finally:
        dist.destroy_process_group()


def _derive_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([x % 2**64 for x in entropy]).generate_state(1, np.uint64)[0] >> 1)


def rank_seed(seed: int, rank: int) -> int:
    """The sampler and dropout seed of ``rank``.

    Rank 0 keeps ``seed`` itself, so it draws exactly what a single process
    draws; every other rank gets a distinct value derived from (seed, rank).
    """
    return seed if rank == 0 else _derive_seed(seed, rank)


def resume_seed(seed: int, rank: int, step: int) -> int:
    """A fresh seed for ``rank`` when a run resumes at ``step`` on a different number of processes."""
    return _derive_seed(seed, rank, step)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
