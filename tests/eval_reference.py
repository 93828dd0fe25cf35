"""An independent float64 numpy reference for ``acbmse eval``, for the tests.

Written from the definitions (per-class mean of squared error, weighted and
added), with exactly rounded sums (:func:`math.fsum`); it shares no code with
the package.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from acbmse_cli import __version__


def _fsum(values: np.ndarray) -> float:
    return math.fsum(values.tolist())


def _kept(
    pred: np.ndarray, target: np.ndarray, omit_nonfinite: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values as float64, flat, and which of them are scored (all, or the finite pairs)."""
    p = np.asarray(pred).astype(np.float64).ravel()
    t = np.asarray(target).astype(np.float64).ravel()
    keep = np.isfinite(p) & np.isfinite(t) if omit_nonfinite else np.ones(p.shape, dtype=bool)
    return p, t, keep


def _classes_of(target: np.ndarray, hit_threshold: float, labels: np.ndarray | None) -> np.ndarray:
    if labels is None:
        return (np.abs(np.asarray(target).astype(np.float64).ravel()) > hit_threshold).astype(np.int64)
    return np.asarray(labels).astype(np.int64).ravel()


def reference_report(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    omit_nonfinite: bool = False,
    detect_threshold: float | None = None,
    top: int | None = None,
    paths: tuple[object, object] | None = None,
) -> dict[str, Any]:
    """The JSON document ``acbmse eval`` should print, key for key.

    ``paths``: the PRED and TARGET arguments (the ``pred``/``target`` keys); ``omit_nonfinite``:
    ``--nan-policy omit`` (the ``omitted`` key); ``detect_threshold``: ``--detect-threshold`` (the
    ``detection`` object); ``top``: ``--per-sample --top`` (the ``worst_samples`` list).
    """
    if names is None:
        names = ("non-hit", "hit") if labels is None else tuple(f"class {c}" for c in range(len(weights)))
    p, t, keep = _kept(pred, target, omit_nonfinite)
    cls = _classes_of(target, hit_threshold, labels)[keep]
    p, t = p[keep], t[keep]
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
    doc: dict[str, Any] = {}
    if paths is not None:
        doc["pred"], doc["target"] = str(paths[0]), str(paths[1])
    doc.update(
        elements=n_all,
        classes=classes,
        mse=_fsum(d * d) / n_all if n_all else None,
        mae=_fsum(np.abs(d)) / n_all if n_all else None,
        acb_mse=math.fsum(c["contribution"] for c in classes),
    )
    if omit_nonfinite:
        doc["omitted"] = int((~keep).sum())
    if detect_threshold is not None:
        doc["detection"] = reference_detection(
            pred, target, detect_threshold, hit_threshold, omit_nonfinite=omit_nonfinite
        )
    if top is not None:
        doc["worst_samples"] = [
            {"index": i, "acb_mse": loss, "class_mse": dict(zip(names, mses, strict=True))}
            for i, loss, mses in reference_worst(
                pred, target, top, hit_threshold=hit_threshold, weights=weights, labels=labels,
                omit_nonfinite=omit_nonfinite,
            )
        ]  # fmt: skip
    return doc


def reference_summary(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    omit_nonfinite: bool = False,
) -> dict[str, Any]:
    """The overall line of the report (the CSV's ``overall`` row, the table's, :class:`EvalResult`'s
    own fields): every element scored, whatever its class; ``acb_mse`` in the contribution column."""
    p, t, keep = _kept(pred, target, omit_nonfinite)
    p, t = p[keep], t[keep]
    d = p - t
    n = p.size
    mse = _fsum(d * d) / n if n else None
    return {
        "elements": n,
        "fraction": 1.0 if n else None,
        "mse": mse,
        "rmse": None if mse is None else math.sqrt(mse),
        "mae": _fsum(np.abs(d)) / n if n else None,
        "max_abs_error": float(np.abs(d).max()) if n else None,
        "mean_target": _fsum(t) / n if n else None,
        "mean_pred": _fsum(p) / n if n else None,
        "acb_mse": reference_report(
            pred, target, hit_threshold=hit_threshold, weights=weights, labels=labels,
            omit_nonfinite=omit_nonfinite,
        )["acb_mse"],
    }  # fmt: skip


