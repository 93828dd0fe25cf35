"""The training kernel: each element's term ``w_c (x - y)^2 / n_c`` of the loss, and its gradient.

The loss ``sum_c w_c SSE_c / n_c`` regrouped by element is ``sum_i G_i d_i^2`` with
``d = x - y`` and ``G_i = w_c / n_c`` for the class of element ``i``.  Built while each class's
indicator is at hand, ``G`` makes the backward one pass (``2 g G d``) whatever the number of
classes, and an infinite error gives an infinite term (never ``Inf * 0``) unless its own
class weighs 0.

In eager mode one ``autograd.Function`` computes it with buffers reused in place (on CPUs a
fresh tensor of the input's size costs more than an arithmetic pass over it).  Under
``torch.compile`` the same formula is written in plain tensor ops, which the compiler fuses
into a pass over the data.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from acbmse_cli._distributed import all_reduce
from acbmse_cli.stats import Membership, class_coefficients, count_members

__all__ = ["weighted_squares"]


def weighted_squares(
    x: Tensor,
    y: Tensor,
    member: Membership,
    weights: tuple[float, ...],
    *,
    global_counts: bool = False,
    per_element: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(terms, count)`` of ``(S, M)`` views ``x``, ``y`` in the accumulation dtype.

    ``terms`` is ``sum_i G_i d_i^2`` per group, shape ``(S,)``, or with ``per_element`` every
    ``G_i d_i^2`` in shape ``(S, M)``; ``count`` the ``(S, K)`` int64 class counts of this
    process.  With ``global_counts`` the coefficients come from the counts summed over the
    ranks of the process group.
    """
    if torch.compiler.is_compiling():
        return _plain(x, y, member, weights, global_counts=global_counts, per_element=per_element)
    out = _WeightedSquares.apply(x, y, member, weights, global_counts, per_element)  # type: ignore[no-untyped-call]
    return cast(tuple[Tensor, Tensor], out)


def _coefficients(
    member: Membership, weights: tuple[float, ...], dtype: torch.dtype, *, global_counts: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Local counts ``(S, K)``, coefficients ``w_c / n_c`` ``(S, K)`` and each element's ``G``."""
    if member.labels is None:
        hit = member.hit(dtype)
        hits = count_members(hit)
        count = torch.stack([member.members() - hits, hits], dim=1)
        coef = class_coefficients(all_reduce(count) if global_counts else count, weights, dtype)
        non = member.non_hit(hit)
        return count, coef, hit.mul_(coef[:, 1:]).addcmul_(non, coef[:, :1])
    if global_counts:  # every class counted before any coefficient is known
        count = torch.cat([count_members(m, keepdim=True) for m in member.masks()], dim=1)
        coef = class_coefficients(all_reduce(count), weights, dtype)
        return count, coef, member.spread(coef, dtype)
    # each class's coefficient needs only its own count: one comparison per class does both
    counts, coefs = [], []
    each: Tensor | None = None
    for c, indicator in member.label_indicators(member.float_labels(dtype), reuse=True):
        counts.append(count_members(indicator, keepdim=True))
        coefs.append(class_coefficients(counts[-1], weights[c : c + 1], dtype))
        each = indicator * coefs[-1] if each is None else each.addcmul_(indicator, coefs[-1])
    assert each is not None
    return torch.cat(counts, dim=1), torch.cat(coefs, dim=1), each


class _WeightedSquares(torch.autograd.Function):
    """``G d^2`` summed per group (or per element) with a one-pass backward; eager mode."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        member: Membership,
        weights: tuple[float, ...],
        global_counts: bool,
        per_element: bool,
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            count, coef, each = _coefficients(member, weights, x.dtype, global_counts=global_counts)
            diff = member.keep_(x - y)  # G is 0 where the mask leaves out, but a NaN there is not
            scaled = each.mul_(diff)  # G d, in the buffer of G
            terms = diff.mul_(scaled)  # G d^2, in the buffer of d
        member.release()  # the backward needs none of the mask's bits: not kept until it runs
        ctx.save_for_backward(x, y, coef, scaled)
        ctx.member = member
        ctx.mark_non_differentiable(count)
        return (terms if per_element else terms.sum(dim=1)), count

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_count: Tensor | None) -> tuple[Tensor | None, ...]:
        x, y, coef, scaled = ctx.saved_tensors
        if grad_out.ndim == 1:
            grad_out = grad_out.unsqueeze(1)
        if torch.is_grad_enabled():
            # create_graph: the gradient from differentiable pieces, so that double backward works
            grad = 2.0 * grad_out * ctx.member.spread(coef, x.dtype) * ctx.member.masked(x - y)
        elif grad_out.shape[1] == 1:
            grad = scaled * (grad_out * 2.0)
        else:
            grad = torch.mul(grad_out, 2.0).mul_(scaled)
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        return (grad if need_x else None), (-grad if need_y else None), None, None, None, None


def _plain(
    x: Tensor,
    y: Tensor,
    member: Membership,
    weights: tuple[float, ...],
    *,
    global_counts: bool,
    per_element: bool,
) -> tuple[Tensor, Tensor]:
    """The same terms in plain tensor ops, for the compiler: per-class sums of masked squares
    and counts (one fused pass over the data), then the weights."""
    masks = member.masks()
    square = member.masked(x - y) ** 2
    count = _class_counts(member, masks)
    coef = class_coefficients(all_reduce(count) if global_counts else count, weights, x.dtype)
    if per_element:
        each = torch.zeros_like(square)
        for c, m in enumerate(masks):
            each = torch.where(m, coef[:, c : c + 1], each)
        return each * square, count
    sse = torch.stack([_blocked_sum(torch.where(m, square, 0.0)) for m in masks], dim=1)
    return (sse * coef).sum(dim=1), count


def _class_counts(member: Membership, masks: list[Tensor]) -> Tensor:
    """``(S, K)`` int64 counts of the classes' ``masks``.  With the two default classes and no
    mask the non-hits are the rest of the row, as in the eager kernel: one sum less in the pass."""
    if member.labels is None and member.mask is None:
        hits = _blocked_count(masks[1])
        return torch.stack([masks[1].shape[1] - hits, hits], dim=1)
    return torch.stack([_blocked_count(m) for m in masks], dim=1)


#: Block lengths of the compiled sums, longest first: the compiler's code for a reduction of
#: fixed length runs in vector lanes, where a row reduced in one go takes its cascade summation
#: (about twice the time here); a block's count of ones is exact in float32.
_BLOCKS = (2048, 1024, 512, 256)


def _block(width: int) -> int | None:
    """The longest block that divides rows of ``width`` (``None``: the rows are summed whole).
    Only a block that divides the row: a tail sliced off would turn the backward's one pass into
    index arithmetic on every element."""
    for block in _BLOCKS:
        if width % block == 0:
            return block
    return None


def _blocked_sum(values: Tensor) -> Tensor:
    """The sums of the rows of ``(S, M)`` values, block by block."""
    groups, width = values.shape
    block = _block(width)
    if block is None:
        return values.sum(dim=1)
    return values.reshape(groups, -1, block).sum(dim=-1).sum(dim=-1)


def _blocked_count(indicator: Tensor) -> Tensor:
    """Exact int64 counts of the rows of an ``(S, M)`` boolean: each block's ones summed in the
    float32 of the block, the blocks' counts in float64."""
    groups, width = indicator.shape
    block = _block(width)
    if block is None:
        return count_members(indicator)
    ones = torch.where(indicator, 1.0, 0.0).reshape(groups, -1, block)
    return ones.sum(dim=-1).to(torch.float64).sum(dim=-1).to(torch.int64)
