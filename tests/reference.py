"""An independent float64 numpy reference of ACB-MSE, written from the formula alone.

    loss = sum over classes c of w_c * mean over the elements of c of (target - input)^2

It shares no code with the package: tests compare the package against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def default_labels(target: np.ndarray, hit_threshold: float = 0.0) -> np.ndarray:
    """0 for non-hits, 1 for hits (|target| > hit_threshold), compared in float64."""
    return (np.abs(np.asarray(target, dtype=np.float64)) > hit_threshold).astype(np.int64)


def balanced(pred: np.ndarray, target: np.ndarray, labels: np.ndarray, weights: Sequence[float]) -> float:
    """The balanced loss of one group of elements."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    target = np.asarray(target, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    total = 0.0
    for c, w in enumerate(weights):
        members = labels == c
        if members.any():
            total += w * float(np.mean((target[members] - pred[members]) ** 2))
    return total


def acb_mse(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_weight: float = 1.0,
    nonhit_weight: float = 1.0,
    hit_threshold: float = 0.0,
    labels: np.ndarray | None = None,
    class_weights: Sequence[float] | None = None,
    per_sample: bool = False,
    reduction: str = "mean",
) -> np.ndarray:
    """ACB-MSE in float64, with the package's options."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if labels is None:
        labels = default_labels(target, hit_threshold)
        weights: Sequence[float] = (nonhit_weight, hit_weight)
    else:
        assert class_weights is not None
        weights = class_weights
    if per_sample:
        losses = np.array(
            [balanced(pred[i], target[i], labels[i], weights) for i in range(pred.shape[0])], dtype=np.float64
        )
        if reduction == "none":
            return losses
        if reduction == "sum":
            return np.asarray(losses.sum())
        return np.asarray(losses.mean() if losses.size else 0.0)
    if reduction == "none":
        out = np.zeros_like(pred)
        for c, w in enumerate(weights):
            members = labels == c
            n = int(members.sum())
            if n:
                out[members] = w * (target[members] - pred[members]) ** 2 / n
        return out
    return np.asarray(balanced(pred, target, labels, weights))


def acb_mse_grad(
    pred: np.ndarray, target: np.ndarray, labels: np.ndarray, weights: Sequence[float]
) -> np.ndarray:
    """d loss / d pred for pooled classes: 2 w_c (pred - target) / n_c."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    grad = np.zeros_like(pred)
    for c, w in enumerate(weights):
        members = labels == c
        n = int(members.sum())
        if n:
            grad[members] = 2.0 * w * (pred[members] - target[members]) / n
    return grad


# ----------------------------------------------------------------- exact sums and class statistics


def exact_sum(values: np.ndarray) -> float:
    """The exactly rounded sum of float64 values, NaN and infinities as IEEE arithmetic has them."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(flat).any() or (np.isposinf(flat).any() and np.isneginf(flat).any()):
        return math.nan
    if np.isinf(flat).any():
        return float(flat[np.isinf(flat)][0])
    return math.fsum(flat.tolist())


def _groups(array: np.ndarray, per_sample: bool) -> np.ndarray:
    """``(S, M)``: one row per sample (dim 0) with ``per_sample``, else one row of everything."""
    array = np.asarray(array, dtype=np.float64)
    if per_sample:
        return array.reshape(array.shape[0], math.prod(array.shape[1:]))
    return array.reshape(1, array.size)


def class_stats_reference(
    pred: np.ndarray, target: np.ndarray, *, hit_threshold: float = 0.0, per_sample: bool = False
) -> dict[str, np.ndarray]:
    """Every field of ``class_stats(..., extended=True)`` for the two default classes, shape ``(S, 2)``.

    Class 1 (hit) is ``|target| > hit_threshold`` compared in float64; NaN targets are non-hits.
    """
    p, t = _groups(pred, per_sample), _groups(target, per_sample)
    groups = p.shape[0]
    out = {
        "count": np.zeros((groups, 2), dtype=np.int64),
        **{k: np.zeros((groups, 2)) for k in ("sse", "sae", "max_abs_error", "sum_target", "sum_input")},
    }
    with np.errstate(all="ignore"):
        for s in range(groups):
            hit = np.abs(t[s]) > hit_threshold
            for c, members in enumerate((~hit, hit)):
                d = p[s][members] - t[s][members]
                out["count"][s, c] = int(members.sum())
                out["sse"][s, c] = exact_sum(d * d)
                out["sae"][s, c] = exact_sum(np.abs(d))
                out["max_abs_error"][s, c] = float(np.max(np.abs(d))) if d.size else 0.0
                out["sum_target"][s, c] = exact_sum(t[s][members])
                out["sum_input"][s, c] = exact_sum(p[s][members])
    return out


def detection_reference(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_threshold: float = 0.0,
    detect_threshold: float,
    per_sample: bool = False,
) -> np.ndarray:
    """``[tp, fp, fn]`` of the detector ``pred > detect_threshold`` against ``|target| > hit_threshold``,
    compared in float64, per group: shape ``(S, 3)``."""
    p, t = _groups(pred, per_sample), _groups(target, per_sample)
    found, truth = p > detect_threshold, np.abs(t) > hit_threshold
    return np.stack(
        [(found & truth).sum(axis=1), (found & ~truth).sum(axis=1), (~found & truth).sum(axis=1)], axis=1
    ).astype(np.int64)


# ----------------------------------------------------------------- representable values next to a threshold

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _bfloat16_bits(value: float) -> int:
    """The 16 bits of a bfloat16 value (given as a float that bfloat16 represents exactly)."""
    bits = int(np.array(value, dtype=np.float32).view(np.uint32))
    assert bits & 0xFFFF == 0, f"{value!r} is not a bfloat16 value"
    return bits >> 16


def _bfloat16_value(bits: int) -> float:
    return float(np.array(bits << 16, dtype=np.uint32).view(np.float32))


def next_up(value: float, dtype: str) -> float:
    """The next value of ``dtype`` above ``value`` (a value of ``dtype``), as numpy's nextafter does."""
    if dtype != "bfloat16":
        kind = np.dtype(dtype).type
        with np.errstate(over="ignore"):
            return float(np.nextafter(kind(value), kind(np.inf)))
    if math.isnan(value) or value == math.inf:
        return value
    if value == 0.0:
        return _bfloat16_value(1)
    bits = _bfloat16_bits(value)
    return _bfloat16_value(bits + 1 if value > 0 else bits - 1)


def next_down(value: float, dtype: str) -> float:
    """The next value of ``dtype`` below ``value``."""
    return -next_up(-value, dtype)


def floor_in(threshold: float, dtype: str) -> float:
    """The largest value of ``dtype`` (perhaps -inf) at or below the float64 ``threshold``."""
    with np.errstate(over="ignore"):
        value = (
            float(np.float32(threshold)) if dtype == "bfloat16" else float(np.dtype(dtype).type(threshold))
        )
    if dtype == "bfloat16" and math.isfinite(value):
        value = _bfloat16_value(int(np.array(value, dtype=np.float32).view(np.uint32)) >> 16)  # toward 0
    while value > threshold:
        value = next_down(value, dtype)
    while next_up(value, dtype) <= threshold:
        value = next_up(value, dtype)
    return value


def values_around(threshold: float, dtype: str) -> list[float]:
    """Values of ``dtype`` at and one ulp around ``threshold``: the two that bracket it (equal when it is
    representable), one step further out on each side, and the same negated."""
    low = floor_in(threshold, dtype)
    high = low if low == threshold else next_up(low, dtype)
    near = [next_down(low, dtype), low, high, next_up(high, dtype)]
    return near + [-v for v in near]
