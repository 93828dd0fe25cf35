"""Values exactly at, and one ulp around, the hit threshold and the detection threshold.

Targets are drawn from the values of their dtype that bracket the threshold (equal to it when it is
representable), one step further out, their negatives, 0, -0 and, in some examples, NaN and
infinities.  Thresholds are any real number, a value of the dtype, or the float64 just below or
above one.  Every class decision is checked against the float64 comparison ``abs(v) > t``, in the
loss (each element's term, the pooled and per-sample losses), in ``class_stats`` (every field), in
``hit_mask``, in ``detection_counts`` and in ``acbmse eval``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eval_reference import (
    assert_close,
    assert_worst_samples,
    reference_report,
    reference_sample_losses,
    reference_summary,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    FLOAT_DTYPES,
    class_stats_reference,
    detection_reference,
    floor_in,
    values_around,
)
from reference import acb_mse as ref_acb_mse

from acbmse_cli import acb_mse_loss, class_stats
from acbmse_cli.cli import main
from acbmse_cli.evaluate import evaluate_files
from acbmse_cli.report import render_csv

try:
    from acbmse_cli import detection_counts, hit_mask
except ImportError:  # not re-exported at the top level
    from acbmse_cli.loss import detection_counts, hit_mask

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
NONFINITE = [math.nan, math.inf, -math.inf]


# --------------------------------------------------------------------------- strategies


def _shape_threshold(real: float, kind: str, dtype: str, signed: bool) -> float:
    if kind == "real":
        return real
    value = floor_in(real, dtype)
    if not math.isfinite(value):
        return real
    if kind == "just below":
        value = float(np.nextafter(value, -np.inf))
    elif kind == "just above":
        value = float(np.nextafter(value, np.inf))
    return value if signed or value >= 0 else real


def thresholds(dtype: str, high: float, *, signed: bool = False) -> st.SearchStrategy[float]:
    """Any real number up to ``high`` in magnitude (more often a moderate one), or a value of
    ``dtype`` near it, or the float64 one ulp below or above that value."""
    low = -high if signed else 0.0
    real = st.one_of(st.floats(max(low, -1e4), min(high, 1e4)), st.floats(low, high))
    kinds = st.sampled_from(["real", "in dtype", "just below", "just above"])
    return st.tuples(real, kinds).map(lambda rk: _shape_threshold(rk[0], rk[1], dtype, signed))


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
weights = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.01, 10.0))


def grid(threshold: float, dtype: str, nonfinite: bool) -> list[float]:
    """Values of ``dtype`` at and around ``threshold``, a few further off, and maybe NaN/Inf."""
    values = [*values_around(threshold, dtype), 0.0, -0.0]
    for far in (3.0 * threshold, threshold / 3.0, -2.0 * threshold):
        values.append(floor_in(far, dtype))
    if nonfinite:
        values += NONFINITE
    else:
        values = [v for v in values if math.isfinite(v)]
    return values


def draw_values(rng: np.random.Generator, values: list[float], shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` drawn from ``values``, holding each of them once at least when it is large
    enough."""
    flat = rng.choice(np.array(values), size=math.prod(shape))
    k = min(flat.size, len(values))
    flat[rng.permutation(flat.size)[:k]] = rng.permutation(np.array(values))[:k]
    return flat.reshape(shape)


def tensor_of(values: np.ndarray, dtype: str) -> torch.Tensor:
    """``values`` (float64) rounded to ``dtype``: exact for values of the dtype."""
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64).to(TORCH_DTYPES[dtype])


def as_float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


@st.composite
def class_cases(
    draw: st.DrawFn, high: float = 1e15, nonfinite: st.SearchStrategy[bool] | None = None
) -> dict[str, Any]:
    """A prediction and a target whose target values sit on the hit threshold (and around it)."""
    tdtype = draw(st.sampled_from(FLOAT_DTYPES))
    pdtype = draw(st.sampled_from([tdtype, *FLOAT_DTYPES]))
    threshold = draw(thresholds(tdtype, high))
    shape = draw(shapes)
    with_nonfinite = draw(st.booleans() if nonfinite is None else nonfinite)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    target = draw_values(rng, grid(threshold, tdtype, with_nonfinite), shape)
    scale = max(1.0, threshold)
    finite_max = float(torch.finfo(TORCH_DTYPES[pdtype]).max)
    with np.errstate(invalid="ignore"):
        pred = target + rng.normal(0.0, scale, size=shape)
        pred = np.where(np.isfinite(pred), np.clip(pred, -finite_max, finite_max), pred)
    if with_nonfinite:
        spots = rng.random(shape) < 0.1
        pred = np.where(spots, rng.choice(np.array(NONFINITE), size=shape), pred)
    x, y = tensor_of(pred, pdtype), tensor_of(target, tdtype)
    assert np.array_equal(as_float64(y), target, equal_nan=True)  # the grid is exact in the dtype
    return {"x": x, "y": y, "threshold": threshold}


