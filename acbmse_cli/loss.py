"""ACB-MSE: the per-class statistics and the class-balanced loss built on them.

Everything numeric in this package goes through :func:`class_stats` (per-class
sums and counts, which merge by addition) and :func:`balanced_loss` (the
formula).  The loss, ``acbmse eval`` and ``acbmse curves`` all call these two,
except the loss of labelled classes, which adds the same terms element by element
(``_WeightedSquares``) with the same coefficients ``w_c / n_c``
(``_class_coefficients``, which ``balanced_loss`` uses too): that order of the sum
makes its backward one pass, whatever the number of classes.

This module depends on torch only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

__all__ = [
    "ACBLoss",
    "ACBMSELoss",
    "ClassStats",
    "acb_mse_loss",
    "balanced_loss",
    "class_stats",
    "detection_counts",
    "hit_mask",
]

Reduction = Literal["mean", "none", "sum"]
_REDUCTIONS: tuple[str, ...] = ("mean", "none", "sum")
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


# --------------------------------------------------------------------------- options


def _is_finite(value: float) -> bool:
    # spelled with comparisons, which torch.compile can trace on symbolic floats (math.isfinite it cannot)
    return value == value and abs(value) != math.inf


def _check_weight(name: str, value: object) -> float:
    """A class weight: a finite, non-negative real number."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        fvalue = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not _is_finite(fvalue) or fvalue < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
    if fvalue > _FLOAT32_MAX:
        raise ValueError(f"{name} must be at most {_FLOAT32_MAX:.4g} (the float32 range), got {value!r}")
    return fvalue


def _check_threshold(value: object) -> float:
    try:
        fvalue = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"hit_threshold must be a real number, got {value!r}") from None
    if not _is_finite(fvalue) or fvalue < 0:
        raise ValueError(f"hit_threshold must be finite and non-negative, got {value!r}")
    return fvalue


def _check_class_weights(class_weights: object) -> tuple[float, ...]:
    if isinstance(class_weights, Tensor):
        if class_weights.ndim != 1:
            raise ValueError(f"class_weights must be one-dimensional, got shape {tuple(class_weights.shape)}")
        items: list[object] = list(class_weights.detach().cpu().tolist())
    elif isinstance(class_weights, (str, bytes)) or not isinstance(class_weights, Sequence):
        raise ValueError(f"class_weights must be a sequence of numbers, got {class_weights!r}")
    else:
        items = list(class_weights)
    if not items:
        raise ValueError("class_weights must name at least one class, got an empty sequence")
    return tuple(_check_weight(f"class_weights[{i}]", w) for i, w in enumerate(items))


def _check_reduction(reduction: object, per_sample: bool) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")
    if reduction == "sum" and not per_sample:
        raise ValueError(
            "reduction='sum' needs per_sample=True: with pooled classes the loss is already one "
            "balanced scalar (use 'mean'), or 'none' for each element's contribution"
        )
    return str(reduction)


def _check_pair(input: Tensor, target: Tensor) -> None:
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


def _check_labels(labels: Tensor, target: Tensor) -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be an integer tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != target.shape:
        raise ValueError(
            f"labels must have the target's shape {tuple(target.shape)}, got {tuple(labels.shape)}"
        )


def _check_per_sample(input: Tensor, per_sample: bool) -> None:
    if per_sample and input.ndim == 0:
        raise ValueError("per_sample=True needs a batch dimension (dim 0), got a 0-dimensional input")


