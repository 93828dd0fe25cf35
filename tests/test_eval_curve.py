"""Hit finding at every threshold, denoising, and several predictions: against a float64 numpy reference.

The reference here is written from the definitions: an element is detected at ``t`` when its
prediction is above ``t`` (compared in float64, which holds every value of the files exactly);
average precision is the step-wise sum over the grid from the highest threshold down.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import run_cli as cli
from hypothesis import given, settings
from hypothesis import strategies as st

from acbmse_cli.evaluate import EvalOptions, evaluate, evaluate_many
from acbmse_cli.histograms import ThresholdGrid, count_below


def reference_curve(
    pred: np.ndarray, target: np.ndarray, grid: np.ndarray, *, hit_threshold: float = 0.0,
    noisy: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    p = pred.astype(np.float64).ravel()
    truth = np.abs(target.astype(np.float64).ravel()) > hit_threshold
    detected = p[:, None] > grid[None, :]
    tp = (detected & truth[:, None]).sum(axis=0)
    fp = (detected & ~truth[:, None]).sum(axis=0)
    fn = truth.sum() - tp
    recall = [t / (t + f) if t + f else None for t, f in zip(tp, fn, strict=True)]
    precision = [t / (t + f) if t + f else None for t, f in zip(tp, fp, strict=True)]
    f1 = [2 * t / (2 * t + a + b) if 2 * t + a + b else None for t, a, b in zip(tp, fp, fn, strict=True)]
    ap, previous = 0.0, 0.0
    for r, pr in zip(reversed(recall), reversed(precision), strict=True):
        ap += (r - previous) * pr if r is not None and r > previous else 0.0
        previous = r if r is not None else previous
    scored = [(f, k) for k, f in enumerate(f1) if f is not None]
    best_value = max(f for f, _ in scored)
    k = min(k for f, k in scored if f == best_value)
    out: dict[str, Any] = {
        "threshold": grid.tolist(),
        "tp": tp.tolist(),
        "fp": fp.tolist(),
        "fn": fn.tolist(),
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "average_precision": ap if truth.any() else None,
        "best_f1": {"threshold": float(grid[k]), "f1": f1[k], "recall": recall[k], "precision": precision[k]},
    }
    if noisy is not None:
        noise = (np.abs(noisy.astype(np.float64).ravel()) > hit_threshold) & ~truth
        removed = ((p[:, None] <= grid[None, :]) & noise[:, None]).sum(axis=0)
        out["noise_hits"] = int(noise.sum())
        out["noise_removed"] = [r / noise.sum() if noise.sum() else None for r in removed]
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def _frames(
    seed: int, dtype: Any = np.float32, shape: tuple[int, ...] = (40, 1, 6, 8)
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.06, rng.uniform(20, 100, shape), 0.0).astype(dtype)
    noisy = target.copy()
    noisy[(target == 0) & (rng.random(shape) < 0.03)] = 55.0
    return {
        "target": target,
        "noisy": noisy,
        "good": (target + rng.normal(0, 6, shape)).astype(dtype),
        "poor": (0.5 * target + rng.normal(0, 12, shape)).astype(dtype),
    }


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, array in _frames(0).items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    return paths


@given(
    values=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=60),
    start=st.floats(-100, 100),
    span=st.floats(1e-3, 500),
    n=st.integers(2, 40),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
)
@settings(max_examples=150, deadline=None)
def test_count_below_counts_the_thresholds_under_each_value_exactly(
    values: list[float], start: float, span: float, n: int, dtype: str
) -> None:
    import torch

    grid = ThresholdGrid.linspace(start, start + span, n)
    on = np.array(grid.values, dtype=dtype)  # values on the thresholds and one ulp either side
    near = [on, np.nextafter(on, np.inf, dtype=on.dtype), np.nextafter(on, -np.inf, dtype=on.dtype)]
    x = np.concatenate([np.array([*values, np.nan], dtype=dtype), *near])
    got = count_below(torch.from_numpy(x), grid).numpy()
    expected = (x.astype(np.float64)[:, None] > np.array(grid.values)[None, :]).sum(axis=1)
    assert got.tolist() == expected.tolist()
    listed = ThresholdGrid.parse(",".join(repr(v) for v in sorted(set(grid.values))))
    got = count_below(torch.from_numpy(x), listed).numpy()
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("chunk", [None, 37, 48])
@pytest.mark.parametrize("grid_text", [None, "0:100:51", "3,10.5,20,33.3,60"])
def test_curve_counts_and_ratios_equal_the_reference(
    files: dict[str, Path], chunk: int | None, grid_text: str | None
) -> None:
    options = EvalOptions(detect_curve=True, thresholds=grid_text, chunk_elements=chunk)
    doc = evaluate(files["good"], files["target"], options).to_dict()["detection_curve"]
    target, pred = np.load(files["target"]), np.load(files["good"])
    if grid_text is None:  # the default grid: 201 from the hit threshold to the largest hit, rounded up
        assert 99 < target.max() <= 100
        grid = np.array(ThresholdGrid.linspace(0.0, 100.0, 201).values)
    else:
        grid = np.array(ThresholdGrid.parse(grid_text).values)
    assert _close(doc, reference_curve(pred, target, grid))


def test_the_curve_at_t_counts_exactly_what_detect_threshold_t_counts(files: dict[str, Path]) -> None:
    pred = np.load(files["good"])
    t = float(np.sort(pred.ravel())[-30])  # a threshold that is one of the predictions
    both = EvalOptions(detect_curve=True, thresholds=f"1,{t!r},90", detect_threshold=t, chunk_elements=50)
    doc = evaluate(files["good"], files["target"], both).to_dict()
    curve, single = doc["detection_curve"], doc["detection"]
    assert (curve["tp"][1], curve["fp"][1], curve["fn"][1]) == (
        single["true_positives"],
        single["false_positives"],
        single["false_negatives"],
    )
    truth = np.abs(np.load(files["target"]).astype(np.float64)) > 0
    assert single["true_positives"] == int(((pred.astype(np.float64) > t) & truth).sum())


def test_average_precision_matches_sklearn_where_the_grid_holds_every_prediction(tmp_path: Path) -> None:
    from sklearn import metrics as sklearn_metrics

    rng = np.random.default_rng(3)
    target = np.where(rng.random((30, 20)) < 0.2, 50.0, 0.0)
    pred = np.round(target * 0.4 + rng.normal(0, 8, target.shape), 1)  # ties on purpose
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    distinct = np.unique(pred)
    # "prediction > t" over the distinct values, and one threshold under all: every sklearn cut
    grid = [float(distinct[0] - 1.0), *distinct.tolist()]
    options = EvalOptions(detect_curve=True, thresholds=",".join(repr(v) for v in grid))
    doc = evaluate(tmp_path / "p.npy", tmp_path / "t.npy", options).to_dict()["detection_curve"]
    expected = sklearn_metrics.average_precision_score(target.ravel() > 0, pred.ravel())
    assert doc["average_precision"] == pytest.approx(expected, rel=1e-12)


def test_denoising_fractions_equal_the_reference(files: dict[str, Path]) -> None:
    options = EvalOptions(
        detect_curve=True,
        thresholds="0:100:41",
        detect_threshold=25.0,
        input=files["noisy"],
        chunk_elements=64,
    )
    doc = evaluate(files["good"], files["target"], options).to_dict()
    pred, target, noisy = (np.load(files[k]).astype(np.float64) for k in ("good", "target", "noisy"))
    truth = np.abs(target) > 0
    noise = (np.abs(noisy) > 0) & ~truth
    assert noise.sum() > 10 and truth.sum() > 10
    assert doc["denoising"] == pytest.approx(
        {
            "threshold": 25.0,
            "signal_hits": int(truth.sum()),
            "signal_retained": float(((pred > 25.0) & truth).sum() / truth.sum()),
            "noise_hits": int(noise.sum()),
            "noise_removed": float(((pred <= 25.0) & noise).sum() / noise.sum()),
        },
        rel=1e-12,
    )
    reference = reference_curve(pred, target, np.linspace(0, 100, 41), noisy=noisy)
    curve = doc["denoising_curve"]
    assert curve["noise_hits"] == reference["noise_hits"] and curve["signal_hits"] == int(truth.sum())
    assert _close(curve["noise_removed"], reference["noise_removed"])
    assert _close(curve["signal_retained"], reference["recall"])


def test_several_predictions_equal_each_alone(files: dict[str, Path]) -> None:
    options = EvalOptions(
        detect_curve=True, detect_threshold=10.0, input=files["noisy"], per_sample=True, chunk_elements=96
    )
    together = evaluate_many([files["good"], files["poor"], files["good"]], files["target"], options)
    assert [r.pred for r in together.reports] == [str(files[k]) for k in ("good", "poor", "good")]
    for report, name in zip(together.reports, ("good", "poor", "good"), strict=True):
        alone = evaluate(files[name], files["target"], options)
        assert report.to_dict() == alone.to_dict()
    assert together.reports[0].acb_mse != together.reports[1].acb_mse


def test_comparison_json_csv_and_table(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from acbmse_cli.report import render_table

    args = ["eval", files["good"], files["poor"], files["target"], "--detect-curve", "--device", "cpu"]
    code, out, err = cli([*args, "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc.keys() == {"target", "reports"} and doc["target"] == str(files["target"])
    code, out, _ = cli(
        ["eval", files["poor"], files["target"], "--detect-curve", "--device", "cpu", "--format", "json"],
        capsys,
    )
    assert doc["reports"][1] == json.loads(out)
    code, csv_text, _ = cli([*args, "--format", "csv"], capsys)
    blocks = csv_text.strip().split("\n\n")
    assert all(block.startswith("pred,") for block in blocks)
    rows = [line.split(",") for line in blocks[0].splitlines()[1:]]
    assert [r[0] for r in rows] == [str(files["good"])] * 3 + [str(files["poor"])] * 3
    curve_rows = blocks[1].splitlines()[1:]
    assert len(curve_rows) == 2 * 201
    options = EvalOptions(detect_curve=True, detect_threshold=10.0, input=files["noisy"])
    comparison = evaluate_many([files["good"], files["poor"]], files["target"], options)
    console = Console(width=80, record=True, file=io.StringIO())
    render_table(comparison, console)
    table = console.export_text()
    assert "2 predictions vs" in table and "noise removed" in table and "AP" in table
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--detect-curve", "--thresholds", ""], "--thresholds"),
        (["--detect-curve", "--thresholds", "5,3"], "strictly increasing"),
        (["--detect-curve", "--thresholds", "1,nan"], "finite"),
        (["--detect-curve", "--thresholds", "0:10:1"], "N >= 2"),
        (["--detect-curve", "--thresholds", "0:10"], "START:STOP:N"),
        (["--thresholds", "0:10:5"], "--thresholds needs --detect-curve"),
        (["--input", "noisy.npy"], "--input needs --detect-threshold or --detect-curve"),
    ],
)
def test_bad_detection_options_are_refused_before_any_file_is_read(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["eval", tmp_path / "missing.npy", tmp_path / "gone.npy", *options], capsys)
    assert code == 2 and out == ""
    assert message in err and "missing.npy" not in err
    assert "Traceback" not in err


def test_an_input_of_another_shape_is_named(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "small.npy", np.zeros((3, 4), dtype=np.float32))
    args = ["eval", files["good"], files["target"], "--detect-curve", "--input", tmp_path / "small.npy"]
    code, out, err = cli(args, capsys)
    assert code == 2 and out == ""
    assert "small.npy" in err and "(3, 4)" in err


def test_eval_needs_a_prediction_and_a_target(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["eval", files["target"]], capsys)
    assert code == 2 and "PRED... TARGET" in err


def test_the_gate_names_every_failing_prediction(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = evaluate(files["good"], files["target"], EvalOptions()).acb_mse
    args = ["eval", files["good"], files["poor"], files["target"], "--fail-above", repr(good * 1.01)]
    code, _, err = cli([*args, "--device", "cpu"], capsys)
    assert code == 1
    assert str(files["poor"]) in err and f"{files['good']}:" not in err


def test_best_f1_takes_the_lowest_of_tied_thresholds(tmp_path: Path) -> None:
    target = np.array([0.0, 50.0, 0.0, 50.0, 0.0])
    pred = np.array([0.0, 45.0, 1.0, 60.0, 2.0])  # F1 = 1 at every threshold from 2 to 45
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    options = EvalOptions(detect_curve=True, thresholds="1,10,20,30,50")
    best = evaluate(tmp_path / "p.npy", tmp_path / "t.npy", options).to_dict()["detection_curve"]["best_f1"]
    assert best == {"threshold": 10.0, "f1": 1.0, "recall": 1.0, "precision": 1.0}


@pytest.mark.parametrize("which", ["second prediction", "input"])
def test_a_corrupt_second_prediction_or_input_is_an_error_and_no_report(
    files: dict[str, Path], tmp_path: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    values = np.load(files["poor"] if which == "second prediction" else files["noisy"])
    marker = np.float32(12345.678)
    values.reshape(-1)[17] = marker
    corrupt = tmp_path / "corrupt.npz"
    np.savez(corrupt, x=values)  # stored, not compressed: only the CRC-32 tells the flip
    raw = bytearray(corrupt.read_bytes())
    at = raw.find(marker.tobytes())
    raw[at] ^= 0x01
    corrupt.write_bytes(bytes(raw))
    if which == "second prediction":
        args = ["eval", files["good"], corrupt, files["target"]]
    else:
        args = ["eval", files["good"], files["target"], "--detect-curve", "--input", corrupt]
    for output in ("table", "json"):
        code, out, err = cli([*args, "--format", output, "--device", "cpu"], capsys)
        assert code == 2 and out == ""
        assert "corrupt.npz" in err and "CRC-32" in err


@pytest.mark.parametrize(
    ("values", "stop"),
    [
        ([0.0, 42.0, 0.0, 7.0], 50.0),  # the largest value is the largest hit
        ([0.0, -42.0, 0.0, -7.0], 1.0),  # hits, none above the threshold: one unit
        ([0.0, np.inf, 0.0, 7.0], 8.0),  # an infinite target is omitted, the largest finite hit counts
        ([0.0, np.nan, 0.0, 12.0], 12.0),
    ],
)
def test_the_default_grid_ends_at_the_largest_finite_hit(
    tmp_path: Path, values: list[float], stop: float
) -> None:
    target = np.array([values] * 3)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "p.npy", np.zeros_like(target))
    options = EvalOptions(detect_curve=True, nan_policy="omit", chunk_elements=4)
    doc = evaluate(tmp_path / "p.npy", tmp_path / "t.npy", options).to_dict()
    assert doc["run"]["thresholds"] == f"0.0:{stop!r}:201"


def _round_up_reference(span: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is at least ``span``."""
    candidates = [m * 10.0**e for e in range(-12, 13) for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)]
    return min(c for c in candidates if c >= span * (1 - 1e-15))