def accumulation(x: torch.Tensor, y: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


def rtol_for(x: torch.Tensor, y: torch.Tensor) -> float:
    return 1e-12 if accumulation(x, y) == torch.float64 else 2e-5


def assert_finite_values_close(got: torch.Tensor, want: np.ndarray, rtol: float) -> None:
    """Equal shapes; close where the reference is finite; not finite where it is not."""
    g, w = as_float64(got), np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    finite = np.isfinite(w)
    np.testing.assert_allclose(g[finite], w[finite], rtol=rtol, atol=0)
    assert not np.isfinite(g[~finite]).any(), (g, w)


def assert_same_values(got: torch.Tensor, want: np.ndarray, rtol: float, atol: np.ndarray | float = 0.0):
    """Close, infinities of the same sign, NaN where the reference has NaN."""
    g, w = as_float64(got), np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    # written out: numpy's isclose before 1.25 takes no array atol where some values are not finite
    with np.errstate(invalid="ignore"):
        ok = (g == w) | (np.isnan(g) & np.isnan(w)) | (np.abs(g - w) <= atol + rtol * np.abs(w))
    assert ok.all(), f"got {g[~ok]} where the reference has {w[~ok]}"


# --------------------------------------------------------------------------- the loss


@SETTINGS
@given(case=class_cases(), hit_weight=weights, nonhit_weight=weights)
def test_loss_terms_classify_targets_at_the_threshold(case, hit_weight, nonhit_weight):
    """reduction='none': every element's own term w_c d^2 / n_c shows which class it was put in."""
    x, y, t = case["x"], case["y"], case["threshold"]
    options = {"hit_weight": hit_weight, "nonhit_weight": nonhit_weight, "hit_threshold": t}
    terms = acb_mse_loss(x, y, **options, reduction="none")
    assert terms.dtype == accumulation(x, y)
    with np.errstate(all="ignore"):
        expected = ref_acb_mse(as_float64(x), as_float64(y), **options, reduction="none")
    assert_same_values(terms, expected, rtol_for(x, y))
    loss = acb_mse_loss(x, y, **options)
    with np.errstate(all="ignore"):
        expected_loss = ref_acb_mse(as_float64(x), as_float64(y), **options)
    assert loss.shape == ()
    assert_finite_values_close(loss, expected_loss, rtol_for(x, y))
    if math.isfinite(float(expected_loss)):
        # the terms add up to the loss
        assert math.isclose(float(terms.double().sum()), float(loss), rel_tol=rtol_for(x, y), abs_tol=0.0)


@SETTINGS
@given(
    # a NaN or Inf makes its whole sample's loss NaN or Inf: mostly finite samples here
    case=class_cases(nonfinite=st.sampled_from([False, False, False, True])),
    hit_weight=weights,
    nonhit_weight=weights,
    reduction=st.sampled_from(["mean", "none", "sum"]),
)
def test_per_sample_loss_classifies_targets_at_the_threshold(case, hit_weight, nonhit_weight, reduction):
    x, y, t = case["x"], case["y"], case["threshold"]
    options = {"hit_weight": hit_weight, "nonhit_weight": nonhit_weight, "hit_threshold": t}
    if x.ndim == 0:
        with pytest.raises(ValueError, match="per_sample=True needs a batch dimension"):
            acb_mse_loss(x, y, **options, per_sample=True, reduction=reduction)
        return
    for how in dict.fromkeys(("none", reduction)):  # each sample's loss, and the one asked for
        got = acb_mse_loss(x, y, **options, per_sample=True, reduction=how)
        with np.errstate(all="ignore"):
            expected = ref_acb_mse(as_float64(x), as_float64(y), **options, per_sample=True, reduction=how)
        assert_finite_values_close(got, expected, rtol_for(x, y))


# --------------------------------------------------------------------------- statistics and masks


@SETTINGS
@given(case=class_cases(), per_sample=st.booleans())
def test_class_stats_extended_at_the_threshold(case, per_sample):
    """Every field of the evaluation statistics, NaN and infinities included, per class."""
    x, y, t = case["x"], case["y"], case["threshold"]
    np.testing.assert_array_equal(hit_mask(y, t).numpy(), np.abs(as_float64(y)) > t)
    if per_sample and x.ndim == 0:
        with pytest.raises(ValueError, match="per_sample=True needs a batch dimension"):
            class_stats(x, y, hit_threshold=t, per_sample=True, extended=True)
        return
    stats = class_stats(x, y, hit_threshold=t, per_sample=per_sample, extended=True)
    px, py = as_float64(x), as_float64(y)
    want = class_stats_reference(px, py, hit_threshold=t, per_sample=per_sample)
    # the sums' rounding is relative to the sums of magnitudes (sums of signed values cancel)
    scale = class_stats_reference(np.abs(px), np.abs(py), hit_threshold=t, per_sample=per_sample)
    rtol = rtol_for(x, y)
    assert stats.count.dtype == torch.int64
    np.testing.assert_array_equal(stats.count.numpy(), want["count"])
    for name in ("sse", "sae", "max_abs_error", "sum_target", "sum_input"):
        field = getattr(stats, name)
        assert field is not None and field.dtype == accumulation(x, y), name
        with np.errstate(invalid="ignore"):
            atol = np.where(np.isfinite(scale[name]), rtol * scale[name], 0.0)
        assert_same_values(field, want[name], rtol, atol)
    # the statistics of the loss: the same classes
    plain = class_stats(x, y, hit_threshold=t, per_sample=per_sample)
    np.testing.assert_array_equal(plain.count.numpy(), want["count"])
    # its SSE where the group's errors are finite (non-finite ones: the test below)
    finite_groups = np.isfinite(want["sse"]).all(axis=1)
    assert_same_values(plain.sse[torch.from_numpy(finite_groups)], want["sse"][finite_groups], rtol)
    assert not np.isfinite(as_float64(plain.sse)[~np.isfinite(want["sse"])]).any()


def test_an_infinite_error_does_not_spill_into_the_other_class_of_the_loss():
    """The loss's statistics keep a non-finite error in its own class, as the labelled loss and
    ``class_stats(..., extended=True)`` do: the other class's SSE stays finite, and the loss of a
    class with an infinite error and finite others is inf (not NaN)."""
    x = torch.tensor([[math.inf, 1.0, 2.0, 0.5]])
    y = torch.tensor([[0.0, 0.0, 5.0, 0.0]])
    want = class_stats_reference(as_float64(x), as_float64(y))
    np.testing.assert_array_equal(class_stats(x, y, extended=True).sse.double().numpy(), want["sse"])
    labelled = acb_mse_loss(x, y, labels=(y != 0).long(), class_weights=[1.0, 1.0])
    assert float(labelled) == math.inf == float(ref_acb_mse(as_float64(x), as_float64(y)))
    np.testing.assert_array_equal(class_stats(x, y).sse.double().numpy(), want["sse"])
    assert float(acb_mse_loss(x, y)) == math.inf
    assert float(acb_mse_loss(x, y, per_sample=True, reduction="none")[0]) == math.inf


@st.composite
def detection_cases(draw: st.DrawFn) -> dict[str, Any]:
    """Predictions on the detection threshold, targets on the hit threshold, in any dtypes."""
    pdtype = draw(st.sampled_from(FLOAT_DTYPES))
    tdtype = draw(st.sampled_from(FLOAT_DTYPES))
    threshold = draw(thresholds(tdtype, 1e300))
    detect = draw(thresholds(pdtype, 1e300, signed=True))
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    target = draw_values(rng, grid(threshold, tdtype, nonfinite=True), shape)
    pred = draw_values(rng, grid(detect, pdtype, nonfinite=True), shape)
    return {"x": tensor_of(pred, pdtype), "y": tensor_of(target, tdtype), "t": threshold, "d": detect}


@SETTINGS
@given(case=detection_cases(), per_sample=st.booleans())
def test_detection_counts_at_both_thresholds(case, per_sample):
    x, y, t, d = case["x"], case["y"], case["t"], case["d"]
    per_sample = per_sample and x.ndim > 0
    counts = detection_counts(x, y, hit_threshold=t, detect_threshold=d, per_sample=per_sample)
    want = detection_reference(
        as_float64(x), as_float64(y), hit_threshold=t, detect_threshold=d, per_sample=per_sample
    )
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.numpy(), want)


