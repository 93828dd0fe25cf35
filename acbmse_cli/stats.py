"""Per-class statistics of an error ``input - target``: what every number of the package is made of.

:class:`ClassStats` holds sums and counts per group and class; each field declares once how
two parts of the data merge (``sum``, or ``max`` for the largest error), and adding,
pooling and the cross-rank merge all read that declaration.  A new summable statistic is
one more declared field.

This module depends on torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["ClassStats"]

Merge = Literal["sum", "max"]


#: Field metadata: how two parts of the data merge.
_SUM: dict[str, Merge] = {"merge": "sum"}
_MAX: dict[str, Merge] = {"merge": "max"}


@dataclass(frozen=True)
class ClassStats:
    """Per-class sufficient statistics of an error ``input - target``.

    Every field is a tensor of shape ``(S, K)``: ``S`` groups (1 when classes
    are pooled over the whole batch, the batch size with ``per_sample``) and
    ``K`` classes.  Statistics of disjoint parts of the data merge with ``+``
    (``max_abs_error`` by maximum), so they can be accumulated over chunks of a
    file, files of a folder, or ranks of a distributed job.

    ``count`` is int64 and exact; the sums are in the accumulation dtype.  The
    fields after ``sse`` are filled only by ``class_stats(..., extended=True)``.
    """

    count: Tensor = field(metadata=_SUM)
    sse: Tensor = field(metadata=_SUM)
    sae: Tensor | None = field(default=None, metadata=_SUM)
    max_abs_error: Tensor | None = field(default=None, metadata=_MAX)
    sum_target: Tensor | None = field(default=None, metadata=_SUM)
    sum_input: Tensor | None = field(default=None, metadata=_SUM)

    @staticmethod
    def merge_rule(name: str) -> Merge:
        """How the field ``name`` of two parts merges: ``"sum"`` or ``"max"``."""
        rule: Merge = _MERGE[name]
        return rule

    def _map(self, fn: Any) -> ClassStats:
        """A copy with ``fn(name, value)`` in every field that is filled."""
        values: dict[str, Any] = {
            f.name: (None if (v := getattr(self, f.name)) is None else fn(f.name, v)) for f in fields(self)
        }
        return ClassStats(**values)

    def __add__(self, other: ClassStats) -> ClassStats:
        def merge(name: str, a: Tensor) -> Tensor | None:
            b = getattr(other, name)
            if b is None:
                return None
            return torch.maximum(a, b) if _MERGE[name] == "max" else a + b

        return self._map(merge)

    def to(self, device: torch.device | str) -> ClassStats:
        """The same statistics on another device."""
        return self._map(lambda _name, v: v.to(device))

    def pooled(self) -> ClassStats:
        """Pool the groups (dim 0) into one: shape ``(1, K)``."""

        def pool(name: str, v: Tensor) -> Tensor:
            if _MERGE[name] == "max":
                return v.amax(dim=0, keepdim=True) if v.shape[0] else v.new_zeros(1, v.shape[1])
            return v.sum(dim=0, keepdim=True)

        return self._map(pool)

    def all_reduce(self) -> ClassStats:
        """The statistics of all ranks of the process group merged, on every rank."""
        from acbmse_cli._distributed import all_reduce

        return self._map(lambda name, v: all_reduce(v, _MERGE[name]))

    def select(self, classes: slice) -> ClassStats:
        """The statistics of some classes only (a slice of dim 1)."""
        return self._map(lambda _name, v: v[:, classes])

    def replace_rows(self, rows: list[int], parts: list[ClassStats]) -> ClassStats:
        """A copy whose groups ``rows`` are replaced by the one-group statistics ``parts``."""

        def replaced(name: str, v: Tensor) -> Tensor:
            v = v.clone()
            for row, part in zip(rows, parts, strict=True):
                v[row] = getattr(part, name)[0]
            return v

        return self._map(replaced)

    @classmethod
    def zeros(
        cls, num_classes: int, *, groups: int = 1, dtype: torch.dtype = torch.float64, device: Any = "cpu"
    ) -> ClassStats:
        """Extended statistics of no data: the neutral element of ``+``."""
        sums = {
            f.name: torch.zeros(groups, num_classes, dtype=dtype, device=device)
            for f in fields(cls)
            if f.name != "count"
        }
        return cls(count=torch.zeros(groups, num_classes, dtype=torch.int64, device=device), **sums)


_MERGE: dict[str, Merge] = {f.name: f.metadata["merge"] for f in fields(ClassStats)}
