"""ACB-MSE, the loss: :func:`acb_mse_loss`, the module :class:`ACBMSELoss`, and the drop-in
:class:`ACBLoss` of the original ``acb-mse`` package.

Each checks its options once and calls the training kernel (:mod:`acbmse_cli._kernel`); the
statistics and the formula live in :mod:`acbmse_cli.stats`, which the evaluation and the
curves use too, and whose public names are importable from here as well.

This module depends on torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

from acbmse_cli import _distributed
from acbmse_cli._checks import check_choice, check_real, check_weight
from acbmse_cli._kernel import weighted_squares
from acbmse_cli.stats import (
    ClassStats,
    Membership,
    accumulation_dtype,
    balanced_loss,
    check_label_range,
    check_labels,
    check_mask,
    check_pair,
    check_per_sample,
    class_stats,
    detection_counts,
    groups_of,
    hit_mask,
)

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


# --------------------------------------------------------------------------- options


def _check_threshold(value: object) -> float:
    return check_real("hit_threshold", value, minimum=0.0)


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
    return tuple(check_weight(f"class_weights[{i}]", w) for i, w in enumerate(items))


def _check_reduction(reduction: object, *, per_sample: bool) -> Reduction:
    check_choice("reduction", reduction, _REDUCTIONS)
    if reduction == "sum" and not per_sample:
        raise ValueError(
            "reduction='sum' needs per_sample=True: with pooled classes the loss is already one "
            "balanced scalar (use 'mean'), or 'none' for each element's contribution"
        )
    return cast(Reduction, reduction)


def _class_options(
    hit_weight: float,
    nonhit_weight: float,
    hit_threshold: float,
    class_weights: Sequence[float] | Tensor | None,
    *,
    labelled: bool,
) -> tuple[tuple[float, ...], float]:
    """Validate the class options; return the weights in class order and the threshold."""
    if not labelled:
        if class_weights is not None:
            raise ValueError("class_weights needs labels: pass labels=, or use hit_weight/nonhit_weight")
        a = check_weight("hit_weight", hit_weight)
        b = check_weight("nonhit_weight", nonhit_weight)
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


# --------------------------------------------------------------------------- the loss


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
    mask: Tensor | None = None,
) -> Tensor:
    r"""Automatic class-balanced mean squared error.

    The mean squared error of each class, weighted and added:

    .. math::
        \ell = \sum_c w_c \frac{1}{n_c} \sum_{i \in c} (y_i - \hat y_i)^2

    With the default two classes, hits are the elements with
    :math:`|y| >` ``hit_threshold`` and :math:`\ell = A\,\mathrm{MSE}_{hit} +
    B\,\mathrm{MSE}_{non\text{-}hit}`, ``A = hit_weight``, ``B = nonhit_weight``.
    Each class counts the same whatever its size.  A class with no elements
    adds 0; a NaN or Inf in ``input`` or ``target`` shows in the result, unless ``mask``
    leaves that element out.

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
        mask: boolean, True for the elements to keep: an element where it is False is in no
            class, exactly as if it were not there (it counts in no class, its term and its
            gradient are 0, whatever its values, NaN included).  With ``per_sample``, a sample
            left with no elements has loss 0 and still counts in ``'mean'``.

    Shape:
        - Input: :math:`(*)`; :math:`(N, *)` with ``per_sample``.
        - Target, labels, mask: same shape as the input.
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
        >>> alive = torch.tensor([True, True, False, True])  # a dead pixel, left out
        >>> acb_mse_loss(torch.tensor([0.0, 0.0, float("nan"), 0.0]), target, mask=alive)
        tensor(10000.)
    """
    check_pair(input, target)
    weights, threshold = _class_options(
        hit_weight, nonhit_weight, hit_threshold, class_weights, labelled=labels is not None
    )
    reduction = _check_reduction(reduction, per_sample=per_sample)
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if labels is not None:
        check_labels(labels, target)
    if mask is not None:
        check_mask(mask, target)
    check_per_sample(input, per_sample=per_sample)

    distributed = sync_dist and _distributed.world()[1] > 1
    per_element = reduction == "none" and not per_sample
    acc = accumulation_dtype(input.dtype, target.dtype)
    groups, width = groups_of(input.shape, per_sample=per_sample)
    y = target.to(acc).reshape(groups, width)
    member = Membership(
        y,
        hit_threshold=threshold,
        labels=None if labels is None else labels.reshape(groups, width),
        num_classes=len(weights),
        mask=None if mask is None else mask.reshape(groups, width),
    )
    terms, count = weighted_squares(
        input.to(acc).reshape(groups, width),
        y,
        member,
        weights,
        global_counts=distributed and not per_sample,
        per_element=per_element,
    )
    if labels is not None:
        _check_label_range(labels, count, len(weights), mask, distributed=distributed)
        poison = _out_of_range_poison(count, member.members(), acc)
        terms = terms + (poison.unsqueeze(1) if per_element else poison)
    if per_element:
        return terms.reshape(input.shape)
    return _reduce(terms, reduction, per_sample=per_sample, distributed=distributed)


def _reduce(losses: Tensor, reduction: Reduction, *, per_sample: bool, distributed: bool) -> Tensor:
    """The ``(S,)`` group losses reduced as asked, over all ranks when ``distributed``."""
    if not per_sample:
        if distributed:
            losses = cast(Tensor, _distributed.AllReduceSum.apply(losses))  # type: ignore[no-untyped-call]
        return losses[0]
    if reduction == "none":
        return losses
    total = losses.sum()
    if not distributed:
        return total if reduction == "sum" else total / max(losses.shape[0], 1)
    total = cast(Tensor, _distributed.AllReduceSum.apply(total))  # type: ignore[no-untyped-call]
    if reduction == "sum":
        return total
    # the global number of samples, kept on the device (reading it back would sync)
    samples = _distributed.all_reduce(torch.full((), losses.shape[0], dtype=total.dtype, device=total.device))
    return total / samples.clamp(min=1)


def _check_label_range(
    labels: Tensor, count: Tensor, num_classes: int, mask: Tensor | None, *, distributed: bool
) -> None:
    """Labels in ``[0, K)`` (those that ``mask`` keeps), decided the same on every rank under ``sync_dist``.

    Alone, the check is :func:`~acbmse_cli.stats.check_label_range`.  Across ranks, a rank that
    raised alone would leave the others waiting in the loss's next collective (or DDP's), so the
    number of labels outside the range is summed over the ranks first and every rank raises the
    same error.  Like the check alone this runs on the CPU only: elsewhere the out-of-range labels
    show as a NaN loss, which the all-reduced loss carries to every rank.
    """
    if not distributed:
        check_label_range(labels, count, num_classes, mask)
        return
    if labels.device.type != "cpu" or torch.compiler.is_compiling():
        return
    kept = labels.numel() if mask is None else int(mask.sum())
    outside = kept - int(count.sum())
    outside_total, bad_ranks = (
        int(v) for v in _distributed.all_reduce(torch.tensor([outside, int(outside > 0)], dtype=torch.int64))
    )
    if outside_total:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} class_weights, got "
            f"{outside_total} outside it on {bad_ranks} of {_distributed.world()[1]} ranks (sync_dist)"
        )


def _out_of_range_poison(count: Tensor, members: Tensor | int, dtype: torch.dtype) -> Tensor:
    """0, or NaN for a group where some labels fell outside ``[0, K)`` (counted in no class), ``(S,)``;
    ``members``: how many elements of each group the mask keeps.

    On the CPU, labels are range-checked with a clear error; on other devices that check
    would need a host sync, so an out-of-range label shows as a NaN loss instead of being
    silently dropped.
    """
    complete = count.sum(dim=1) == members
    return torch.where(complete, 0.0, math.nan).to(dtype)


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
        weights, _ = _class_options(
            hit_weight, nonhit_weight, hit_threshold, class_weights, labelled=class_weights is not None
        )
        self.class_weights = None if class_weights is None else weights
        self.hit_weight = check_weight("hit_weight", hit_weight)
        self.nonhit_weight = check_weight("nonhit_weight", nonhit_weight)
        self.hit_threshold = _check_threshold(hit_threshold)
        self.labels: Tensor | None
        self.register_buffer("labels", labels, persistent=False)  # moves with .to(device)
        self.per_sample = bool(per_sample)
        self.sync_dist = bool(sync_dist)
        self.reduction: Reduction = _check_reduction(reduction, per_sample=self.per_sample)

    def forward(
        self, input: Tensor, target: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """The loss of ``input`` against ``target`` (``labels``: this call's classes; ``mask``: the
        elements to keep)."""
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
            mask=mask,
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
        self.zero_weighting = check_weight("zero_weighting", zero_weighting)
        self.nonzero_weighting = check_weight("nonzero_weighting", nonzero_weighting)

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
