"""Per-class statistics of an error ``input - target``: what every number of the package is made of.

:class:`ClassStats` holds sums and counts per group and class; each field declares once how
two parts of the data merge (``sum``, or ``max`` for the largest error), and adding,
pooling and the cross-rank merge all read that declaration.  A new summable statistic is
one more declared field.

This module depends on torch only (and on the compiled CPU pass of :mod:`acbmse_cli._native_pass`
where it was built).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from acbmse_cli import _native_pass

__all__ = [
    "ClassStats",
    "Membership",
    "accumulation_dtype",
    "balanced_loss",
    "class_coefficients",
    "class_stats",
    "count_members",
    "detection_counts",
    "hit_mask",
    "threshold_in",
]

Merge = Literal["sum", "max"]


#: The integer dtype of each float dtype's width, to work on the floats' bits.
_SAME_WIDTH_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}

#: Field metadata: how two parts of the data merge.
SUM: dict[str, Merge] = {"merge": "sum"}
MAX: dict[str, Merge] = {"merge": "max"}


class Summable:
    """Statistics whose fields each declare how two parts of the data merge (``sum`` or ``max``).

    A subclass is a frozen dataclass of tensor fields (``None`` for a field not filled), each
    with ``metadata=SUM`` or ``metadata=MAX``; adding two parts, moving them, and merging the
    ranks of a process group all read that declaration.
    """

    def _map(self, fn: Any) -> Any:
        """A copy with ``fn(name, value)`` in every field that is filled."""
        values: dict[str, Any] = {
            f.name: (None if (v := getattr(self, f.name)) is None else fn(f.name, v))
            for f in fields(self)  # type: ignore[arg-type]
        }
        return type(self)(**values)

    @classmethod
    def merge_of(cls, name: str) -> Merge:
        """How field ``name`` merges."""
        return _merge_rules(cls)[name]

    def __add__(self, other: Any) -> Any:
        def merge(name: str, a: Tensor) -> Tensor | None:
            b = getattr(other, name)
            if b is None:
                return None
            return torch.maximum(a, b) if self.merge_of(name) == "max" else a + b

        return self._map(merge)

    def add_(self, other: Any) -> None:
        """Merge ``other`` into these tensors, in place (the fields it fills are filled here)."""
        for name, merge in _merge_rules(type(self)).items():
            a, b = getattr(self, name), getattr(other, name)
            if a is not None and b is not None:
                torch.maximum(a, b, out=a) if merge == "max" else a.add_(b)

    def to(self, device: torch.device | str) -> Any:
        """The same statistics on another device."""
        return self._map(lambda _name, v: v.to(device))

    def all_reduce(self) -> Any:
        """The statistics of all ranks of the process group merged, on every rank."""
        from acbmse_cli._distributed import all_reduce

        return self._map(lambda name, v: all_reduce(v, self.merge_of(name)))


_MERGE_RULES: dict[type, dict[str, Merge]] = {}


def _merge_rules(cls: type) -> dict[str, Merge]:
    """Every field of a :class:`Summable` subclass and how it merges, read once per class."""
    rules = _MERGE_RULES.get(cls)
    if rules is None:
        rules = _MERGE_RULES[cls] = {f.name: f.metadata["merge"] for f in fields(cls)}
    return rules


@dataclass(frozen=True)
class ClassStats(Summable):
    """Per-class sufficient statistics of an error ``input - target``.

    Every field is a tensor of shape ``(S, K)``: ``S`` groups (1 when classes
    are pooled over the whole batch, the batch size with ``per_sample``) and
    ``K`` classes.  Statistics of disjoint parts of the data merge with ``+``
    (``max_abs_error`` by maximum), so they can be accumulated over chunks of a
    file, files of a folder, or ranks of a distributed job.

    ``count`` is int64 and exact; the sums are in the accumulation dtype.  The
    fields after ``sse`` are filled only by ``class_stats(..., extended=True)``.
    """

    count: Tensor = field(metadata=SUM)
    sse: Tensor = field(metadata=SUM)
    sae: Tensor | None = field(default=None, metadata=SUM)
    max_abs_error: Tensor | None = field(default=None, metadata=MAX)
    sum_target: Tensor | None = field(default=None, metadata=SUM)
    sum_input: Tensor | None = field(default=None, metadata=SUM)

    if TYPE_CHECKING:

        def __add__(self, other: ClassStats) -> ClassStats: ...
        def to(self, device: torch.device | str) -> ClassStats: ...
        def all_reduce(self) -> ClassStats: ...
        def _map(self, fn: Any) -> ClassStats: ...

    def pooled(self) -> ClassStats:
        """Pool the groups (dim 0) into one: shape ``(1, K)``."""

        def pool(name: str, v: Tensor) -> Tensor:
            if self.merge_of(name) == "max":
                return v.amax(dim=0, keepdim=True) if v.shape[0] else v.new_zeros(1, v.shape[1])
            return v.sum(dim=0, keepdim=True)

        return self._map(pool)

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


# --------------------------------------------------------------------------- dtypes and thresholds


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the statistics are summed in: at least float32, float64 kept."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def threshold_in(dtype: torch.dtype, threshold: float) -> float:
    """``threshold`` rounded down to a value of ``dtype``.

    torch compares a tensor with a Python float in the tensor's dtype, after
    rounding the float to nearest; a value lying between the threshold and its
    rounded-up copy would then be misclassified.  For a representable ``v``,
    ``v > t`` holds exactly when ``v > round_down(t)``.
    """
    if not dtype.is_floating_point or dtype == torch.float64 or threshold == 0.0:
        return threshold
    rounded = torch.tensor(threshold, dtype=torch.float64).to(dtype)
    if float(rounded) > threshold:
        rounded = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return float(rounded)


def hit_mask(target: Tensor, hit_threshold: float = 0.0) -> Tensor:
    """The hit class: ``|target| > hit_threshold``, exactly, for any floating dtype."""
    return target.abs() > threshold_in(target.dtype, hit_threshold)


def groups_of(shape: torch.Size, *, per_sample: bool) -> tuple[int, int]:
    """``(S, M)``: the groups that are balanced on their own, and the elements in each."""
    if per_sample:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


# --------------------------------------------------------------------------- membership and counts


def count_members(indicator: Tensor, *, dim: int = 1, keepdim: bool = False) -> Tensor:
    """Exact int64 counts of a 0/1 indicator (float or bool) along ``dim``.

    Float sums of 0/1 values are exact below 2**24 terms in float32 (2**53 in float64): wider
    indicators are summed in float64.
    """
    if indicator.dtype == torch.bool or not indicator.is_floating_point():
        return indicator.sum(dim=dim, keepdim=keepdim, dtype=torch.int64)
    wide = indicator.shape[dim] >= 2**24 and indicator.dtype != torch.float64
    return indicator.sum(dim=dim, keepdim=keepdim, dtype=torch.float64 if wide else None).to(torch.int64)


class Membership:
    """Which class each element of an ``(S, M)`` view belongs to: the one place that decides it.

    The two default classes come from the target: hit (class 1) where ``|target| >
    hit_threshold``, non-hit (class 0) elsewhere, a NaN target included.  Labelled classes come
    from an integer tensor: class ``c`` where ``labels == c``; a label outside ``[0, K)`` is in
    no class.  Where the boolean ``mask`` is False an element is in no class at all, whatever
    its target or label.  Indicators are 0/1 tensors in the dtype asked for.
    """

    def __init__(
        self,
        target: Tensor,
        *,
        hit_threshold: float = 0.0,
        labels: Tensor | None = None,
        num_classes: int = 2,
        mask: Tensor | None = None,
    ) -> None:
        self.target = target
        self.hit_threshold = hit_threshold
        self.labels = labels
        self.num_classes = num_classes if labels is not None else 2
        self.mask = mask
        self._bits: dict[torch.dtype, Tensor] = {}

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def with_target(self, target: Tensor) -> Membership:
        """The same classes read off another copy of the target (the same mask, the same bits)."""
        other = Membership(
            target,
            hit_threshold=self.hit_threshold,
            labels=self.labels,
            num_classes=self.num_classes,
            mask=self.mask,
        )
        other._bits = self._bits
        return other

    def members(self) -> Tensor | int:
        """How many elements each group keeps: ``(S,)`` int64 counts of the mask, or ``M`` without one."""
        if self.mask is None:
            return int(self.target.shape[1])
        if torch.compiler.is_compiling() or self.mask.shape[1] >= 2**31:
            return count_members(self.mask)
        # bytes summed into int32 are exact here, and several times faster than bools into int64
        return self.mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).to(torch.int64)

    def masked(self, values: Tensor) -> Tensor:
        """``values`` with 0 wherever the mask leaves an element out (a NaN there too), differentiable."""
        if self.mask is None:
            return values
        return torch.where(self.mask, values, 0.0)

    def keep_(self, values: Tensor) -> Tensor:
        """Zero, in place, the floats of ``values`` ``(S, M)`` that the mask leaves out, a NaN or Inf too.

        An AND of the floats' bits with all ones (kept) or none (left out): exact, and on CPUs
        several times faster than a select on a boolean mask.
        """
        if self.mask is None:
            return values
        ints = _SAME_WIDTH_INT[values.dtype]
        bits = self._bits.get(ints)
        if bits is None:
            bits = torch.empty(self.mask.shape, dtype=ints, device=self.mask.device)
            self._bits[ints] = bits.copy_(self.mask.view(torch.uint8)).neg_()
        values.view(ints).bitwise_and_(bits)
        return values

    def release(self) -> None:
        """Free the bits that :meth:`keep_` keeps for its next call (the mask itself stays)."""
        self._bits.clear()

    def hit(self, dtype: torch.dtype, *, out: Tensor | None = None) -> Tensor:
        """The hit indicator in ``dtype``, in ``out`` or a fresh buffer (the default classes only)."""
        target = self.target.detach()
        if out is not None and target.dtype == dtype:
            magnitude = torch.abs(target, out=out)
        else:
            magnitude = target.abs().to(dtype)
            if out is not None:
                magnitude = out.copy_(magnitude)
        return self.keep_(torch.gt(magnitude, threshold_in(dtype, self.hit_threshold), out=magnitude))

    def non_hit(self, hit: Tensor, *, out: Tensor | None = None) -> Tensor:
        """The non-hit indicator from the :meth:`hit` indicator, in ``out`` or a fresh buffer."""
        return self.keep_(torch.sub(1.0, hit) if out is None else torch.sub(1.0, hit, out=out))

    def float_labels(self, dtype: torch.dtype) -> Tensor:
        """The labels in ``dtype`` (-1, no class, where the mask leaves an element out): comparisons
        of float labels are the fast ones."""
        assert self.labels is not None
        labels = self.labels.to(dtype)
        if self.mask is None:
            return labels
        return self.keep_(labels.add_(1.0)).sub_(1.0)  # small integers: exact

    def label_indicators(self, labels: Tensor, *, reuse: bool) -> Iterator[tuple[int, Tensor]]:
        """``(c, indicator of class c)`` for every class, from :meth:`float_labels`; with ``reuse``
        one buffer serves every class in turn."""
        buffer = torch.empty_like(labels) if reuse else None
        for c in range(self.num_classes):
            yield c, torch.eq(labels, c, out=buffer if buffer is not None else torch.empty_like(labels))

    def masks(self) -> list[Tensor]:
        """Boolean masks of every class, in class order."""
        if self.labels is None:
            hit = hit_mask(self.target.detach(), self.hit_threshold)
            classes = [~hit, hit]
        else:
            classes = [self.labels == c for c in range(self.num_classes)]
        if self.mask is None:
            return classes
        return [torch.logical_and(m, self.mask) for m in classes]

    def spread(self, per_class: Tensor, dtype: torch.dtype) -> Tensor:
        """Each element's entry of an ``(S, K)`` per-class tensor: shape ``(S, M)``.

        Exact: every element receives its own class's value times 1, plus zeros (a blend
        ``non + hit * (hit_value - non)`` is not: it loses a value far smaller than the other).
        """
        if self.labels is None:
            hit = self.hit(dtype)
            non = self.non_hit(hit)
            return hit.mul_(per_class[:, 1:]).addcmul_(non, per_class[:, :1])
        out: Tensor | None = None
        for c, indicator in self.label_indicators(self.float_labels(dtype), reuse=True):
            if out is None:
                out = indicator * per_class[:, c : c + 1]
            else:
                out.addcmul_(indicator, per_class[:, c : c + 1])
        assert out is not None
        return out


def class_coefficients(count: Tensor, weights: Sequence[float], dtype: torch.dtype) -> Tensor:
    """``w_c / n_c`` for every group and class, 0 for empty classes. No host sync."""
    coef = count.clamp(min=1).to(dtype).reciprocal()
    for c, w in enumerate(weights):
        if w != 1.0:
            coef[:, c] *= w
    return coef


def balanced_loss(stats: ClassStats, weights: Sequence[float]) -> Tensor:
    r"""The ACB-MSE formula: :math:`\sum_c w_c \, \mathrm{SSE}_c / n_c` for every group.

    A class with no elements adds 0.  Returns shape ``(S,)``.
    """
    if len(weights) != stats.sse.shape[1]:
        raise ValueError(f"need {stats.sse.shape[1]} class weights, got {len(weights)}")
    coef = class_coefficients(stats.count, weights, stats.sse.dtype)
    return (stats.sse * coef).sum(dim=1)


# --------------------------------------------------------------------------- the statistics


def check_pair(input: Tensor, target: Tensor) -> None:
    """Two real tensors of one shape."""
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"input and target must be tensors, got {type(input).__name__} and {type(target).__name__}"
        )
    if input.shape != target.shape:
        raise ValueError(
            f"input and target must have the same shape, got input {tuple(input.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if input.is_complex() or target.is_complex():
        raise ValueError("input and target must be real, got a complex tensor")


def check_labels(labels: object, target: Tensor) -> Tensor:
    """An integer tensor of the target's shape."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be an integer tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != target.shape:
        raise ValueError(
            f"labels must have the target's shape {tuple(target.shape)}, got {tuple(labels.shape)}"
        )
    return labels