def _check_label_range(labels: Tensor, count: Tensor, num_classes: int) -> None:
    """Every label in ``[0, K)``, read off the class counts (a label outside is counted nowhere).

    Reading the counts back to the host is free on the CPU and a sync elsewhere, so the check
    runs on the CPU only (elsewhere the loss shows such labels as NaN).
    """
    if labels.device.type != "cpu" or not labels.numel() or torch.compiler.is_compiling():
        return
    if int(count.sum()) == labels.numel():
        return
    low_t, high_t = torch.aminmax(labels)
    raise ValueError(
        f"labels must lie in [0, {num_classes}) for {num_classes} class_weights, "
        f"got values from {int(low_t)} to {int(high_t)}"
    )


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the statistics are summed in: at least float32, float64 kept."""
    if any(d == torch.float64 for d in dtypes):
        return torch.float64
    return torch.float32


# --------------------------------------------------------------------------- statistics


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

    count: Tensor
    sse: Tensor
    sae: Tensor | None = None
    max_abs_error: Tensor | None = None
    sum_target: Tensor | None = None
    sum_input: Tensor | None = None

    def __add__(self, other: ClassStats) -> ClassStats:
        merged: dict[str, Any] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None or b is None:
                merged[f.name] = None
            elif f.name == "max_abs_error":
                merged[f.name] = torch.maximum(a, b)
            else:
                merged[f.name] = a + b
        return ClassStats(**merged)

    def to(self, device: torch.device | str) -> ClassStats:
        """The same statistics on another device."""
        moved: dict[str, Any] = {
            f.name: (None if (v := getattr(self, f.name)) is None else v.to(device)) for f in fields(self)
        }
        return ClassStats(**moved)

    def pooled(self) -> ClassStats:
        """Pool the groups (dim 0) into one: shape ``(1, K)``."""
        values: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                values[f.name] = None
            elif f.name == "max_abs_error":
                values[f.name] = v.amax(dim=0, keepdim=True)
            else:
                values[f.name] = v.sum(dim=0, keepdim=True)
        return ClassStats(**values)


def _groups(shape: torch.Size, per_sample: bool) -> tuple[int, int]:
    """``(S, M)``: the groups that are balanced on their own, and the elements in each."""
    if per_sample:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def _threshold_in(dtype: torch.dtype, hit_threshold: float) -> float:
    """``hit_threshold`` rounded down to a value of ``dtype``.

    torch compares a tensor with a Python float in the tensor's dtype, after
    rounding the float to nearest; a value lying between the threshold and its
    rounded-up copy would then be misclassified.  For a representable ``v``,
    ``v > t`` holds exactly when ``v > round_down(t)``.
    """
    if not dtype.is_floating_point or dtype == torch.float64 or hit_threshold == 0.0:
        return hit_threshold
    rounded = torch.tensor(hit_threshold, dtype=torch.float64).to(dtype)
    if float(rounded) > hit_threshold:
        rounded = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return float(rounded)


def hit_mask(target: Tensor, hit_threshold: float = 0.0) -> Tensor:
    """The hit class: ``|target| > hit_threshold``, exactly, for any floating dtype."""
    return target.abs() > _threshold_in(target.dtype, hit_threshold)


def _hit_indicator(target2d: Tensor, hit_threshold: float, dtype: torch.dtype) -> Tensor:
    """1.0 where ``|target| > hit_threshold``, else 0.0 (a NaN target is a non-hit), in ``dtype``.

    Written as a comparison into a float tensor: on CPUs torch vectorises that, and not the
    same comparison into a boolean mask, which also costs a conversion afterwards.
    """
    magnitude = target2d.detach().abs().to(dtype)
    return torch.gt(magnitude, _threshold_in(dtype, hit_threshold), out=magnitude)


def _count_dtype(width: int) -> torch.dtype | None:
    """The dtype to count 0/1 indicators of ``width`` elements in: float sums of 0/1 values are
    exact below 2**24 (float32) or 2**53 (float64) per group; None keeps the indicators' dtype."""
    return None if width < 2**24 else torch.float64


