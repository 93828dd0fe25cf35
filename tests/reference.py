"""An independent float64 numpy reference of ACB-MSE, written from the formula alone.

    loss = sum over classes c of w_c * mean over the elements of c of (target - input)^2

It shares no code with the package: tests compare the package against it.
"""

from __future__ import annotations

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
