"""An independent float64 numpy reference for ``acbmse eval``, for the tests.

Written from the definitions (per-class mean of squared error, weighted and
added), with exactly rounded sums (:func:`math.fsum`); it shares no code with
the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _fsum(values: np.ndarray) -> float:
    return math.fsum(values.tolist())


def reference_report(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    omit_nonfinite: bool = False,
) -> dict[str, Any]:
    """The JSON document ``acbmse eval`` should print (without ``pred``/``target`` paths)."""
    p = np.asarray(pred).astype(np.float64).ravel()
    t = np.asarray(target).astype(np.float64).ravel()
    if labels is None:
        cls = (np.abs(t) > hit_threshold).astype(np.int64)
        names = names or ("non-hit", "hit")
    else:
        cls = np.asarray(labels).astype(np.int64).ravel()
        names = names or tuple(f"class {c}" for c in range(len(weights)))
    if omit_nonfinite:
        keep = np.isfinite(p) & np.isfinite(t)
        p, t, cls = p[keep], t[keep], cls[keep]
    d = p - t
    n_all = p.size
    classes = []
    for c, (name, w) in enumerate(zip(names, weights, strict=True)):
        m = cls == c
        n = int(m.sum())
        if n == 0:
            classes.append(
                dict(name=name, count=0, fraction=0.0 if n_all else None, mse=None, rmse=None, mae=None,
                     max_abs_error=None, mean_target=None, mean_pred=None, weight=float(w), contribution=0.0)
            )  # fmt: skip
            continue
        dc = d[m]
        mse = _fsum(dc * dc) / n
        classes.append(
            dict(
                name=name,
                count=n,
                fraction=n / n_all,
                mse=mse,
                rmse=math.sqrt(mse),
                mae=_fsum(np.abs(dc)) / n,
                max_abs_error=float(np.abs(dc).max()),
                mean_target=_fsum(t[m]) / n,
                mean_pred=_fsum(p[m]) / n,
                weight=float(w),
                contribution=float(w) * mse,
            )
        )
    return {
        "elements": n_all,
        "classes": classes,
        "mse": _fsum(d * d) / n_all if n_all else None,
        "mae": _fsum(np.abs(d)) / n_all if n_all else None,
        "acb_mse": math.fsum(c["contribution"] for c in classes),
    }


def reference_worst(
    pred: np.ndarray,
    target: np.ndarray,
    k: int,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
) -> list[tuple[int, float, list[float | None]]]:
    """The k samples (dim 0) with the largest ACB-MSE, ties to the lower index: (index, loss, class MSEs)."""
    rows = []
    for i in range(pred.shape[0]):
        p = np.asarray(pred[i]).astype(np.float64).ravel()
        t = np.asarray(target[i]).astype(np.float64).ravel()
        cls = (
            (np.abs(t) > hit_threshold).astype(np.int64)
            if labels is None
            else labels[i].astype(np.int64).ravel()
        )
        mses: list[float | None] = []
        for c in range(len(weights)):
            m = cls == c
            n = int(m.sum())
            mses.append(_fsum((p[m] - t[m]) ** 2) / n if n else None)
        loss = math.fsum(w * m for w, m in zip(weights, mses, strict=True) if m is not None)
        rows.append((i, loss, mses))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows[:k]


def reference_detection(
    pred: np.ndarray, target: np.ndarray, detect: float, hit_threshold: float = 0.0
) -> dict:
    p = np.asarray(pred).astype(np.float64).ravel()
    t = np.asarray(target).astype(np.float64).ravel()
    found, truth = p > detect, np.abs(t) > hit_threshold
    tp, fp, fn = int((found & truth).sum()), int((found & ~truth).sum()), int((~found & truth).sum())
    return {
        "threshold": detect,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "recall": tp / (tp + fn) if tp + fn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    }


def assert_close(got: Any, expected: Any, path: str = "$", rel: float = 1e-9, abs_: float = 1e-12) -> None:
    """Equal structure; ints, strings and nulls equal; floats within ``rel`` (and ``abs_`` near 0)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{path}: {got!r} is not an object"
        assert set(got) >= set(expected), f"{path}: missing keys {set(expected) - set(got)}"
        for key, value in expected.items():
            assert_close(got[key], value, f"{path}.{key}", rel, abs_)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), (
            f"{path}: {got!r} vs {expected!r}"
        )
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{path}[{i}]", rel, abs_)
    elif isinstance(expected, float):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{path}: {got!r} is not a number"
        assert math.isclose(got, expected, rel_tol=rel, abs_tol=abs_), f"{path}: {got!r} != {expected!r}"
    else:
        assert got == expected and type(got) is type(expected), f"{path}: {got!r} != {expected!r}"