class _Membership:
    """Which class each element of an ``(S, M)`` view belongs to, as float 0/1 indicators.

    Two classes need one indicator, the hit class; the non-hit part of any value ``v`` is
    ``v - v * hit``, which is exact.  With labels, each class's indicator is made when it is
    needed, in one reused buffer, so memory stays at a few tensors of the input's size.
    """

    def __init__(self, hit: Tensor | None, labels: Tensor | None, num_classes: int) -> None:
        self.hit = hit  # float hit indicator, or None with labels
        self.labels = labels  # float labels, or None for the two default classes
        self.num_classes = num_classes
        present = hit if hit is not None else labels
        assert present is not None
        self.dtype = present.dtype

    @classmethod
    def of(
        cls,
        target2d: Tensor,
        hit_threshold: float,
        labels2d: Tensor | None,
        num_classes: int,
        dtype: torch.dtype,
    ) -> _Membership:
        """The classes of a target (and labels), with indicators in ``dtype``."""
        if labels2d is None:
            return cls(_hit_indicator(target2d, hit_threshold, dtype), None, 2)
        # one conversion up front: comparisons of float labels are the fast ones
        return cls(None, labels2d.to(dtype), num_classes)

    def indicators(self) -> Iterator[tuple[int, Tensor]]:
        """``(c, indicator of class c)`` for every class; the buffer is reused between classes."""
        if self.hit is not None:
            yield 1, self.hit
            return
        assert self.labels is not None
        # autograd may keep an indicator for a double backward: then each class gets its own
        reuse = not torch.is_grad_enabled()
        buffer = torch.empty_like(self.labels)
        for c in range(self.num_classes):
            yield c, torch.eq(self.labels, c, out=buffer if reuse else torch.empty_like(self.labels))

    def counts(self) -> Tensor:
        """Per-group, per-class element counts, exact, as int64: shape ``(S, K)``."""
        return self.counts_and_sums(None)[0]

    def counts_and_sums(self, values: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Exact int64 counts and, for ``values`` (labelled classes only), per-class sums; each
        class's indicator made once.

        The sums select rather than multiply by the indicator, so that an infinite value stays in
        its own class (``inf * 0`` would put a NaN in every other one).
        """
        indicator_any = self.hit if self.hit is not None else self.labels
        assert indicator_any is not None
        width = indicator_any.shape[1]
        count_dtype = _count_dtype(width)
        if self.hit is not None:
            assert values is None
            hits = self.hit.sum(dim=1, dtype=count_dtype).to(torch.int64)
            return torch.stack([width - hits, hits], dim=1), None
        class_counts, class_sums = [], []
        for _, indicator in self.indicators():
            class_counts.append(indicator.sum(dim=1, dtype=count_dtype).to(torch.int64))
            if values is not None:
                class_sums.append(torch.where(indicator > 0.5, values, 0.0).sum(dim=1))
        return torch.stack(class_counts, dim=1), (torch.stack(class_sums, dim=1) if class_sums else None)

    def counts_and_coefficients(
        self, weights: Sequence[float], reduce_counts: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Local counts ``(S, K)``, the coefficients ``w_c / n_c`` ``(S, K)`` and each element's own.

        Each class's coefficient needs only that class's count, so one comparison per class
        yields its count and its members' coefficient.  With ``reduce_counts`` the
        coefficients come from the counts summed over all ranks, which are known only after
        every class is counted: then the indicators are made a second time.
        """
        assert self.labels is not None
        if reduce_counts:
            count = self.counts()
            coef = _class_coefficients(_all_reduce_sum(count), weights, self.dtype)
            with torch.no_grad():
                return count, coef, self.spread(coef)
        count_dtype = _count_dtype(self.labels.shape[1])
        counts, coefs = [], []
        each: Tensor | None = None
        with torch.no_grad():
            for c, indicator in self.indicators():
                counts.append(indicator.sum(dim=1, keepdim=True, dtype=count_dtype).to(torch.int64))
                coefs.append(_class_coefficients(counts[-1], weights[c : c + 1], self.dtype))
                if each is None:
                    each = indicator * coefs[-1]
                else:
                    each.addcmul_(indicator, coefs[-1])
        assert each is not None
        return torch.cat(counts, dim=1), torch.cat(coefs, dim=1), each

    def spread(self, per_class: Tensor) -> Tensor:
        """Each element's entry of an ``(S, K)`` per-class tensor: shape ``(S, M)``.

        Exact: every element receives its own class's value times 1, plus zeros (a blend
        ``non + hit * (hit_value - non)`` is not: it loses a value far smaller than the other).
        """
        if self.hit is not None:
            non, hit = per_class[:, :1], per_class[:, 1:]
            return torch.addcmul(self.hit * hit, 1.0 - self.hit, non)
        out: Tensor | None = None
        for c, indicator in self.indicators():
            value = per_class[:, c : c + 1]
            if out is None:
                out = indicator * value
            elif torch.is_grad_enabled():
                out = torch.addcmul(out, indicator, value)
            else:
                out.addcmul_(indicator, value)
        assert out is not None
        return out


class _ClassSSE(torch.autograd.Function):
    """Per-class sums of squared error and counts, with a two-pass backward.

    Forward, two classes: ``d = x - y`` split exactly into its hit part ``d_h = d * hit`` and
    non-hit part ``d_n = d - d_h``; SSE_hit = sum d_h^2, SSE_non = sum d_n^2.  Backward:
    ``dL/dx = 2 (g_non d_n + g_hit d_h)``.  Buffers are reused in place: on CPUs a fresh
    tensor of the input's size costs more than an arithmetic pass over it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        labels: Tensor | None,
        hit_threshold: float,
        num_classes: int,
    ) -> tuple[Tensor, Tensor]:
        member = _Membership.of(y, hit_threshold, labels, num_classes, x.dtype)
        diff = x - y
        if member.hit is not None:
            count = member.counts()  # before the indicator's buffer is reused below
            on_hits = torch.mul(diff, member.hit, out=member.hit)
            off_hits = diff.sub_(on_hits)  # buffers reused in place
            square = on_hits * on_hits
            sse_hit = square.sum(dim=1)
            sse_non = torch.mul(off_hits, off_hits, out=square).sum(dim=1)
            sse = torch.stack([sse_non, sse_hit], dim=1)
            ctx.save_for_backward(x, y, labels, off_hits, on_hits)
        else:
            count, sse = member.counts_and_sums(diff * diff)  # type: ignore[assignment]
            ctx.save_for_backward(x, y, labels, diff, member.labels)
        ctx.hit_threshold = hit_threshold
        ctx.num_classes = num_classes
        ctx.mark_non_differentiable(count)
        return sse, count

    @staticmethod
    def backward(ctx: Any, grad_sse: Tensor, _grad_count: Tensor | None) -> tuple[Tensor | None, ...]:
        x, y, labels, first, second = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: build the gradient from differentiable pieces (double backward works)
            member = _Membership.of(y, ctx.hit_threshold, labels, ctx.num_classes, x.dtype)
            grad = 2.0 * (x - y) * member.spread(grad_sse)
        elif labels is None:
            off_hits, on_hits = first, second
            twice = grad_sse * 2.0
            grad = torch.mul(off_hits, twice[:, :1]).addcmul_(on_hits, twice[:, 1:])
        else:
            diff, labels_f = first, second
            grad = _Membership(None, labels_f, ctx.num_classes).spread(grad_sse * 2.0).mul_(diff)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        return (grad if need_x else None), (-grad if need_y else None), None, None, None


class _WeightedSquares(torch.autograd.Function):
    """Each element's term ``w_c (x - y)^2 / n_c`` of the loss, summed per group unless ``summed`` is
    False, with a one-pass backward.

    The loss of ``balanced_loss`` regrouped by element: ``sum_c w_c SSE_c / n_c`` is
    ``sum_i G_i d_i^2`` with ``G_i = w_c / n_c`` for the class of element ``i``
    (``_class_coefficients``).  ``G`` is built while each class's indicator is at hand, so the
    backward, ``2 g G d``, is one pass over the saved ``G d`` instead of one comparison and one
    product per class.  Used for labelled classes, where that saving grows with their number.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        labels: Tensor,
        weights: tuple[float, ...],
        reduce_counts: bool,
        summed: bool,
    ) -> tuple[Tensor, Tensor]:
        member = _Membership.of(y, 0.0, labels, len(weights), x.dtype)
        count, coef, each = member.counts_and_coefficients(weights, reduce_counts)
        del member  # the float labels are not needed any more
        diff = x - y
        scaled = each.mul_(diff)  # G d: its buffer is reused
        terms = diff.mul_(scaled)  # G d^2, in the buffer of d
        ctx.save_for_backward(x, y, labels, coef, scaled)
        ctx.mark_non_differentiable(count)
        return (terms.sum(dim=1) if summed else terms), count

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_count: Tensor | None) -> tuple[Tensor | None, ...]:
        x, y, labels, coef, scaled = ctx.saved_tensors
        if grad_out.ndim == 1:
            grad_out = grad_out.unsqueeze(1)
        if torch.is_grad_enabled():
            # create_graph: build the gradient from differentiable pieces (double backward works)
            member = _Membership.of(y, 0.0, labels, coef.shape[1], x.dtype)
            grad = 2.0 * grad_out * member.spread(coef) * (x - y)
        elif grad_out.shape[1] == 1:
            grad = scaled * (grad_out * 2.0)
        else:
            grad = torch.mul(grad_out, 2.0).mul_(scaled)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        return (grad if need_x else None), (-grad if need_y else None), None, None, None, None


