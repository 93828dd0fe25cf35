"""The ``torch.distributed`` helpers that the loss and ``acbmse eval`` share.

Nothing here needs an initialised process group: without one (or with one process)
every helper is the identity and the world has one rank.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
from torch import Tensor

from acbmse_cli.errors import InputError

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
    """Join the ``torchrun`` process group (gloo) when ``WORLD_SIZE`` > 1; ``(rank, world size)``.

    The torchrun variables are checked first: a ``WORLD_SIZE`` above 1 needs ``RANK``, ``MASTER_ADDR``
    and ``MASTER_PORT`` beside it, each well formed.  A stray or incomplete set is refused with an
    :class:`~acbmse_cli.errors.InputError` naming the variable, rather than guessed at (running alone
    where several processes were meant would print the report once per process).
    """
    size = _env_int("WORLD_SIZE", default=1, minimum=1)
    if size <= 1:
        return 0, 1
    _check_torchrun_env(size)
    import torch.distributed as dist

    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo")
        except (RuntimeError, ValueError) as exc:  # the rendezvous failed or timed out
            reason = " ".join(str(exc).split()) or type(exc).__name__
            message = f"cannot join the torchrun process group (WORLD_SIZE={size}): {reason}"
            raise InputError(message) from None
    return world()


_UNSET = "unset WORLD_SIZE to run as one process"


def _env_int(name: str, *, default: int | None = None, minimum: int = 0, below: int | None = None) -> int:
    """The integer in environment variable ``name``, within ``[minimum, below)``; InputError otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        if default is None:
            raise InputError(
                f"WORLD_SIZE={os.environ.get('WORLD_SIZE', '').strip()} but {name} is not set: under "
                f"torchrun every process has RANK, MASTER_ADDR and MASTER_PORT too ({_UNSET})"
            )
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not a whole number ({_UNSET})") from None
    if value < minimum or (below is not None and value >= below):
        bounds = f"at least {minimum}" if below is None else f"from {minimum} to {below - 1}"
        raise InputError(f"environment variable {name}={value} must be {bounds} ({_UNSET})")
    return value


def _check_torchrun_env(size: int) -> None:
    _env_int("RANK", below=size)
    if os.environ.get("LOCAL_RANK", "").strip():
        _env_int("LOCAL_RANK")
    if not os.environ.get("MASTER_ADDR", "").strip():
        raise InputError(
            f"WORLD_SIZE={size} but MASTER_ADDR is not set: under torchrun every process has RANK, "
            f"MASTER_ADDR and MASTER_PORT too ({_UNSET})"
        )
    _env_int("MASTER_PORT", minimum=1, below=65536)


def finish() -> None:
    """Leave the process group, if one is initialised."""
    import torch.distributed as dist

    if _group_ready():
        dist.destroy_process_group()
