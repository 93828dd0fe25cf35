"""The compiled CPU pass (``acbmse_cli/_native.c``): the class sums and detection bins of a chunk,
each element read once.

:func:`class_sums` and :func:`bins_adder` take CPU tensors and give what the torch code of
:mod:`acbmse_cli.stats` and :mod:`acbmse_cli.histograms` computes, in one pass instead of many; those
modules call them where they apply (CPU tensors, no autograd, float64 sums) and keep torch
everywhere else (GPU, training).  Where the extension was not built (no C compiler at install
time), or ``ACBMSE_NATIVE=0`` is set, :data:`ENABLED` is False and torch does everything.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_native: Any = None
with contextlib.suppress(ImportError):  # else installed without a C compiler
    _native = importlib.import_module("acbmse_cli._native")

ENABLED = _native is not None and os.environ.get("ACBMSE_NATIVE", "1") != "0"
"""Whether the statistics of CPU tensors take the compiled pass."""

_WIDTHS = (torch.float32, torch.float64)


def applies(*tensors: Tensor | None) -> bool:
    """Whether the compiled pass can take these tensors: all on the CPU, none needing a gradient, and
    not while ``torch.compile`` traces (it cannot trace into the extension)."""
    return (
        ENABLED
        and not torch.compiler.is_compiling()
        and all(
            t is None or (t.device.type == "cpu" and not (t.requires_grad and torch.is_grad_enabled()))
            for t in tensors
        )
    )


def _values(v: Tensor) -> Any:
    """A C-contiguous float32 or float64 array of exactly ``v``'s values (``v`` itself where it is one)."""
    if v.dtype not in _WIDTHS:
        small = v.dtype in (torch.float16, torch.bfloat16, torch.bool) or (
            not v.is_floating_point() and v.element_size() <= 2
        )
        v = v.to(torch.float32 if small else torch.float64)
    return v.detach().contiguous().numpy()


def _bytes(mask: Tensor | None) -> Any:
    return None if mask is None else mask.contiguous().view(torch.uint8).numpy()


def class_sums(
    x: Tensor,
    y: Tensor,
    *,
    hit_threshold: float,
    labels: Tensor | None,
    num_classes: int,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """The class sums of ``(S, M)`` views: ``count`` ``(S, K)`` int64, ``sums`` ``(S, K, 4)`` float64
    (squared error, absolute error, target, prediction), ``largest`` ``(S, K)`` float64 (the largest
    absolute error; NaN in a class with a NaN error), and how many kept elements have a label
    outside ``[0, K)`` (in no class)."""
    groups = x.shape[0]
    k = num_classes if labels is not None else 2
    count = torch.empty(groups, k, dtype=torch.int64)
    sums = torch.empty(groups, k, 4, dtype=torch.float64)
    largest = torch.empty(groups, k, dtype=torch.float64)
    if x.numel() == 0:
        return count.zero_(), sums.zero_(), largest.zero_(), 0
    lab = None if labels is None else labels.to(torch.int64).contiguous().numpy()
    outside = _native.class_sums(
        _values(x), _values(y), lab, _bytes(mask), float(hit_threshold), groups,
        count.numpy(), sums.numpy(), largest.numpy(),
    )  # fmt: skip
    return count, sums, largest, int(outside)


def bins_adder(
    x: Tensor,
    y: Tensor,
    edges: Tensor,
    *,
    linear: tuple[float, float, float] | None,
    hit_threshold: float,
    noisy: Tensor | None,
    mask: Tensor | None,
    into: tuple[Tensor, Tensor, Tensor | None],
) -> Callable[[], None]:
    """The detection bin counts ``(G + 1,)`` of the hits, non-hits and (with ``noisy``) noise hits,
    added into the int64 counts ``into`` when the returned function is called: the arguments
    are made ready here, and the call itself runs without the GIL, so a second thread calling
    it holds the GIL for next to no time.

    ``edges``: the ``G`` thresholds rounded down into the dtype that ``x`` is binned in (+inf
    appended for an evenly spaced grid); ``linear``: ``(inverse_step, low, high)``, the offsets
    of the two arithmetic guesses of such a grid (the count or one less, the count or one
    more), None for a binary search.
    """
    if not x.numel():
        return lambda: None
    inverse_step, low, high = linear if linear is not None else (0.0, 0.0, 0.0)
    hits, nonhits, noise = into
    return functools.partial(
        _native.detection_bins,
        _values(x.reshape(-1)), _values(y.reshape(-1)),
        None if noisy is None else _values(noisy.reshape(-1)),
        _bytes(None if mask is None else mask.reshape(-1)),
        float(hit_threshold), edges.to(torch.float64).contiguous().numpy(), linear is not None,
        inverse_step, low, high, hits.numpy(), nonhits.numpy(), None if noise is None else noise.numpy(),
    )  # fmt: skip
