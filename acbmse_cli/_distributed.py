"""The ``torch.distributed`` helpers that the loss and ``acbmse eval`` share.

Nothing here needs an initialised process group: without one (or with one process)
every helper is the identity and the world has one rank.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

__all__ = ["AllReduceSum", "all_reduce", "finish", "gather_objects", "init_from_env", "world"]


def _group_ready() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if not _group_ready():
        return 0, 1
    return int(dist.get_rank()), int(dist.get_world_size())


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """``tensor`` reduced over all ranks (``op``: ``"sum"``, ``"max"`` or ``"min"``), out of place and
    outside autograd."""
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(
        total, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    )
    return total


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (a small object of this program's own making), in rank order."""
    import torch.distributed as dist

    values: list[Any] = [None] * world()[1]
    dist.all_gather_object(values, value)
    return values


class AllReduceSum(torch.autograd.Function):
    """Sum over all ranks; the backward sums the gradients over all ranks too.

    Every rank computes the same loss from the reduced statistics, so each rank's gradient
    with respect to its local statistics is ``world_size`` times that of the global loss.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return all_reduce(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return AllReduceSum.apply(grad)  # type: ignore[no-untyped-call, no-any-return]
        return all_reduce(grad)


def init_from_env() -> tuple[int, int]:
    """Join the ``torchrun`` process group (gloo) when ``WORLD_SIZE`` > 1; ``(rank, world size)``."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return world()


def finish() -> None:
    """Leave the process group, if one is initialised."""
    import torch.distributed as dist

    if _group_ready():
        dist.destroy_process_group()
