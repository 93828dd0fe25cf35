"""A prototype, not used by the package: every per-class statistic of an eval chunk in one pass
over its elements, compiled with numba (CPU).  Measured in fused_chunk_bench.py and, wired into
``_ChunkComputer``, on branch ``fused-integrated`` (see fused_results.md).

Each element is read once and adds, in float64, to its class's count, its sums of squared
error, absolute error, target and prediction, and its largest absolute error.  An element
adds to its own class only, so a NaN or Inf stays in its class, as with boolean masks.

The compiled code is cached (``cache=True``): next to this file where that folder is
writable, else in the user's cache folder (numba's own fallback), or in ``NUMBA_CACHE_DIR``
where that is set; a run compiles only when no cached copy matches.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic

from acbmse_cli.stats import ClassStats

__all__ = ["fused_class_stats"]

#: Reassociation lets the sums run in vector lanes; NaN and Inf keep their IEEE meaning.
_FLAGS = {"reassoc"}


def _bits_of_float(typingctx: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


#: The bits of a float64 as an int64: for values >= 0 (and NaN) they order as the values, and
#: an integer maximum runs in vector lanes where a float one (NaN-aware) does not.
_bits: Any = intrinsic(_bits_of_float)


@numba.njit(cache=True, fastmath=_FLAGS, nogil=True)
def _hit_group(
    x: np.ndarray, y: np.ndarray, s: int, threshold: float, sums: np.ndarray, largest: np.ndarray
) -> int:
    """Row ``s`` in the classes non-hit (0) and hit (1): adds to ``sums[s]`` (2, 4), sets the bits
    of ``largest[s]`` (2,); returns the hits."""
    hits = 0
    q0 = q1 = a0 = a1 = t0 = t1 = p0 = p1 = 0.0
    m0 = m1 = np.int64(0)
    for i in range(x.shape[1]):
        xv = np.float64(x[s, i])
        yv = np.float64(y[s, i])
        d = xv - yv
        e = abs(d)
        q = d * d
        h = abs(yv) > threshold
        hits += np.int64(h)
        q1 += q if h else 0.0
        q0 += 0.0 if h else q
        a1 += e if h else 0.0
        a0 += 0.0 if h else e
        t1 += yv if h else 0.0
        t0 += 0.0 if h else yv
        p1 += xv if h else 0.0
        p0 += 0.0 if h else xv
        b = _bits(e)
        b1 = b if h else np.int64(0)
        b0 = np.int64(0) if h else b
        m1 = b1 if b1 > m1 else m1
        m0 = b0 if b0 > m0 else m0
    sums[s, 0, 0], sums[s, 0, 1], sums[s, 0, 2], sums[s, 0, 3] = q0, a0, t0, p0
    sums[s, 1, 0], sums[s, 1, 1], sums[s, 1, 2], sums[s, 1, 3] = q1, a1, t1, p1
    largest[s, 0], largest[s, 1] = m0, m1
    return hits


@numba.njit(cache=True, fastmath=_FLAGS, nogil=True)
def _hit_stats(
    x: np.ndarray, y: np.ndarray, threshold: float, count: np.ndarray, sums: np.ndarray, largest: np.ndarray
) -> None:
    """Groups ``(S, M)`` in the two default classes: ``count`` ``(S, 2)``, ``sums`` ``(S, 2, 4)``,
    ``largest`` ``(S, 2)`` (int64 bits of the float64 maxima)."""
    for s in range(x.shape[0]):
        hits = _hit_group(x, y, s, threshold, sums, largest)
        count[s, 1] = hits
        count[s, 0] = x.shape[1] - hits


@numba.njit(cache=True, fastmath=_FLAGS, nogil=True)
def _label_stats(
    x: np.ndarray, y: np.ndarray, labels: np.ndarray, count: np.ndarray, sums: np.ndarray, largest: np.ndarray
) -> None:
    """Groups ``(S, M)`` in the classes of ``labels``; a label outside ``[0, K)`` is in none."""
    k = count.shape[1]
    for s in range(x.shape[0]):
        for i in range(x.shape[1]):
            c = np.int64(labels[s, i])
            if c < 0 or c >= k:
                continue
            xv = np.float64(x[s, i])
            yv = np.float64(y[s, i])
            d = xv - yv
            e = abs(d)
            count[s, c] += 1
            sums[s, c, 0] += d * d
            sums[s, c, 1] += e
            sums[s, c, 2] += yv
            sums[s, c, 3] += xv
            b = _bits(e)
            if b > largest[s, c]:
                largest[s, c] = b


def _kernel_values(v: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 or float64 array holding exactly the values of ``v``."""
    if v.dtype not in (torch.float32, torch.float64):
        exact_in_float32 = v.dtype in (torch.float16, torch.bfloat16, torch.bool) or (
            not v.is_floating_point() and v.element_size() <= 2
        )
        v = v.to(torch.float32 if exact_in_float32 else torch.float64)
    return np.ascontiguousarray(v.numpy())


def fused_class_stats(
    x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None, num_classes: int, hit_threshold: float
) -> ClassStats:
    """Extended float64 :class:`ClassStats` of the ``(S, M)`` CPU views ``x`` (prediction) and
    ``y`` (target): classes from ``labels`` (``K = num_classes``), else hit ``|y| > hit_threshold``.

    Raises:
        ValueError: a label outside ``[0, K)``.
    """
    groups = x.shape[0]
    k = num_classes if labels is not None else 2
    count = np.zeros((groups, k), dtype=np.int64)
    sums = np.zeros((groups, k, 4), dtype=np.float64)
    largest = np.zeros((groups, k), dtype=np.int64)
    xs, ys = _kernel_values(x), _kernel_values(y)
    if labels is None:
        _hit_stats(xs, ys, float(hit_threshold), count, sums, largest)
    else:
        _label_stats(xs, ys, np.ascontiguousarray(labels.numpy()), count, sums, largest)
        if int(count.sum()) != labels.numel():
            raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class_weights")
    total = torch.from_numpy(sums)
    return ClassStats(
        count=torch.from_numpy(count),
        sse=total[..., 0],
        sae=total[..., 1],
        max_abs_error=torch.from_numpy(largest.view(np.float64)),
        sum_target=total[..., 2],
        sum_input=total[..., 3],
    )