def _extended_by_matmul(
    x: Tensor, y: Tensor, labels2d: Tensor | None, hit_threshold: float, num_classes: int, acc: torch.dtype
) -> ClassStats | None:
    """Every field of ``class_stats(..., extended=True)`` for ``(S, M)`` views, without autograd.

    One ``(S, 4, M)`` matrix of values ``[d^2, |d|, y, x]`` (``d = x - y``) times the ``(S, M, K)``
    0/1 class-membership matrix gives all ``4 K`` sums of each group in a single pass; the
    products with 1 and 0 are exact, so this is the same sum as masking, in another order.
    Except for a non-finite value, whose product with 0 is NaN in every class: then None
    (one host sync), and the caller masks instead.
    """
    groups, width = x.shape
    values = torch.empty(groups, 4, width, dtype=acc, device=x.device)
    xs, ys, err, sq = values[:, 3], values[:, 2], values[:, 1], values[:, 0]
    xs.copy_(x)
    ys.copy_(y)
    torch.sub(xs, ys, out=err).abs_()
    torch.mul(err, err, out=sq)
    member = torch.empty(groups, num_classes, width, dtype=acc, device=x.device)
    if labels2d is None:
        hit = member[:, 1]
        if hit_threshold == 0.0:
            # |y| > 0 is y != 0, one comparison each way; a NaN target would land in the wrong
            # class here, but it makes the sums NaN, and then the caller masks instead
            torch.ne(ys, 0.0, out=hit)
            torch.eq(ys, 0.0, out=member[:, 0])
        else:
            torch.abs(ys, out=hit)
            torch.gt(hit, _threshold_in(acc, hit_threshold), out=hit)
            torch.lt(hit, 0.5, out=member[:, 0])  # 1 - hit (a NaN target is a non-hit)
    else:
        for c in range(num_classes):
            torch.eq(labels2d, c, out=member[:, c])
    sums = torch.bmm(member, values.transpose(1, 2))  # (S, K, 4): this orientation runs faster
    # one number to read back: the sum of all sums is finite unless some sum is not (or they
    # overflow together, and then the masked path is merely slower)
    if not math.isfinite(float(sums.sum())):
        return None
    if labels2d is None:  # the non-hits are the rest
        hits = member[:, 1].sum(dim=1, dtype=torch.float64).to(torch.int64)
        count = torch.stack([width - hits, hits], dim=1)
    else:
        count = member.sum(dim=2, dtype=torch.float64).to(torch.int64)
    # the indicators are not needed any more: their buffer takes the masked errors
    maxima = member.mul_(err.unsqueeze(1)).amax(dim=2) if width else err.new_zeros(groups, num_classes)
    return ClassStats(
        count=count,
        sse=sums[..., 0],
        sae=sums[..., 1],
        max_abs_error=maxima,
        sum_target=sums[..., 2],
        sum_input=sums[..., 3],
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
) -> ClassStats:
    r"""Per-class counts and sums of squared error, the statistics ACB-MSE is made of.

    Classes come from the target: non-hit (class 0) where
    :math:`|y| \le` ``hit_threshold`` and hit (class 1) where :math:`|y| >`
    ``hit_threshold``; or, with ``labels``, class ``labels[i]`` for element ``i``.

    The sums are differentiable with respect to ``input`` and ``target``; the
    class membership is not (it is piecewise constant).  Nothing on the default
    path reads a value back to the host, so it runs without device
    synchronisation.  ``extended=True`` without autograd (evaluation) takes all
    sums from one matrix product and reads back one flag per call, to fall back
    to masking when a sum is not finite.

    Args:
        input: the prediction :math:`\hat y`.
        target: the truth :math:`y`, same shape as ``input``.
        hit_threshold: elements with ``|target| > hit_threshold`` are hits.
        labels: integer class of every element, same shape as ``target``.
        num_classes: how many classes ``labels`` has (required with ``labels``).
        per_sample: one group per sample (dim 0) instead of one for everything.
        dtype: accumulation dtype; default float32, or float64 when an input is.
        extended: also fill ``sae``, ``max_abs_error``, ``sum_target``, ``sum_input``.

    Shape:
        - Input: :math:`(*)`, or :math:`(N, *)` with ``per_sample``.
        - Target, labels: same shape as the input.
        - Output fields: :math:`(1, K)`, or :math:`(N, K)` with ``per_sample``.
    """
    _check_pair(input, target)
    if labels is not None:
        if num_classes is None:
            raise ValueError("num_classes is required with labels")
        _check_labels(labels, target)
        n_classes = num_classes
    else:
        n_classes = 2
    _check_per_sample(input, per_sample)
    acc = dtype if dtype is not None else accumulation_dtype(input.dtype, target.dtype)

    groups, width = _groups(input.shape, per_sample)
    labels2d = None if labels is None else labels.reshape(groups, width)
    stats = _class_stats_2d(
        input.reshape(groups, width),
        target.reshape(groups, width),
        labels2d,
        hit_threshold,
        n_classes,
        acc,
        extended,
    )
    if labels is not None:
        _check_label_range(labels, stats.count, n_classes)
    return stats