def check_per_sample(input: Tensor, *, per_sample: bool) -> None:
    if per_sample and input.ndim == 0:
        raise ValueError("per_sample=True needs a batch dimension (dim 0), got a 0-dimensional input")


def check_mask(mask: object, target: Tensor) -> Tensor:
    """A boolean tensor of the target's shape."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a boolean tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor (True = keep), got dtype {mask.dtype}")
    if mask.shape != target.shape:
        raise ValueError(f"mask must have the target's shape {tuple(target.shape)}, got {tuple(mask.shape)}")
    return mask


def check_label_range(labels: Tensor, count: Tensor, num_classes: int, mask: Tensor | None = None) -> None:
    """Every label in ``[0, K)``, read off the class counts (a label outside is counted nowhere);
    with ``mask``, every label that it keeps.

    Reading the counts back to the host is free on the CPU and a sync elsewhere, so the check
    runs on the CPU only (elsewhere the loss shows such labels as NaN).
    """
    if labels.device.type != "cpu" or not labels.numel() or torch.compiler.is_compiling():
        return
    kept = labels if mask is None else labels[mask]
    if int(count.sum()) == kept.numel():
        return
    low_t, high_t = torch.aminmax(kept)
    raise ValueError(
        f"labels must lie in [0, {num_classes}) for {num_classes} class_weights, "
        f"got values from {int(low_t)} to {int(high_t)}"
    )


def class_stats(
    input: Tensor,
    target: Tensor,
    *,
    hit_threshold: float = 0.0,
    labels: Tensor | None = None,
    num_classes: int | None = None,
    per_sample: bool = False,
    dtype: torch.dtype | None = None,
    extended: bool = False,
    mask: Tensor | None = None,
    host_sync: bool = True,
) -> ClassStats:
    r"""Per-class counts and sums of squared error, the statistics ACB-MSE is made of.

    Classes come from the target: non-hit (class 0) where
    :math:`|y| \le` ``hit_threshold`` and hit (class 1) where :math:`|y| >`
    ``hit_threshold``; or, with ``labels``, class ``labels[i]`` for element ``i``.
    An element where ``mask`` is False is in no class.

    The sums are differentiable with respect to ``input`` and ``target``; the
    class membership is not (it is piecewise constant).  Labelled classes are
    summed by index, in memory that does not grow with their number.  Without
    autograd, on the CPU, in float64 (evaluation), every sum comes from one
    compiled pass over the elements (:mod:`acbmse_cli._native_pass`), where it
    was built.  Elsewhere, for the two default classes without autograd, all
    sums come from one matrix product and one flag per call is read back, to
    fall back to masking when a sum is not finite; with ``host_sync=False``
    nothing is read back and the two default classes are summed by masking.

    Args:
        input: the prediction :math:`\hat y`.
        target: the truth :math:`y`, same shape as ``input``.
        hit_threshold: elements with ``|target| > hit_threshold`` are hits.
        labels: integer class of every element, same shape as ``target``.
        num_classes: how many classes ``labels`` has (required with ``labels``).
        per_sample: one group per sample (dim 0) instead of one for everything.
        dtype: accumulation dtype; default float32, or float64 when an input is.
        extended: also fill ``sae``, ``max_abs_error``, ``sum_target``, ``sum_input``.
        mask: boolean, False where an element is left out of every class.
        host_sync: allow the one read-back of the matrix-product path (free on the CPU, a
            device sync elsewhere); with False, a loop on a GPU never waits here.

    Shape:
        - Input: :math:`(*)`, or :math:`(N, *)` with ``per_sample``.
        - Target, labels, mask: same shape as the input.
        - Output fields: :math:`(1, K)`, or :math:`(N, K)` with ``per_sample``.
    """
    _check_stats_inputs(input, target, labels, num_classes, mask, per_sample=per_sample)
    acc = dtype if dtype is not None else accumulation_dtype(input.dtype, target.dtype)
    groups, width = groups_of(input.shape, per_sample=per_sample)
    x, y = input.reshape(groups, width), target.reshape(groups, width)
    member = Membership(
        y,
        hit_threshold=hit_threshold,
        labels=None if labels is None else labels.reshape(groups, width),
        num_classes=num_classes or 2,
        mask=None if mask is None else mask.reshape(groups, width),
    )
    stats: ClassStats | None = None
    differentiable = torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    if acc == torch.float64 and host_sync and not differentiable and _native_pass.applies(x, y, labels, mask):
        stats = _stats_by_native_pass(x, y, member)  # every statistic in one pass over the elements
    elif member.labelled:  # K classes: sums by index, in memory that does not grow with K
        stats = _stats_by_index(x.to(acc), y.to(acc), member, extended=extended)
    elif host_sync and not differentiable:
        stats = _stats_by_matmul(x, y, member, acc)
    if stats is None:
        stats = _stats_by_masks(x.to(acc), y.to(acc), member, extended=extended)
    if labels is not None:
        check_label_range(labels, stats.count, member.num_classes, mask)
    if extended:
        return stats
    return ClassStats(count=stats.count, sse=stats.sse)


def _check_stats_inputs(
    input: Tensor,
    target: Tensor,
    labels: Tensor | None,
    num_classes: int | None,
    mask: Tensor | None,
    *,
    per_sample: bool,
) -> None:
    check_pair(input, target)
    if labels is not None:
        if num_classes is None:
            raise ValueError("num_classes is required with labels")
        check_labels(labels, target)
    if mask is not None:
        check_mask(mask, target)
    check_per_sample(input, per_sample=per_sample)


def _stats_by_native_pass(x: Tensor, y: Tensor, member: Membership) -> ClassStats:
    """Every statistic of ``(S, M)`` CPU views in float64, each element read once by the compiled
    pass (:mod:`acbmse_cli._native_pass`); the same sums as :func:`_stats_by_masks`, in another
    order.  A label outside ``[0, K)`` is in no class, as there."""
    count, sums, largest, _ = _native_pass.class_sums(
        x, y, hit_threshold=member.hit_threshold, labels=member.labels, num_classes=member.num_classes,
        mask=member.mask,
    )  # fmt: skip
    return _from_sums(count, sums, largest)


def _from_sums(count: Tensor, sums: Tensor, largest: Tensor) -> ClassStats:
    """Extended statistics from ``(S, K, 4)`` sums in the order squared error, absolute error,
    target, prediction (that of both one-pass paths), and the ``(S, K)`` largest errors."""
    return ClassStats(
        count=count,
        sse=sums[..., 0],
        sae=sums[..., 1],
        max_abs_error=largest,
        sum_target=sums[..., 2],
        sum_input=sums[..., 3],
    )


def _stats_by_matmul(x: Tensor, y: Tensor, member: Membership, acc: torch.dtype) -> ClassStats | None:
    """Every statistic of ``(S, M)`` views from one product, without autograd.

    One ``(S, 4, M)`` matrix of values ``[d^2, |d|, y, x]`` (``d = x - y``) times the ``(S, M, K)``
    0/1 class-membership matrix gives all ``4 K`` sums of each group in a single pass; the
    products with 1 and 0 are exact, so this is the same sum as masking, in another order.
    Except for a non-finite value, whose product with 0 is NaN in every class: then None
    (one host sync), and the caller masks instead.  The two default classes only: the membership
    matrix grows with K (labelled classes are summed by :func:`_stats_by_index`).
    """
    assert not member.labelled
    groups, width = x.shape
    values = torch.empty(groups, 4, width, dtype=acc, device=x.device)
    xs, ys, err, sq = values[:, 3], values[:, 2], values[:, 1], values[:, 0]
    xs.copy_(x)
    ys.copy_(y)
    torch.sub(xs, ys, out=err).abs_()
    torch.mul(err, err, out=sq)
    indicators = torch.empty(groups, 2, width, dtype=acc, device=x.device)
    # the target's copy in ``values`` is in the accumulation dtype already
    hit = member.with_target(ys).hit(acc, out=indicators[:, 1])
    member.non_hit(hit, out=indicators[:, 0])
    for row in range(values.shape[1]):  # a NaN left out must not reach the product (NaN * 0 is NaN)
        member.keep_(values[:, row])
    sums = torch.bmm(indicators, values.transpose(1, 2))  # (S, K, 4): this orientation runs faster
    # one number to read back: the sum of all sums is finite unless some sum is not (or they
    # overflow together, and then the masked path is merely slower)
    if not math.isfinite(float(sums.sum())):
        return None
    count = count_members(indicators, dim=2)
    # the indicators are not needed any more: their buffer takes the masked errors
    maxima = (
        indicators.mul_(err.unsqueeze(1)).amax(dim=2) if width else err.new_zeros(groups, member.num_classes)
    )
    return _from_sums(count, sums, maxima)


def _stats_by_index(x: Tensor, y: Tensor, member: Membership, *, extended: bool = True) -> ClassStats:
    """The statistics of ``(S, M)`` views of labelled classes (``count`` and ``sse`` only unless
    ``extended``), summed by class index.

    Each element's values are added to its own class's entry (``scatter_add``; the largest error by
    ``scatter_reduce``), so the temporaries are a few ``(S, M)`` buffers and the result ``(S, K)``
    whatever the number of classes K, and a NaN or Inf stays in its class.  A label outside
    ``[0, K)``, or one that the mask leaves out, goes to a spare entry that is dropped: it is
    counted in no class.  Differentiable.
    """
    assert member.labels is not None
    groups, k = x.shape[0], member.num_classes
    labels = member.labels.to(torch.int64)
    valid = (labels >= 0) & (labels < k)
    index = torch.where(valid if member.mask is None else valid & member.mask, labels, k)

    def by_class(values: Tensor, reduce: str = "sum") -> Tensor:
        start = torch.zeros(groups, k + 1, dtype=values.dtype, device=values.device)
        if reduce == "sum":
            return start.scatter_add(1, index, values)[:, :k]
        return start.scatter_reduce(1, index, values, "amax")[:, :k]  # errors are >= 0: an empty class is 0

    diff = member.masked(x - y)  # 0 where left out: a NaN there gives no NaN gradient
    count, sse = by_class(torch.ones_like(index)), by_class(diff * diff)
    if not extended:
        return ClassStats(count=count, sse=sse)
    err = diff.abs()
    return ClassStats(
        count=count,
        sse=sse,
        sae=by_class(err),
        max_abs_error=by_class(err, "amax"),
        sum_target=by_class(y),
        sum_input=by_class(x),
    )


def _stats_by_masks(x: Tensor, y: Tensor, member: Membership, *, extended: bool = True) -> ClassStats:
    """The statistics by boolean masking (``count`` and ``sse`` only unless ``extended``): slower,
    differentiable, no host sync, and an Inf in one class cannot spill into another (``Inf * 0``
    is NaN; a masked-out element is never touched)."""
    masks = member.masks()
    diff = member.masked(x - y)  # 0 where left out: a NaN there gives no NaN gradient
    count = torch.stack([count_members(m) for m in masks], dim=1)
    if not extended:
        square = diff * diff
        return ClassStats(
            count=count, sse=torch.stack([torch.where(m, square, 0.0).sum(dim=1) for m in masks], 1)
        )
    err = diff.abs()

    def per_class(values: Tensor, merge: Merge) -> Tensor:
        if merge == "max" and values.shape[1] == 0:
            return values.new_zeros(values.shape[0], len(masks))
        picked = [torch.where(m, values, 0.0) for m in masks]
        return torch.stack([p.amax(dim=1) if merge == "max" else p.sum(dim=1) for p in picked], dim=1)

    fields_of = {"sse": diff * diff, "sae": err, "max_abs_error": err, "sum_target": y, "sum_input": x}
    return ClassStats(
        count=count,
        **{name: per_class(values, ClassStats.merge_of(name)) for name, values in fields_of.items()},
    )


def detection_counts(
    input: Tensor,
    target: Tensor,
    *,
    hit_threshold: float = 0.0,
    detect_threshold: float,
    per_sample: bool = False,
) -> Tensor:
    """True positives, false positives and false negatives of "input > detect_threshold" as a hit detector.

    The truth is the hit class of :func:`class_stats` (``|target| > hit_threshold``).
    Returns int64 counts of shape ``(S, 3)``: ``[tp, fp, fn]`` per group; they merge by addition.
    """
    check_pair(input, target)
    groups, width = groups_of(input.shape, per_sample=per_sample)
    detected = input.reshape(groups, width) > threshold_in(input.dtype, detect_threshold)
    truth = hit_mask(target.reshape(groups, width), hit_threshold)
    tp = count_members(detected & truth)
    fp = count_members(detected) - tp
    fn = count_members(truth) - tp
    return torch.stack([tp, fp, fn], dim=1)
