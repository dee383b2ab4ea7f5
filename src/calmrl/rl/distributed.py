"""Data parallelism on ``torch.distributed``: the process group, who owns which rows, and the
reductions that make every number independent of the world size.

Launched by ``torchrun --nproc_per_node=N -m calmrl train ...`` (``WORLD_SIZE`` set); without
it everything here is a no-op on one process. Each step's global prompt batch is the same for
any N; rank r owns the groups (prompts) whose index in the batch is r mod N, so advantages,
DAPO's filter and TIS stay local, while token counts, gradients, norms and metrics are
reduced over ranks. Rows are sampled from per-row random streams, so a row's tokens do not
depend on the rank that drew it (``calmrl.sampling.random``).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# A rank that dies or raises must not leave the others waiting forever.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def owns(self, index: int) -> bool:
        """Whether this rank owns group (prompt) ``index`` of a step's batch."""
        return index % self.size == self.rank

    def share(self, items: Sequence[T]) -> list[T]:
        return [item for i, item in enumerate(items) if self.owns(i)]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place on a copy; float64 so the order of ranks cannot matter)."""
        if not self.distributed:
            return tensor
        out = tensor.detach().to(torch.float64).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.dtype)

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order (pickled; for small metadata)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def world_from_env(device: torch.device, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> World:
    """The process group torchrun describes (gloo on CPU, nccl on CUDA); one rank without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this rank's GPU (``LOCAL_RANK``) under torchrun."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def close(world: World, *, wait: bool = True) -> None:
    """Tear the process group down before exit (gloo can abort at interpreter exit otherwise).

    ``wait``: first let every rank get here, so no collective of another rank is still in
    flight; a rank leaving on an error does not wait (its peers may never arrive)."""
    if world.distributed and dist.is_initialized():
        if wait:
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing to wait for
                dist.barrier()
        dist.destroy_process_group()


def reduce_totals(world: World, totals: dict[str, Any]) -> dict[str, Any]:
    """Sum a dict of totals over ranks; keys ending in ``max`` / ``min`` take the extreme.

    Values are floats or 0-dim tensors and come back as the same kind.
    """
    if not world.distributed:
        return totals
    names = sorted(totals)
    values = torch.tensor([float(totals[k]) for k in names], dtype=torch.float64)
    sign = torch.tensor([-1.0 if k.endswith("min") else 1.0 for k in names], dtype=torch.float64)
    extreme = torch.tensor([k.endswith(("max", "min")) for k in names])
    summed = world.all_sum(torch.where(extreme, 0.0, values))
    largest = world.all_max(torch.where(extreme, values * sign, -math.inf)) * sign
    out = torch.where(extreme, largest, summed).tolist()
    return {
        k: (torch.tensor(v) if isinstance(totals[k], torch.Tensor) else v)
        for k, v in zip(names, out, strict=True)
    }