def _class_stats_2d(
    input: Tensor,
    target: Tensor,
    labels2d: Tensor | None,
    hit_threshold: float,
    n_classes: int,
    acc: torch.dtype,
    extended: bool,
) -> ClassStats:
    """:func:`class_stats` of ``(S, M)`` views, options checked."""
    if extended and not (torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)):
        stats = _extended_by_matmul(input, target, labels2d, hit_threshold, n_classes, acc)
        return (
            stats
            if stats is not None
            else _extended_by_masks(input, target, labels2d, hit_threshold, n_classes, acc)
        )
    x = input.to(acc)
    y = target.to(acc)
    sse, count = _ClassSSE.apply(x, y, labels2d, hit_threshold, n_classes)  # type: ignore[no-untyped-call]
    if not extended:
        return ClassStats(count=count, sse=sse)
    with torch.no_grad():
        masked = _extended_by_masks(x, y, labels2d, hit_threshold, n_classes, acc)
    return ClassStats(
        count=count,
        sse=sse,
        sae=masked.sae,
        max_abs_error=masked.max_abs_error,
        sum_target=masked.sum_target,
        sum_input=masked.sum_input,
    )


def _extended_by_masks(
    input: Tensor,
    target: Tensor,
    labels2d: Tensor | None,
    hit_threshold: float,
    num_classes: int,
    acc: torch.dtype,
) -> ClassStats:
    """Every extended statistic by boolean masking, without autograd: slower, but an Inf in one
    class cannot spill into another (``Inf * 0`` is NaN; a masked-out element is never touched).
    """
    with torch.no_grad():
        x, y = input.to(acc), target.to(acc)
        if labels2d is None:
            hit = hit_mask(y, hit_threshold)
            masks = [~hit, hit]
        else:
            masks = [labels2d == c for c in range(num_classes)]
        diff = x - y
        err = diff.abs()
        square = diff * diff

        def per_class(values: Tensor, reduce: str) -> Tensor:
            if reduce == "max" and values.shape[1] == 0:
                return values.new_zeros(values.shape[0], num_classes)
            picked = [torch.where(m, values, 0.0) for m in masks]
            return torch.stack([p.amax(dim=1) if reduce == "max" else p.sum(dim=1) for p in picked], dim=1)

        return ClassStats(
            count=torch.stack([m.sum(dim=1) for m in masks], dim=1),
            sse=per_class(square, "sum"),
            sae=per_class(err, "sum"),
            max_abs_error=per_class(err, "max"),
            sum_target=per_class(y, "sum"),
            sum_input=per_class(x, "sum"),
        )