def reference_sample_losses(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    omit_nonfinite: bool = False,
) -> list[tuple[float, list[float | None]]]:
    """Every sample's (dim 0) ACB-MSE and per-class MSE (None: no element), in sample order."""
    rows: list[tuple[float, list[float | None]]] = []
    for i in range(pred.shape[0]):
        p, t, keep = _kept(pred[i], target[i], omit_nonfinite)
        cls = _classes_of(target[i], hit_threshold, None if labels is None else labels[i])[keep]
        p, t = p[keep], t[keep]
        mses: list[float | None] = []
        for c in range(len(weights)):
            m = cls == c
            n = int(m.sum())
            mses.append(_fsum((p[m] - t[m]) ** 2) / n if n else None)
        loss = math.fsum(w * m for w, m in zip(weights, mses, strict=True) if m is not None)
        rows.append((loss, mses))
    return rows


def reference_worst(
    pred: np.ndarray,
    target: np.ndarray,
    k: int,
    *,
    hit_threshold: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    omit_nonfinite: bool = False,
) -> list[tuple[int, float, list[float | None]]]:
    """The k samples (dim 0) with the largest ACB-MSE, ties to the lower index: (index, loss, class MSEs)."""
    losses = reference_sample_losses(
        pred, target, hit_threshold=hit_threshold, weights=weights, labels=labels,
        omit_nonfinite=omit_nonfinite,
    )  # fmt: skip
    rows = [(i, loss, mses) for i, (loss, mses) in enumerate(losses)]
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows[:k]


def reference_detection(
    pred: np.ndarray,
    target: np.ndarray,
    detect: float,
    hit_threshold: float = 0.0,
    *,
    omit_nonfinite: bool = False,
) -> dict[str, Any]:
    """The ``detection`` object: "pred > detect" against the hits, over the elements scored."""
    p, t, keep = _kept(pred, target, omit_nonfinite)
    p, t = p[keep], t[keep]
    found, truth = p > detect, np.abs(t) > hit_threshold
    tp, fp, fn = int((found & truth).sum()), int((found & ~truth).sum()), int((~found & truth).sum())
    return {
        "threshold": float(detect),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "recall": tp / (tp + fn) if tp + fn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    }


def assert_worst_samples(
    got: list[dict[str, Any]],
    expected_losses: list[tuple[float, list[float | None]]],
    k: int,
    names: Sequence[str],
    rel: float = 1e-9,
    abs_: float = 1e-12,
) -> None:
    """``worst_samples`` against every sample's reference loss, allowing for near-ties.

    Each listed sample has its own reference loss and class MSEs; the list is the ``k`` largest
    losses in descending order (equal reported losses: the lower index first); no sample left out
    has a loss clearly above one listed.  Samples whose losses agree to within rounding may come
    in either order, as the package and the reference sum in different orders.
    """
    assert len(got) == min(k, len(expected_losses)), f"{len(got)} worst samples, wanted {k}"
    indices = [s["index"] for s in got]
    assert len(set(indices)) == len(indices), f"a sample listed twice: {indices}"
    for s in got:
        loss, mses = expected_losses[s["index"]]
        assert_close(
            s,
            {"index": s["index"], "acb_mse": loss, "class_mse": dict(zip(names, mses, strict=True))},
            f"$.worst_samples[index {s['index']}]", rel, abs_,
        )  # fmt: skip

    def clearly_above(a: float, b: float) -> bool:
        return a > b and not math.isclose(a, b, rel_tol=rel, abs_tol=abs_)

    for first, second in itertools.pairwise(got):
        a, b = expected_losses[first["index"]][0], expected_losses[second["index"]][0]
        assert not clearly_above(b, a), f"sample {second['index']} ({b!r}) ranked below {first['index']}"
        if first["acb_mse"] == second["acb_mse"]:
            assert first["index"] < second["index"], f"tie not broken by the lower index: {indices}"
    if got:
        lowest = min(expected_losses[i][0] for i in indices)
        for j in set(range(len(expected_losses))) - set(indices):
            loss = expected_losses[j][0]
            assert not clearly_above(loss, lowest), f"sample {j} ({loss!r}) is worse than one listed"


def assert_close(got: Any, expected: Any, path: str = "$", rel: float = 1e-9, abs_: float = 1e-12) -> None:
    """Equal structure (the same keys, the same lengths); ints, strings and nulls equal; floats within
    ``rel`` (and ``abs_`` near 0)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"{path}: {got!r} is not an object"
        if path == "$" and "run" in got and "run" not in expected:
            # the record of how the report was made; its options are checked in test_cli_conventions
            assert got["run"]["version"] == __version__, f"$.run: {got['run']!r}"
            got = {key: value for key, value in got.items() if key != "run"}
        assert set(got) == set(expected), (
            f"{path}: missing keys {set(expected) - set(got)}, unexpected keys {set(got) - set(expected)}"
        )
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