# --------------------------------------------------------------------------- acbmse eval


EVAL_DTYPES = ("float16", "bfloat16", "float32", "float64")  # bfloat16 as a .pt file


def save_array(folder: Path, name: str, tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bfloat16:
        path = folder / f"{name}.pt"
        torch.save(tensor, path)
    else:
        path = folder / f"{name}.npy"
        np.save(path, tensor.numpy())
    return str(path)


@st.composite
def eval_cases(draw: st.DrawFn) -> dict[str, Any]:
    pdtype = draw(st.sampled_from(EVAL_DTYPES))
    tdtype = draw(st.sampled_from(EVAL_DTYPES))
    threshold = draw(thresholds(tdtype, 1e6))
    detect = draw(thresholds(pdtype, 1e6, signed=True))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
    nonfinite = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    target = draw_values(rng, grid(threshold, tdtype, nonfinite), shape)
    pred = draw_values(rng, grid(detect, pdtype, nonfinite), shape)
    noise = rng.random(shape) < 0.3  # and some predictions off the grid
    pred = np.where(noise, pred + rng.normal(0.0, max(1.0, abs(detect)), size=shape), pred)
    finite_max = float(torch.finfo(TORCH_DTYPES[pdtype]).max)
    with np.errstate(invalid="ignore"):
        pred = np.where(np.isfinite(pred), np.clip(pred, -finite_max, finite_max), pred)
    x, y = tensor_of(pred, pdtype), tensor_of(target, tdtype)
    nan_policy = "omit" if nonfinite else draw(st.sampled_from(["raise", "omit"]))
    per_sample = len(shape) > 0 and draw(st.booleans())
    return {
        "x": x,
        "y": y,
        "t": threshold,
        "d": detect,
        "weights": (draw(weights), draw(weights)),  # (B, A)
        "nan_policy": nan_policy,
        "top": draw(st.integers(1, 5)) if per_sample else None,
        "chunk": draw(st.one_of(st.none(), st.integers(1, 20))),
    }


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(args)
    code = info.value.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=eval_cases())