@pytest.mark.parametrize(
    "layout",
    [
        "rising",
        "largest first",
        "no hits at first",
        "one late outlier",
        "largest in the last chunk",
        "no hits",
    ],
)
@pytest.mark.parametrize("extras", ["plain", "mask, omit, input", "per-sample, two predictions"])
def test_the_default_grid_found_during_the_pass_equals_the_reference(
    tmp_path: Path, layout: str, extras: str
) -> None:
    """The curve's default grid is guessed from the first chunk and widened during the pass; the
    chunks counted on a narrower grid are counted again.  Targets whose largest hit comes first,
    last, after chunks without hits, or never: every count equals the float64 reference on the
    grid from the hit threshold to the largest finite hit, rounded up."""
    rng = np.random.default_rng(5)
    shape = (48, 1, 4, 5)
    hits = rng.random(shape) < 0.2
    rows = np.arange(shape[0], dtype=np.float64).reshape(-1, 1, 1, 1)
    values = {
        "rising": 1.0 + rows * 2.7,  # each chunk past the grid of the ones before
        "largest first": np.where(rows == 0, 900.0, rng.uniform(1, 50, shape)),
        "no hits at first": np.where(rows < 10, 0.0, rng.uniform(1, 30, shape)),
        "one late outlier": np.where(rows == 40, 4000.0, rng.uniform(1, 30, shape)),
        "largest in the last chunk": rng.uniform(1, 30, shape),
        "no hits": np.zeros(shape),
    }[layout]
    target = np.where(hits, values * np.ones(shape), 0.0).astype(np.float32)
    target[0, 0, 0, 0] = 900.0 if layout == "largest first" else target[0, 0, 0, 0]
    if layout == "one late outlier":
        target[40, 0, 0, 0] = 4000.0
    if layout == "largest in the last chunk":  # found after the pass, on the side thread
        target[-1, 0, 3, 4] = 650.0
    pred = (target + rng.normal(0, 3, shape)).astype(np.float32)
    other = (0.5 * target + rng.normal(0, 6, shape)).astype(np.float32)
    keep = np.ones(shape, dtype=bool)
    noisy = None
    if extras == "mask, omit, input":
        keep = rng.random(shape) < 0.8
        pred[30, 0, 1, 1] = np.nan  # in a chunk counted before the grid is widened
        target[3, 0, 2, 2] = np.inf  # no hit range, and left out with its element
        noisy = np.where(~hits & (rng.random(shape) < 0.1), 35.0, target).astype(np.float32)
    for name, array in (("p", pred), ("o", other), ("t", target), ("m", keep), ("n", noisy)):
        if array is not None:
            np.save(tmp_path / f"{name}.npy", array)
    options = EvalOptions(
        detect_curve=True,
        chunk_elements=40,
        mask=str(tmp_path / "m.npy") if extras == "mask, omit, input" else None,
        nan_policy="omit" if extras == "mask, omit, input" else "raise",
        input=str(tmp_path / "n.npy") if noisy is not None else None,
        per_sample=extras.startswith("per-sample"),
    )
    preds = [tmp_path / "p.npy", tmp_path / "o.npy"] if "two" in extras else [tmp_path / "p.npy"]
    reports = [r.to_dict() for r in evaluate_many(preds, tmp_path / "t.npy", options).reports]
    # the reference: the elements kept (mask, finite prediction and target), the grid of the target's
    # largest finite hit among the kept elements
    finite_target = np.isfinite(target)
    ranged = keep & finite_target & (np.abs(target) > 0)
    span = float(target[ranged].max()) if ranged.any() else 0.0
    stop = _round_up_reference(span) if span > 0 else 1.0
    grid = np.array(ThresholdGrid.linspace(0.0, stop, 201).values)
    for path, report in zip(preds, reports, strict=True):
        values_of = np.load(path)
        counted = keep & finite_target & np.isfinite(values_of)
        assert report["run"]["thresholds"] == f"0.0:{stop!r}:201"
        expected = reference_curve(
            values_of[counted], target[counted], grid, noisy=None if noisy is None else noisy[counted]
        )
        curve = report["detection_curve"]
        for key in ("tp", "fp", "fn"):
            assert curve[key] == expected[key], key
        assert _close(curve["average_precision"], expected["average_precision"])
        if noisy is not None:
            assert _close(report["denoising_curve"]["noise_removed"], expected["noise_removed"])