def _class_coefficients(count: Tensor, weights: Sequence[float], dtype: torch.dtype) -> Tensor:
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
    coef = _class_coefficients(stats.count, weights, stats.sse.dtype)
    return (stats.sse * coef).sum(dim=1)


# --------------------------------------------------------------------------- the loss


def _resolve_classes(
    hit_weight: float,
    nonhit_weight: float,
    hit_threshold: float,
    has_labels: bool,
    class_weights: Sequence[float] | Tensor | None,
) -> tuple[tuple[float, ...], float]:
    """Validate the class options; return the weights in label order and the threshold."""
    if not has_labels:
        if class_weights is not None:
            raise ValueError("class_weights needs labels: pass labels=, or use hit_weight/nonhit_weight")
        a = _check_weight("hit_weight", hit_weight)
        b = _check_weight("nonhit_weight", nonhit_weight)
        return (b, a), _check_threshold(hit_threshold)
    if class_weights is None:
        raise ValueError("labels needs class_weights: one weight per class")
    for name, value, default in (
        ("hit_weight", hit_weight, 1.0),
        ("nonhit_weight", nonhit_weight, 1.0),
        ("hit_threshold", hit_threshold, 0.0),
    ):
        if value != default:
            raise ValueError(
                f"{name}={value!r} has no meaning with labels: the classes and their weights "
                "come from labels and class_weights"
            )
    return _check_class_weights(class_weights), 0.0


def acb_mse_loss(
    input: Tensor,
    target: Tensor,
    *,
    hit_weight: float = 1.0,
    nonhit_weight: float = 1.0,
    hit_threshold: float = 0.0,
    labels: Tensor | None = None,
    class_weights: Sequence[float] | Tensor | None = None,
    per_sample: bool = False,
    reduction: Reduction = "mean",
    sync_dist: bool = False,
) -> Tensor:
    r"""Automatic class-balanced mean squared error.

    The mean squared error of each class, weighted and added:

    .. math::
        \ell = \sum_c w_c \frac{1}{n_c} \sum_{i \in c} (y_i - \hat y_i)^2

    With the default two classes, hits are the elements with
    :math:`|y| >` ``hit_threshold`` and :math:`\ell = A\,\mathrm{MSE}_{hit} +
    B\,\mathrm{MSE}_{non\text{-}hit}`, ``A = hit_weight``, ``B = nonhit_weight``.
    Each class counts the same whatever its size.  A class with no elements
    adds 0; a NaN or Inf in ``input`` or ``target`` shows in the result.

    Args:
        input: prediction :math:`\hat y`, floating point.
        target: truth :math:`y`, same shape as ``input``.
        hit_weight: A, weight of the hit class.
        nonhit_weight: B, weight of the non-hit class.
        hit_threshold: an element is a hit when ``|target| > hit_threshold``.
        labels: for n classes, the integer class of every element, in ``[0, K)``.
        class_weights: the K weights :math:`w_c`, required with ``labels``; Python numbers
            (a tensor is read back to the host, which on a GPU is a sync on every call: pass
            ``ACBMSELoss(class_weights=...)``, which reads them once).
        per_sample: balance each sample (dim 0) on its own instead of the pooled batch.
        reduction: ``'mean'``: the balanced loss (the mean over samples with
            ``per_sample``); ``'none'``: each element's contribution
            :math:`w_c (y_i - \hat y_i)^2 / n_c` (summing to the loss), or each
            sample's loss with ``per_sample``; ``'sum'``: the sum over samples
            (``per_sample`` only).
        sync_dist: under an initialised ``torch.distributed`` process group, balance the
            classes over the global batch (all ranks' inputs concatenated): every rank returns
            the global-batch loss, and each rank's gradient with respect to its own input is
            ``world_size`` times its slice of the global-batch gradient, so that
            DistributedDataParallel's gradient averaging yields exactly the global-batch
            gradient.  The class counts and sums are all-reduced (two small collectives; every
            rank must call the loss and its backward).  With ``per_sample`` each sample is
            balanced on its own anyway, and ``'mean'``/``'sum'`` reduce over the global batch;
            ``'none'`` returns the local values (with global class counts for pooled classes).
            Without a process group (or with one process) it changes nothing.

    Shape:
        - Input: :math:`(*)`; :math:`(N, *)` with ``per_sample``.
        - Target, labels: same shape as the input.
        - Output: scalar; :math:`(*)` for ``'none'``; :math:`(N)` for ``'none'`` with ``per_sample``.

    Half-precision inputs are summed in float32 and give a float32 result.

    Example::

        >>> import torch
        >>> from acbmse_cli import acb_mse_loss
        >>> target = torch.tensor([0.0, 0.0, 0.0, 100.0])
        >>> blank = torch.zeros(4)
        >>> acb_mse_loss(blank, target)  # the missed hit costs as much as a whole class
        tensor(10000.)
        >>> torch.nn.functional.mse_loss(blank, target)
        tensor(2500.)
    """
    _check_pair(input, target)
    weights, threshold = _resolve_classes(
        hit_weight, nonhit_weight, hit_threshold, labels is not None, class_weights
    )
    reduction = _check_reduction(reduction, per_sample)  # type: ignore[assignment]
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got dtype {input.dtype}")

    distributed = sync_dist and _world_size() > 1
    pooled_terms = reduction == "none" and not per_sample
    if labels is None:
        stats = class_stats(input, target, hit_threshold=threshold, per_sample=per_sample)
        if distributed and not per_sample:
            stats = ClassStats(count=_all_reduce_sum(stats.count), sse=_AllReduceSum.apply(stats.sse))  # type: ignore[no-untyped-call]
        if pooled_terms:
            return _element_contributions(input, target, stats, weights, threshold)
        losses = balanced_loss(stats, weights)
    else:
        losses = _labelled_loss(
            input, target, labels, weights, per_sample, not pooled_terms, distributed and not per_sample
        )
        if pooled_terms:
            return losses
    if not per_sample:
        return losses[0]
    if reduction == "none":
        return losses
    total = losses.sum()
    if not distributed:
        return total if reduction == "sum" else total / max(losses.shape[0], 1)
    total = cast(Tensor, _AllReduceSum.apply(total))  # type: ignore[no-untyped-call]
    if reduction == "sum":
        return total
    # the global number of samples, kept on the device (reading it back would sync)
    samples = _all_reduce_sum(torch.full((), losses.shape[0], dtype=total.dtype, device=total.device))
    return total / samples.clamp(min=1)


