"""The compiled CPU pass (acbmse_cli/_native.c) against a float64 numpy reference written here, and
against the torch code that computes the same statistics where the pass does not apply (GPU).

The class sums are compared with exact sums (``math.fsum``) to 1e-12; the detection bins must be
equal, bin for bin, to counts of ``value > threshold`` made by comparing every value with every
threshold in float64.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from acbmse_cli import _native_pass, evaluate
from acbmse_cli.histograms import ThresholdGrid, detection_stats
from acbmse_cli.stats import class_stats, threshold_in

pytestmark = pytest.mark.skipif(not _native_pass.ENABLED, reason="the compiled pass is not built here")

FIELDS = ("count", "sse", "sae", "max_abs_error", "sum_target", "sum_input")


# --------------------------------------------------------------------------- references


def reference_class_sums(x: np.ndarray, y: np.ndarray, classes: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per group (rows) and class (``classes``, -1 for none): the six fields, exactly rounded sums."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    out = {f: np.zeros((x.shape[0], k)) for f in FIELDS}
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, as it should be
        _fill_reference(out, x64, y64, classes, k)
    return out


def _fill_reference(
    out: dict[str, np.ndarray], x64: np.ndarray, y64: np.ndarray, classes: np.ndarray, k: int
) -> None:
    for g in range(x64.shape[0]):
        for c in range(k):
            sel = classes[g] == c
            d = x64[g][sel] - y64[g][sel]
            out["count"][g, c] = sel.sum()
            out["sse"][g, c] = math.fsum((d * d).tolist())
            out["sae"][g, c] = math.fsum(np.abs(d).tolist())
            out["sum_target"][g, c] = math.fsum(y64[g][sel].tolist())
            out["sum_input"][g, c] = math.fsum(x64[g][sel].tolist())
            e = np.abs(d)
            out["max_abs_error"][g, c] = (np.nan if np.isnan(e).any() else e.max()) if e.size else 0.0


def hit_classes(y: np.ndarray, threshold: float, keep: np.ndarray | None) -> np.ndarray:
    """1 where ``|y| > threshold`` exactly (compared in float64), else 0; -1 where ``keep`` is False."""
    classes = (np.abs(y.astype(np.float64)) > threshold).astype(np.int64)
    return classes if keep is None else np.where(keep, classes, -1)


def assert_matches(stats: object, expected: dict[str, np.ndarray]) -> None:
    for name in FIELDS:
        got = getattr(stats, name).numpy().astype(np.float64)
        want = expected[name]
        assert got.shape == want.shape, name
        # the sums of a chunk differ from exact ones by rounding in another order only
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300, equal_nan=True, err_msg=name)


def reference_bins(x: np.ndarray, truth: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """How many elements of ``x[truth]`` lie above exactly j thresholds, j = 0..G (NaN above none)."""
    values = x.astype(np.float64)[truth]
    above = np.zeros(values.shape, dtype=np.int64)
    for t in thresholds:
        above += values > t
    return np.bincount(above, minlength=len(thresholds) + 1)


# --------------------------------------------------------------------------- class sums

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.uint8]


def _pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.2, rng.uniform(1, 9, shape), 0.0)
    return target + rng.normal(0, 2, shape), target


@pytest.mark.parametrize("dx", DTYPES)
@pytest.mark.parametrize("dy", [torch.float32, torch.float64, torch.float16, torch.int32])
@pytest.mark.parametrize("per_sample", [False, True])
def test_hit_classes_match_exact_sums(dx: torch.dtype, dy: torch.dtype, per_sample: bool) -> None:
    pred, target = _pair((5, 37), seed=1)
    x, y = torch.from_numpy(pred).to(dx), torch.from_numpy(target).to(dy)
    stats = class_stats(x, y, hit_threshold=0.5, per_sample=per_sample, dtype=torch.float64, extended=True)
    xs, ys = x.to(torch.float64).numpy(), y.to(torch.float64).numpy()  # the values as stored
    rows = (5, 37) if per_sample else (1, 5 * 37)
    xs, ys = xs.reshape(rows), ys.reshape(rows)
    assert_matches(stats, reference_class_sums(xs, ys, hit_classes(ys, 0.5, None), 2))


@pytest.mark.parametrize("per_sample", [False, True])
def test_labels_and_mask_match_exact_sums(per_sample: bool) -> None:
    pred, target = _pair((4, 50), seed=2)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (4, 50))
    keep = rng.random((4, 50)) < 0.7
    stats = class_stats(
        torch.from_numpy(pred).float(), torch.from_numpy(target), labels=torch.from_numpy(labels),
        num_classes=5, mask=torch.from_numpy(keep), per_sample=per_sample, dtype=torch.float64,
        extended=True,
    )  # fmt: skip
    rows = (4, 50) if per_sample else (1, 200)
    xs = pred.astype(np.float32).astype(np.float64).reshape(rows)
    classes = np.where(keep, labels, -1).reshape(rows)
    assert_matches(stats, reference_class_sums(xs, target.reshape(rows), classes, 5))


@pytest.mark.parametrize("dx", [torch.float32, torch.float64])
@pytest.mark.parametrize("dy", [torch.float32, torch.float64])
@pytest.mark.parametrize("labelled", [False, True])
def test_every_dtype_pair_with_mask_and_labels(dx: torch.dtype, dy: torch.dtype, labelled: bool) -> None:
    """Each of the kernel's dtype pairs, with a mask, for hit and labelled classes: random values, so
    that a pair read as the other width would not pass."""
    pred, target = _pair((3, 41), seed=11)
    rng = np.random.default_rng(12)
    keep = rng.random((3, 41)) < 0.6
    labels = rng.integers(0, 4, (3, 41))
    x, y = torch.from_numpy(pred).to(dx), torch.from_numpy(target).to(dy)
    stats = class_stats(
        x, y, labels=torch.from_numpy(labels) if labelled else None, num_classes=4 if labelled else None,
        mask=torch.from_numpy(keep), per_sample=True, hit_threshold=0.5, dtype=torch.float64, extended=True,
    )  # fmt: skip
    xs, ys = x.to(torch.float64).numpy(), y.to(torch.float64).numpy()
    classes = np.where(keep, labels, -1) if labelled else hit_classes(ys, 0.5, keep)
    assert_matches(stats, reference_class_sums(xs, ys, classes, 4 if labelled else 2))


def test_mask_on_the_two_default_classes() -> None:
    pred, target = _pair((3, 40), seed=4)
    keep = np.random.default_rng(5).random((3, 40)) < 0.5
    pred[~keep] = np.nan  # a NaN that the mask leaves out is not there
    stats = class_stats(
        torch.from_numpy(pred), torch.from_numpy(target), mask=torch.from_numpy(keep), per_sample=True,
        dtype=torch.float64, extended=True,
    )  # fmt: skip
    assert_matches(stats, reference_class_sums(pred, target, hit_classes(target, 0.0, keep), 2))


def test_nan_and_inf_stay_in_their_class() -> None:
    pred, target = _pair((4, 30), seed=6)
    pred[0, 3] = np.nan
    pred[1, 4] = np.inf
    target[2, 5] = -np.inf  # a hit
    target[3, 6] = np.nan  # a non-hit: |NaN| > t is false
    pred[3, 7], target[3, 7] = np.inf, np.inf  # inf - inf: NaN
    stats = class_stats(
        torch.from_numpy(pred), torch.from_numpy(target), per_sample=True, dtype=torch.float64, extended=True
    )
    expected = reference_class_sums(pred, target, hit_classes(target, 0.0, None), 2)
    assert np.isnan(expected["max_abs_error"][0]).sum() == 1  # the reference sees one class only
    assert_matches(stats, expected)


def test_hit_threshold_is_exact_in_float32() -> None:
    """Targets one float32 step either side of a threshold that float32 cannot hold."""
    threshold = 0.1
    below = np.float32(threshold_in(torch.float32, threshold))
    above = np.nextafter(below, np.float32(1))
    target = np.array([[below, above, -above, -below]], dtype=np.float32)
    stats = class_stats(
        torch.zeros(1, 4), torch.from_numpy(target), hit_threshold=threshold, dtype=torch.float64,
        extended=True,
    )  # fmt: skip
    assert stats.count.tolist() == [[2, 2]]
    assert float(above) > threshold >= float(below)


def test_empty_and_strided_inputs() -> None:
    empty = class_stats(torch.zeros(0), torch.zeros(0), dtype=torch.float64, extended=True)
    assert empty.count.tolist() == [[0, 0]] and empty.max_abs_error.tolist() == [[0.0, 0.0]]
    pred, target = _pair((6, 8), seed=7)
    x, y = torch.from_numpy(pred).t(), torch.from_numpy(target).t()  # not contiguous
    stats = class_stats(x, y, per_sample=True, dtype=torch.float64, extended=True)
    xs, ys = np.ascontiguousarray(pred.T), np.ascontiguousarray(target.T)
    assert_matches(stats, reference_class_sums(xs, ys, hit_classes(ys, 0.0, None), 2))


def test_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        class_stats(
            torch.zeros(2, 4), torch.zeros(2, 4), labels=torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]),
            num_classes=3, dtype=torch.float64, extended=True,
        )  # fmt: skip
    # one that the mask leaves out is not there
    stats = class_stats(
        torch.zeros(1, 2), torch.zeros(1, 2), labels=torch.tensor([[0, 7]]), num_classes=3,
        mask=torch.tensor([[True, False]]), dtype=torch.float64, extended=True,
    )  # fmt: skip
    assert stats.count.tolist() == [[1, 0, 0]]


def test_gradients_and_float32_sums_keep_torch() -> None:
    """The pass gives float64 sums without autograd: training and float32 sums stay torch's."""
    x = torch.randn(3, 5, requires_grad=True)
    stats = class_stats(x, torch.zeros(3, 5), dtype=torch.float64)
    stats.sse.sum().backward()
    assert x.grad is not None
    assert class_stats(torch.randn(4), torch.zeros(4)).sse.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4),
    width=st.integers(0, 70),
    seed=st.integers(0, 2**31),
    specials=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300]), max_size=4),
    per_sample=st.booleans(),
    labelled=st.booleans(),
)
def test_same_statistics_as_torch(
    rows: int, width: int, seed: int, specials: list[float], per_sample: bool, labelled: bool
) -> None:
    """Random shapes and special values: the compiled pass equals the torch code it replaces."""
    rng = np.random.default_rng(seed)
    pred, target = _pair((rows, width), seed)
    for value in specials:
        if pred.size:
            (pred if rng.random() < 0.5 else target).flat[rng.integers(pred.size)] = value
    labels = torch.from_numpy(rng.integers(0, 3, (rows, width))) if labelled else None
    args = (torch.from_numpy(pred).float(), torch.from_numpy(target))
    kwargs = dict(
        labels=labels, num_classes=3 if labelled else None, per_sample=per_sample, dtype=torch.float64,
        extended=True, hit_threshold=0.5,
    )  # fmt: skip
    native = class_stats(*args, **kwargs)  # type: ignore[arg-type]
    _native_pass.ENABLED = False
    try:
        reference = class_stats(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        _native_pass.ENABLED = True
    for name in FIELDS:
        a, b = getattr(native, name), getattr(reference, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, equal_nan=True, msg=name)


# --------------------------------------------------------------------------- detection bins

GRIDS = [
    ThresholdGrid.linspace(0.0, 5.0, 201),
    ThresholdGrid.linspace(-1.0, 0.3, 7),
    ThresholdGrid.parse("0,0.1,0.5,1,3"),
    ThresholdGrid.linspace(1.0, 1.0 + 1e-6, 50),  # finer than float32: binary search
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.describe()[:20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int32])
def test_detection_bins_count_every_comparison(grid: ThresholdGrid, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(8)
    n = 5000
    x = torch.from_numpy(rng.normal(0.5, 2, n)).to(dtype)
    if dtype.is_floating_point:
        x[:4] = torch.tensor([math.nan, math.inf, -math.inf, 1.0])
        # values at the thresholds and one float step either side
        for k, t in enumerate(grid.values[:10]):
            v = torch.tensor(t, dtype=dtype)
            x[10 + 3 * k : 13 + 3 * k] = (
                torch.stack(
                    [
                        torch.nextafter(v, v.new_tensor(-math.inf)),
                        v,
                        torch.nextafter(v, v.new_tensor(math.inf)),
                    ]
                )
                if dtype in (torch.float32, torch.float64)
                else v
            )
    y = torch.from_numpy(np.where(rng.random(n) < 0.3, rng.uniform(0, 5, n), 0.0))
    noisy = torch.from_numpy(rng.normal(0, 1, n)).float()
    stats = detection_stats(x, y, grid, hit_threshold=0.25, noisy=noisy)
    xs = x.to(torch.float64).numpy()
    truth = np.abs(y.numpy()) > 0.25
    noise = (np.abs(noisy.numpy().astype(np.float64)) > 0.25) & ~truth
    thresholds = list(grid.values)
    assert stats.hits.tolist() == reference_bins(xs, truth, thresholds).tolist()
    assert stats.nonhits.tolist() == reference_bins(xs, ~truth, thresholds).tolist()
    assert stats.noise is not None
    assert stats.noise.tolist() == reference_bins(xs, noise, thresholds).tolist()


NEAR_GRIDS = [
    ThresholdGrid.linspace(0.0, 100.0, 201),  # the default grid of the benchmark's data
    ThresholdGrid.linspace(1000.0, 1001.0, 11),  # far from zero: the guesses' widest error
    ThresholdGrid.linspace(-3.7, 2.9, 23),
    ThresholdGrid.linspace(0.0, 1.0, 20001),  # many thresholds: the guess itself is large
    ThresholdGrid.linspace(1e-30, 3e-30, 5),
]


@pytest.mark.parametrize("grid", NEAR_GRIDS, ids=lambda g: g.describe()[:24])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detection_bins_at_every_threshold_and_many_steps_either_side(
    grid: ThresholdGrid, dtype: torch.dtype
) -> None:
    """The binning of an evenly spaced grid settles most values by its two guesses alone and
    compares the rest with their threshold: the values from 40 float steps below to 40 above
    every threshold (and its rounded copy in the dtype) land where the comparisons say."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    every = max(len(grid) // 250, 1)  # of a fine grid, a sample of the thresholds (and the last)
    near = [*grid.values[::every], grid.values[-1]]
    centres = np.array(
        [float(torch.tensor(t, dtype=torch.float64).to(dtype)) for t in near]
        + [threshold_in(dtype, t) for t in near],
        dtype=np_dtype,
    )
    down, up, steps = centres.copy(), centres.copy(), [centres]
    for _ in range(40):
        down, up = np.nextafter(down, np_dtype(-np.inf)), np.nextafter(up, np_dtype(np.inf))
        steps += [down, up]
    xs = np.concatenate(steps)
    x = torch.from_numpy(xs)
    y = torch.zeros_like(x)
    y[::3] = 1.0
    stats = detection_stats(x, y, grid, hit_threshold=0.5)
    # how many thresholds lie strictly below each value, in float64
    above = np.searchsorted(np.array(grid.values), xs.astype(np.float64), side="left")
    truth = y.numpy() > 0.5
    bins = len(grid) + 1
    assert stats.hits.tolist() == np.bincount(above[truth], minlength=bins).tolist()
    assert stats.nonhits.tolist() == np.bincount(above[~truth], minlength=bins).tolist()


def test_noise_and_truth_at_a_threshold_that_float32_cannot_hold() -> None:
    """Targets and network inputs one float32 step either side of the hit threshold."""
    threshold = 0.1
    below = np.float32(threshold_in(torch.float32, threshold))
    above = np.nextafter(below, np.float32(1))
    edge = np.array([below, above, -above, -below], dtype=np.float32)
    y = torch.from_numpy(np.concatenate([edge, np.zeros(4, np.float32)]))
    noisy = torch.from_numpy(np.concatenate([np.zeros(4, np.float32), edge]))
    x = torch.linspace(0.0, 1.0, 8)
    grid = ThresholdGrid.linspace(0.0, 1.0, 11)
    stats = detection_stats(x, y, grid, hit_threshold=threshold, noisy=noisy)
    truth = np.array([False, True, True, False] + [False] * 4)
    noise = np.array([False] * 4 + [False, True, True, False])
    thresholds = list(grid.values)
    xs = x.numpy()
    assert stats.hits.tolist() == reference_bins(xs, truth, thresholds).tolist()
    assert stats.nonhits.tolist() == reference_bins(xs, ~truth, thresholds).tolist()
    assert stats.noise is not None
    assert stats.noise.tolist() == reference_bins(xs, noise, thresholds).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detection_bins_leave_out_what_the_mask_drops(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(13)
    n = 3000
    x = torch.from_numpy(rng.normal(0.5, 2, n)).to(dtype)
    y = torch.from_numpy(np.where(rng.random(n) < 0.3, rng.uniform(0, 5, n), 0.0)).to(dtype)
    noisy = torch.from_numpy(rng.normal(0, 1, n)).to(dtype)
    keep = torch.from_numpy(rng.random(n) < 0.5)
    grid = ThresholdGrid.linspace(0.0, 5.0, 21)
    edges = torch.tensor([threshold_in(dtype, t) for t in grid.values] + [math.inf], dtype=torch.float64)
    step = 5.0 / 20
    hits, nonhits, noise = (torch.zeros(len(grid) + 1, dtype=torch.int64) for _ in range(3))
    _native_pass.bins_adder(
        x, y, edges, linear=(1 / step, 1 - 0.125, 1 + 0.125), hit_threshold=0.25, noisy=noisy, mask=keep,
        into=(hits, nonhits, noise),
    )()  # fmt: skip
    kept = keep.numpy()
    xs, truth = x.to(torch.float64).numpy(), np.abs(y.to(torch.float64).numpy()) > 0.25
    is_noise = (np.abs(noisy.to(torch.float64).numpy()) > 0.25) & ~truth
    thresholds = list(grid.values)
    assert hits.tolist() == reference_bins(xs, truth & kept, thresholds).tolist()
    assert nonhits.tolist() == reference_bins(xs, ~truth & kept, thresholds).tolist()
    assert noise is not None
    assert noise.tolist() == reference_bins(xs, is_noise & kept, thresholds).tolist()


def test_compiled_functions_keep_torch() -> None:
    """Under torch.compile the statistics are traced as torch code, not handed to the extension."""
    labels = torch.tensor([[0, 1, 2, 1, 2, 0]] * 16).reshape(-1)
    x, y = torch.randn(96, dtype=torch.float64), torch.randn(96, dtype=torch.float64)

    def counts(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return class_stats(x, y, labels=labels, num_classes=3, dtype=torch.float64).count

    with torch.no_grad():
        compiled = torch.compile(counts, fullgraph=True, backend="eager")(x, y, labels)
    assert compiled.tolist() == [[32, 32, 32]]


def test_detection_bins_equal_torch_on_random_data() -> None:
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(0, 30, 100_000)).float()
    y = torch.from_numpy(np.where(rng.random(100_000) < 0.05, rng.uniform(20, 100, 100_000), 0.0)).float()
    grid = ThresholdGrid.linspace(0.0, 100.0, 201)
    native = detection_stats(x, y, grid, noisy=x)
    _native_pass.ENABLED = False
    try:
        reference = detection_stats(x, y, grid, noisy=x)
    finally:
        _native_pass.ENABLED = True
    for name in ("hits", "nonhits", "noise"):
        assert torch.equal(getattr(native, name), getattr(reference, name)), name


def test_wrong_buffers_are_refused_by_the_extension() -> None:
    count, sums, largest = np.zeros((1, 2), np.int64), np.zeros((1, 2, 4)), np.zeros((1, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        _native_pass._native.class_sums(
            np.zeros(4, np.int32), np.zeros(4, np.float32), None, None, 0.0, 1, count, sums, largest
        )
    with pytest.raises(TypeError, match="int64"):
        _native_pass._native.class_sums(
            np.zeros(4), np.zeros(4), None, None, 0.0, 1, np.zeros((1, 2)), sums, largest
        )
    with pytest.raises(ValueError, match="groups"):
        _native_pass._native.class_sums(np.zeros(5), np.zeros(5), None, None, 0.0, 2, count, sums, largest)


# --------------------------------------------------------------------------- in eval


def _eval_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(10)
    shape = (60, 1, 16, 16)
    target = np.where(rng.random(shape) < 0.05, rng.uniform(20, 100, shape), 0.0).astype(np.float32)
    pred = (target + rng.normal(0, 3, shape)).astype(np.float32)
    noisy = (target + rng.normal(0, 15, shape)).astype(np.float32)
    paths = tmp_path / "p.npy", tmp_path / "t.npy", tmp_path / "n.npy"
    for path, values in zip(paths, (pred, target, noisy), strict=True):
        np.save(path, values)
    return paths


def test_side_thread_gives_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Histograms counted on a second thread, or on the calling one: the same numbers."""
    pred, target, noisy = _eval_files(tmp_path)
    options = evaluate.EvalOptions(
        detect_curve=True, detect_threshold=10.0, input=str(noisy), figure_stats=True, chunk_elements=1000
    )

    def report() -> dict[str, object]:
        return evaluate.evaluate(str(pred), str(target), options).to_dict()

    monkeypatch.setattr(evaluate, "_idle_cores", lambda: 2)
    threaded = report()
    monkeypatch.setattr(evaluate, "_idle_cores", lambda: 0)
    assert report() == threaded


def test_eval_without_the_extension_gives_the_same_report(tmp_path: Path) -> None:
    """ACBMSE_NATIVE=0 (what a machine without a C compiler runs): the same JSON, to rounding."""
    pred, target, noisy = _eval_files(tmp_path)
    args = [sys.executable, "-m", "acbmse_cli", "eval", str(pred), str(target), "--detect-curve",
            "--input", str(noisy), "--per-sample", "--format", "json"]  # fmt: skip

    def run(native: str) -> object:
        import json

        env = {**os.environ, "ACBMSE_NATIVE": native}
        done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
        return json.loads(done.stdout)

    with_pass, without = run("1"), run("0")

    def close(a: object, b: object, where: str = "") -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            assert a.keys() == b.keys(), where
            for key in a:
                close(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), where
            for i, (u, v) in enumerate(zip(a, b, strict=True)):
                close(u, v, f"{where}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
        else:
            assert a == b, (where, a, b)

    close(with_pass, without)


def test_a_lost_run_stops_counting_on_the_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a NaN has made the run an error, later chunks are not counted (nor kept in memory) on the
    side thread, and the error still names the first NaN."""
    import threading
    import time

    from acbmse_cli.errors import InputError

    rng = np.random.default_rng(14)
    target = np.where(rng.random((400, 256)) < 0.05, 50.0, 0.0).astype(np.float32)
    pred = (target + rng.normal(0, 1, target.shape)).astype(np.float32)
    pred.flat[5] = np.nan
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    counted: list[int] = []
    lock = threading.Lock()
    slow_counts = evaluate._ChunkComputer._counts

    def counts(self: evaluate._ChunkComputer, chunk: evaluate._Chunk) -> evaluate._Counts:
        time.sleep(0.005)  # the side thread slower than reading, so that chunks would queue up
        with lock:
            counted.append(chunk.x.numel())
        return slow_counts(self, chunk)

    monkeypatch.setattr(evaluate._ChunkComputer, "_counts", counts)
    monkeypatch.setattr(evaluate, "_idle_cores", lambda: 2)
    options = evaluate.EvalOptions(detect_curve=True, chunk_elements=1024)
    with pytest.raises(InputError, match="NaN"):
        evaluate.evaluate(str(tmp_path / "p.npy"), str(tmp_path / "t.npy"), options)
    assert len(counted) <= 3, f"{len(counted)} of 100 chunks counted after the run was lost"