def test_eval_at_the_thresholds(case):
    """``acbmse eval --format json`` and the library's result, every field, against the reference."""
    x, y, t, d = case["x"], case["y"], case["t"], case["d"]
    b, a = case["weights"]
    px, py = as_float64(x), as_float64(y)
    omit = case["nan_policy"] == "omit"
    with tempfile.TemporaryDirectory() as folder:
        p_path, t_path = save_array(Path(folder), "p", x), save_array(Path(folder), "t", y)
        args = ["eval", p_path, t_path, "--format", "json", "--device", "cpu", "--hit-threshold", repr(t),
                "--detect-threshold", repr(d), "--nonhit-weight", repr(b), "--hit-weight", repr(a),
                "--nan-policy", case["nan_policy"]]  # fmt: skip
        if case["top"] is not None:
            args += ["--per-sample", "--top", str(case["top"])]
        if case["chunk"] is not None:
            args += ["--chunk-elements", str(case["chunk"])]
        code, out, err = run_cli(args)
        options: dict[str, Any] = dict(
            hit_threshold=t, hit_weight=a, nonhit_weight=b, detect_threshold=d, nan_policy=case["nan_policy"],
            per_sample=case["top"] is not None, top=case["top"], chunk_elements=case["chunk"],
        )  # fmt: skip
        result = evaluate_files(p_path, t_path, **options) if code == 0 else None
    kept = int((np.isfinite(px) & np.isfinite(py)).sum())
    if omit and kept == 0:
        assert code == 2 and out == "" and "nothing left to score" in err
        return
    assert code == 0, err
    omitted = px.size - kept
    assert err == (
        f"acbmse: left out {omitted} elements with NaN or Inf (--nan-policy omit)\n" if omitted else ""
    )
    scored = np.isfinite(px) & np.isfinite(py)
    magnitude = max([1.0, *np.abs(px[scored]), *np.abs(py[scored])])
    tol = {"rel": 1e-9, "abs_": 1e-12 * magnitude}  # sums of signed values cancel
    expected = reference_report(
        px, py, hit_threshold=t, weights=(b, a), omit_nonfinite=omit, detect_threshold=d, top=case["top"],
        paths=(p_path, t_path),
    )  # fmt: skip
    got = json.loads(out)
    assert list(got) == [*expected, "run"]
    if case["top"] is not None:
        losses = reference_sample_losses(px, py, hit_threshold=t, weights=(b, a), omit_nonfinite=omit)
        assert_worst_samples(got.pop("worst_samples"), losses, case["top"], ("non-hit", "hit"), **tol)
        del expected["worst_samples"]
    assert_close(got, expected, **tol)

    # the overall line, which only the table and the CSV show
    assert result is not None
    summary = reference_summary(px, py, hit_threshold=t, weights=(b, a), omit_nonfinite=omit)
    for name in ("elements", "mse", "mae", "max_abs_error", "mean_target", "mean_pred", "acb_mse"):
        assert_close(getattr(result, name), summary[name], f"$.{name}", **tol)
    assert result.omitted == (omitted if omit else None)
    rows = list(csv.reader(io.StringIO(render_csv(result).split("\n\n")[0])))
    overall = dict(zip(rows[0], rows[-1], strict=True))
    assert overall["name"] == "overall" and int(overall["count"]) == summary["elements"]
    for name in ("fraction", "mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred"):
        assert_close(float(overall[name]), summary[name], f"csv overall {name}", **tol)
    assert_close(float(overall["contribution"]), summary["acb_mse"], "csv overall contribution", **tol)