def _labelled_loss(
    input: Tensor,
    target: Tensor,
    labels: Tensor,
    weights: tuple[float, ...],
    per_sample: bool,
    summed: bool,
    sync: bool,
) -> Tensor:
    """The loss of labelled classes for every group, ``(S,)``; or, not ``summed``, each element's
    term in the input's shape.  NaN where some label of the group lies outside ``[0, K)``.

    With ``sync`` the class counts, and the summed losses, are those of all ranks.
    """
    _check_labels(labels, target)
    _check_per_sample(input, per_sample)
    acc = accumulation_dtype(input.dtype, target.dtype)
    groups, width = _groups(input.shape, per_sample)
    out, count = _WeightedSquares.apply(  # type: ignore[no-untyped-call]
        input.to(acc).reshape(groups, width),
        target.to(acc).reshape(groups, width),
        labels.reshape(groups, width),
        weights,
        sync,
        summed,
    )
    _check_label_range(labels, count, len(weights))
    poison = _out_of_range_poison(count, width, acc)
    if not summed:
        return cast(Tensor, (out + poison.unsqueeze(1)).reshape(input.shape))
    if sync:
        out = _AllReduceSum.apply(out)  # type: ignore[no-untyped-call]
    return cast(Tensor, out + poison)


def _out_of_range_poison(count: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """0, or NaN for a group where some labels fell outside ``[0, K)`` (counted in no class).

    On the CPU, labels are range-checked with a clear error; on other devices that check
    would need a host sync, so an out-of-range label shows as a NaN loss instead of being
    silently dropped.
    """
    complete = count.sum(dim=1) == width
    return torch.where(complete, 0.0, math.nan).to(dtype)


def _world_size() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over all ranks, out of place, outside autograd."""
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks; the backward sums the gradients over all ranks too.

    Every rank computes the same loss from the reduced statistics, so each rank's gradient
    with respect to its local statistics is ``world_size`` times that of the global loss.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return _all_reduce_sum(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return _AllReduceSum.apply(grad)  # type: ignore[no-untyped-call, no-any-return]
        return _all_reduce_sum(grad)


def _element_contributions(
    input: Tensor, target: Tensor, stats: ClassStats, weights: Sequence[float], threshold: float
) -> Tensor:
    """``w_c (y_i - yhat_i)^2 / n_c`` for every element of the two default classes, in the input's shape."""
    acc = stats.sse.dtype
    coef = _class_coefficients(stats.count, weights, acc)[0]
    per_element = torch.where(hit_mask(target.to(acc), threshold), coef[1], coef[0])
    diff = input.to(acc) - target.to(acc)
    return per_element * diff * diff


class ACBMSELoss(nn.Module):
    r"""Automatic class-balanced MSE as a module; see :func:`acb_mse_loss`.

    Stores the options (validated here, once) and calls :func:`acb_mse_loss`.

    Example::

        >>> import torch
        >>> from acbmse_cli import ACBMSELoss
        >>> loss_fn = ACBMSELoss(hit_weight=2.0)
        >>> loss_fn(torch.zeros(4), torch.tensor([0.0, 0.0, 0.0, 1.0]))
        tensor(2.)
    """

    def __init__(
        self,
        *,
        hit_weight: float = 1.0,
        nonhit_weight: float = 1.0,
        hit_threshold: float = 0.0,
        labels: Tensor | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        per_sample: bool = False,
        reduction: Reduction = "mean",
        sync_dist: bool = False,
    ) -> None:
        super().__init__()
        if class_weights is None and labels is not None:
            raise ValueError("labels needs class_weights: one weight per class")
        # With class_weights, labels may be fixed here or passed to each forward call.
        weights, _ = _resolve_classes(
            hit_weight, nonhit_weight, hit_threshold, class_weights is not None, class_weights
        )
        self.class_weights = None if class_weights is None else weights
        self.hit_weight = _check_weight("hit_weight", hit_weight)
        self.nonhit_weight = _check_weight("nonhit_weight", nonhit_weight)
        self.hit_threshold = _check_threshold(hit_threshold)
        self.labels: Tensor | None
        self.register_buffer("labels", labels, persistent=False)  # moves with .to(device)
        self.per_sample = bool(per_sample)
        self.sync_dist = bool(sync_dist)
        self.reduction: Reduction = _check_reduction(reduction, self.per_sample)  # type: ignore[assignment]

    def forward(self, input: Tensor, target: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss of ``input`` against ``target`` (``labels``: this call's classes)."""
        labels = self.labels if labels is None else labels
        if self.class_weights is not None and labels is None:
            raise ValueError("this loss has class_weights: forward needs labels")
        return acb_mse_loss(
            input,
            target,
            hit_weight=self.hit_weight,
            nonhit_weight=self.nonhit_weight,
            hit_threshold=self.hit_threshold,
            labels=labels,
            class_weights=self.class_weights,
            per_sample=self.per_sample,
            reduction=self.reduction,
            sync_dist=self.sync_dist,
        )

    def extra_repr(self) -> str:
        if self.class_weights is not None:
            options = f"class_weights={self.class_weights}"
        else:
            options = (
                f"hit_weight={self.hit_weight}, nonhit_weight={self.nonhit_weight}, "
                f"hit_threshold={self.hit_threshold}"
            )
        sync = ", sync_dist=True" if self.sync_dist else ""
        return f"{options}, per_sample={self.per_sample}, reduction={self.reduction!r}{sync}"


class ACBLoss(nn.Module):
    """Drop-in replacement for ``acb_mse.ACBLoss`` of the acb-mse 1.0.6 package.

    Same arguments in the same order: ``zero_weighting`` weighs the pixels where
    the target is zero (the non-hit weight B), ``nonzero_weighting`` the others
    (the hit weight A).  Same value wherever the original returns one; where the
    original returns the Python int ``0`` (no elements) this returns a zero
    tensor, and where it replaces a NaN class loss by 0 this lets the NaN show.

    Example::

        >>> import torch
        >>> from acbmse_cli import ACBLoss
        >>> loss_fn = ACBLoss(zero_weighting=1, nonzero_weighting=1)
        >>> loss_fn(torch.zeros(4), torch.tensor([0.0, 0.0, 0.0, 100.0]))
        tensor(10000.)
    """

    def __init__(self, zero_weighting: float = 1.0, nonzero_weighting: float = 1.0) -> None:
        super().__init__()
        self.zero_weighting = _check_weight("zero_weighting", zero_weighting)
        self.nonzero_weighting = _check_weight("nonzero_weighting", nonzero_weighting)

    def forward(self, reconstructed_image: Tensor, target_image: Tensor) -> Tensor:
        """The balanced loss of the reconstruction against the target."""
        return acb_mse_loss(
            reconstructed_image,
            target_image,
            hit_weight=self.nonzero_weighting,
            nonhit_weight=self.zero_weighting,
        )

    def extra_repr(self) -> str:
        return f"zero_weighting={self.zero_weighting}, nonzero_weighting={self.nonzero_weighting}"


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
    _check_pair(input, target)
    groups, width = _groups(input.shape, per_sample)
    detected = input.reshape(groups, width) > _threshold_in(input.dtype, detect_threshold)
    truth = hit_mask(target.reshape(groups, width), hit_threshold)
    tp = (detected & truth).sum(dim=1)
    fp = detected.sum(dim=1) - tp
    fn = truth.sum(dim=1) - tp
    return torch.stack([tp, fp, fn], dim=1)
