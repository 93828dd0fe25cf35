"""The training demo: metrics against a numpy reference, the training plumbing, and the `demo` command.

Training results (which loss wins) are not asserted: runs here are a few steps on tiny frames.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.cells import cell_len
from tables import assert_fixed, parse_tables

from acbmse_cli import demo as demo_lib
from acbmse_cli.cli import app, main
from acbmse_cli.demo import LOSS_NAMES, DemoOptions, heldout_metrics, run_demo
from acbmse_cli.errors import InputError

# One thread: a thread pool as large as a busy machine stalls (see demo.default_threads).
TINY = {
    "steps": 3,
    "batch_size": 2,
    "eval_frames": 5,
    "height": 16,
    "width": 24,
    "channels": 2,
    "latent": 4,
    "threads": 1,
}
TINY_CLI = [
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--eval-frames",
    "5",
    "--frame-size",
    "16x24",
    "--threads",
    "1",
]
METRIC_KEYS = {
    "recall",
    "precision",
    "f1",
    "blank_fraction",
    "blank_frames",
    "frames",
    "tp",
    "fp",
    "fn",
    "mse_hit",
    "mse_nonhit",
    "mse",
    "acb_mse",
    "average_precision",
    "best_f1",
    "signal_hits",
    "signal_retained",
    "noise_hits",
    "noise_removed",
    "final_train_loss",
}


# --------------------------------------------------------------------------- reference


def reference_metrics(pred: np.ndarray, target: np.ndarray, threshold: float, a: float, b: float) -> dict:
    """The demo's held-out metrics written out in numpy float64."""
    pred = pred.astype(np.float64)
    target = target.astype(np.float64)
    detected = pred > threshold
    truth = np.abs(target) > 0
    tp = int((detected & truth).sum())
    fp = int((detected & ~truth).sum())
    fn = int((~detected & truth).sum())
    blank = ~detected.reshape(len(pred), -1).any(axis=1)
    sq = (pred - target) ** 2
    mse_hit = sq[truth].mean() if truth.any() else None
    mse_nonhit = sq[~truth].mean() if (~truth).any() else None
    return {
        "recall": tp / (tp + fn) if tp + fn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "blank_fraction": blank.mean(),
        "blank_frames": int(blank.sum()),
        "frames": len(pred),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mse_hit": mse_hit,
        "mse_nonhit": mse_nonhit,
        "mse": sq.mean(),
        "acb_mse": a * (mse_hit or 0.0) + b * (mse_nonhit or 0.0),
    }


def reference_grid(target: np.ndarray) -> np.ndarray:
    """The demo's grid: 201 evenly spaced thresholds from 0 to the target's largest hit value,
    rounded up to the next of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten."""
    hits = target[np.abs(target) > 0].astype(np.float64)
    largest = hits.max() if hits.size else 1.0
    power = 10.0 ** np.floor(np.log10(largest))
    stop = min(
        m * power for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= largest * (1 - 1e-15)
    )
    return np.linspace(0.0, stop, 201)


def reference_detection(
    pred: np.ndarray, target: np.ndarray, noisy: np.ndarray, grid: np.ndarray, threshold: float = 10.0
) -> dict:
    """Hit finding over ``grid`` and denoising at ``threshold``, written out in numpy float64."""
    pred, target, noisy = (a.astype(np.float64).ravel() for a in (pred, target, noisy))
    truth = np.abs(target) > 0
    noise = (np.abs(noisy) > 0) & ~truth
    detected = pred[None, :] > grid[:, None]  # (thresholds, elements)
    tp = (detected & truth).sum(axis=1)
    fp = (detected & ~truth).sum(axis=1)
    fn = truth.sum() - tp
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    f1_den = 2 * tp + fp + fn
    f1 = np.where(f1_den > 0, 2 * tp / np.maximum(f1_den, 1), np.nan)
    ap, previous = 0.0, 0.0
    for r, p in zip(recall[::-1], precision[::-1], strict=True):  # thresholds decreasing
        if r > previous:
            ap += (r - previous) * p
        previous = r
    best = None
    if not np.isnan(f1).all():
        k = int(np.flatnonzero(f1 == np.nanmax(f1))[0])  # ties: the lowest threshold
        best = {
            "threshold": grid[k], "f1": f1[k], "recall": recall[k],
            "precision": None if np.isnan(precision[k]) else precision[k],
        }  # fmt: skip
    return {
        "average_precision": ap if truth.any() else None,
        "best_f1": best,
        "signal_hits": int(truth.sum()),
        "signal_retained": (pred[truth] > threshold).mean() if truth.any() else None,
        "noise_hits": int(noise.sum()),
        "noise_removed": (pred[noise] <= threshold).mean() if noise.any() else None,
        "tp": tp, "fp": fp, "fn": fn, "f1": f1,
    }  # fmt: skip


CURVE_KEYS = ("average_precision", "best_f1", "signal_hits", "signal_retained", "noise_hits", "noise_removed")


def assert_metrics_equal(got: dict, want: dict) -> None:
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            continue  # the curve's counts: compared where the curve itself is at hand
        if isinstance(value, dict):
            assert isinstance(got[key], dict) and set(got[key]) == set(value), key
            assert_metrics_equal(got[key], value)
        elif value is None or isinstance(value, int):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


# --------------------------------------------------------------------------- metrics


def test_heldout_metrics_match_a_numpy_reference():
    rng = np.random.default_rng(5)
    target = np.where(rng.random((6, 1, 8, 8)) < 0.1, rng.uniform(20, 100, (6, 1, 8, 8)), 0.0)
    pred = target + rng.normal(0, 12, target.shape)
    pred[2] = 0.0  # a blank output
    pred[4] = rng.uniform(-5, 9.9, (1, 8, 8))  # nothing above 10: blank too
    pred, target = pred.astype(np.float32), target.astype(np.float32)
    options = DemoOptions(hit_weight=2.0, nonhit_weight=0.5, height=8, width=8)
    got = heldout_metrics(pred, target, options)
    want = reference_metrics(pred, target, 10.0, 2.0, 0.5)
    assert want["tp"] > 0 and want["fp"] > 0 and want["fn"] > 0 and want["blank_frames"] == 2
    assert_metrics_equal(got, want)


def test_undefined_ratios_are_none():
    target = np.zeros((2, 1, 8, 8), np.float32)
    target[0, 0, 1, 1] = 50.0
    got = heldout_metrics(np.zeros_like(target), target, DemoOptions(height=8, width=8))
    assert got["recall"] == 0.0 and got["precision"] is None and got["f1"] == 0.0
    assert got["blank_fraction"] == 1.0
    no_hits = heldout_metrics(np.zeros_like(target), np.zeros_like(target), DemoOptions(height=8, width=8))
    assert no_hits["recall"] is None and no_hits["f1"] is None and no_hits["mse_hit"] is None


def test_a_diverged_output_reports_none_not_nan():
    target = np.zeros((2, 1, 8, 8), np.float32)
    target[:, 0, 1, 1] = 50.0
    pred = np.full_like(target, np.nan)
    got = heldout_metrics(pred, target, DemoOptions(height=8, width=8))
    assert (
        got["mse_hit"] is None and got["mse_nonhit"] is None and got["mse"] is None and got["acb_mse"] is None
    )
    assert got["recall"] == 0.0  # NaN is never above the detection threshold
    json.dumps(got, allow_nan=False)


def test_detection_metrics_by_hand():
    target = np.array([50.0, 50.0, 0.0, 0.0], np.float32).reshape(1, 1, 2, 2)
    noisy = np.array([50.0, 50.0, 30.0, 0.0], np.float32).reshape(target.shape)
    pred = np.array([60.0, 20.0, 40.0, 0.0], np.float32).reshape(target.shape)
    got, curve = demo_lib.heldout_scores(pred, target, DemoOptions(height=8, width=8), noisy=noisy)
    # Thresholds from 0 to 50, decreasing: {60} (R 1/2, P 1), {60, 40} (R 1/2), {60, 40, 20} (R 1, P 2/3).
    assert curve.threshold[0] == 0.0 and curve.threshold[-1] == 50.0 and len(curve.threshold) == 201
    assert got["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, rel=1e-12)
    # F1 is 4/5 for every threshold below 20: the lowest, 0, is the one reported.
    assert got["best_f1"] == {"threshold": 0.0, "f1": 0.8, "recall": 1.0, "precision": pytest.approx(2 / 3)}
    assert (got["signal_hits"], got["signal_retained"]) == (2, 1.0)
    assert (got["noise_hits"], got["noise_removed"]) == (1, 0.0)  # the noise hit's output 40 is above 10


def test_detection_metrics_match_a_numpy_reference():
    rng = np.random.default_rng(11)
    shape = (8, 1, 16, 16)
    target = np.where(rng.random(shape) < 0.1, rng.uniform(20, 100, shape), 0.0).astype(np.float32)
    noise = (target == 0) & (rng.random(shape) < 0.05)
    noisy = np.where(noise, rng.uniform(20, 100, shape), target).astype(np.float32)
    # Outputs on a coarse lattice, so that runs of grid thresholds share their counts (ties in F1).
    pred = np.round((0.3 * target + 0.2 * noisy + rng.normal(0, 8, shape)) / 5) * 5
    pred = pred.astype(np.float32)
    got, curve = demo_lib.heldout_scores(pred, target, DemoOptions(height=16, width=16), noisy=noisy)
    grid = reference_grid(target)
    want = reference_detection(pred, target, noisy, grid)
    np.testing.assert_allclose(curve.threshold, grid, rtol=1e-12, atol=0)
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(getattr(curve, key), want[key], err_msg=key)
    best = np.nanmax(want["f1"])
    assert (want["f1"] == best).sum() > 1  # the best F1 is a tie, which the lowest threshold wins
    assert 0 < want["noise_removed"] < 1 and 0 < want["signal_retained"] < 1
    assert_metrics_equal(got, {k: want[k] for k in CURVE_KEYS})
    alone = heldout_metrics(pred, target, DemoOptions(height=16, width=16), noisy=noisy)
    assert_metrics_equal(alone, {k: want[k] for k in CURVE_KEYS})


def test_detection_metrics_without_hits_or_input_are_none():
    target = np.zeros((2, 1, 8, 8), np.float32)
    got = heldout_metrics(np.zeros_like(target), target, DemoOptions(height=8, width=8))
    assert got["average_precision"] is None and got["best_f1"] is None
    assert got["signal_hits"] == 0 and got["signal_retained"] is None
    assert got["noise_hits"] is None and got["noise_removed"] is None  # the input was not given
    json.dumps(got, allow_nan=False)


def test_the_detection_threshold_is_half_the_smallest_hit_value():
    options = DemoOptions()
    assert options.detect_threshold == options.data_config().tof_min / 2 == 10.0


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_result():
    calls = []
    result = run_demo(DemoOptions(**TINY), progress=lambda *args: calls.append(args))
    return result, calls


def test_run_returns_one_run_per_loss_with_consistent_data(tiny_result):
    result, calls = tiny_result
    assert list(result.runs) == list(LOSS_NAMES)
    assert result.heldout.input.shape == result.heldout.target.shape == (5, 1, 16, 24)
    for run in result.runs.values():
        assert len(run.curve) == 3 and all(np.isfinite(run.curve))
        assert run.predictions.shape == (5, 1, 16, 24) and run.predictions.dtype == np.float32
        assert set(run.metrics) == METRIC_KEYS
        # The reported metrics are those of the stored predictions.
        want = reference_metrics(run.predictions, result.heldout.target, 10.0, 1.0, 1.0)
        assert_metrics_equal(run.metrics, want)
        assert run.metrics["final_train_loss"] == run.curve[-1]
        grid = reference_grid(result.heldout.target)
        detection = reference_detection(run.predictions, result.heldout.target, result.heldout.input, grid)
        assert_metrics_equal(run.metrics, detection)
        np.testing.assert_array_equal(run.detection.tp, detection["tp"])
        np.testing.assert_array_equal(run.detection.fp, detection["fp"])
        assert run.metrics["signal_retained"] == run.metrics["recall"]
    np.testing.assert_allclose(result.grid.values, grid, rtol=1e-12, atol=0)
    assert result.run_record()["thresholds"] == result.grid.describe()
    # Progress: one call per loss and step, reporting the curve's values.
    assert len(calls) == 3 * len(LOSS_NAMES)
    for name in LOSS_NAMES:
        mine = [c for c in calls if c[0] == name]
        assert [c[1] for c in mine] == [1, 2, 3] and all(c[2] == 3 for c in mine)
        assert [c[3] for c in mine] == result.runs[name].curve
    assert json.loads(json.dumps(result.metrics())) == result.metrics()


def test_every_loss_starts_from_the_same_weights_and_batch():
    options = DemoOptions(**{**TINY, "steps": 1, "hit_weight": 3.0, "nonhit_weight": 0.5})
    result = run_demo(options)
    # Rebuild the first step independently: the seeded initial model on the first training batch.
    model = demo_lib._initial_model(options)
    batch = demo_lib._training_batch(options, 0, options.data_config())
    with torch.no_grad():
        out = model(torch.from_numpy(batch.input)).double().numpy()
    y = batch.target.astype(np.float64)
    hit = y != 0
    sq = (out - y) ** 2
    want = {
        "mse": sq.mean(),
        "mae": np.abs(out - y).mean(),
        "acb_mse": 3.0 * sq[hit].mean() + 0.5 * sq[~hit].mean(),
    }
    for name, value in want.items():
        assert result.runs[name].curve[0] == pytest.approx(value, rel=1e-5), name


def test_runs_are_reproducible_and_independent_of_the_other_losses():
    a = run_demo(DemoOptions(**TINY, losses=("mse",)))
    b = run_demo(DemoOptions(**TINY, losses=("acb_mse", "mse")))
    c = run_demo(DemoOptions(**TINY, losses=("mse",), seed=1))
    assert a.runs["mse"].curve == b.runs["mse"].curve
    np.testing.assert_array_equal(a.runs["mse"].predictions, b.runs["mse"].predictions)
    np.testing.assert_array_equal(a.heldout.input, b.heldout.input)
    assert a.runs["mse"].curve != c.runs["mse"].curve
    assert not np.array_equal(a.heldout.target, c.heldout.target)


def test_global_random_state_and_thread_count_are_restored():
    torch_state = torch.get_rng_state().clone()
    np_state = np.random.get_state()[1].copy()
    threads = torch.get_num_threads()
    run_demo(DemoOptions(**{**TINY, "steps": 1, "threads": 2}, losses=("mae",)))
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_is_half_the_cpus_from_1_to_4(monkeypatch, cpus, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert demo_lib.default_threads() == threads


def test_figure_has_a_precision_recall_panel_in_the_loss_colours(tiny_result):
    from acbmse_cli._loss_names import LOSS_COLORS

    result, _ = tiny_result
    fig = demo_lib._draw_figure(result)
    (pr,) = [ax for ax in fig.axes if ax.get_xlabel().startswith("recall")]
    assert pr.get_ylabel().startswith("precision")
    legend = [t.get_text() for t in pr.get_legend().get_texts()]
    colours = {
        line.get_label(): line.get_color() for line in pr.get_lines() if not line.get_label().startswith("_")
    }
    for name, run in result.runs.items():
        ap = run.metrics["average_precision"]
        label = f"{demo_lib.LOSS_LABELS[name]}  AP {ap:.3f}"
        assert label in legend and colours[label] == LOSS_COLORS[name]
        best = run.metrics["best_f1"]
        stars = [
            line for line in pr.get_lines()
            if line.get_marker() == "*" and line.get_color() == LOSS_COLORS[name]
        ]  # fmt: skip
        if best is not None and best["precision"] is not None:
            assert len(stars) == 1
            assert stars[0].get_xydata().tolist() == [[best["recall"], best["precision"]]]
    (training,) = [ax for ax in fig.axes if ax.get_xlabel() == "training step"]
    drawn = {line.get_label(): line.get_color() for line in training.get_lines()}
    assert {drawn[demo_lib.LOSS_LABELS[n]] for n in result.runs} == {LOSS_COLORS[n] for n in result.runs}
    assert all(drawn[demo_lib.LOSS_LABELS[n]] == LOSS_COLORS[n] for n in result.runs)


def test_save_data_and_figure(tiny_result, tmp_path):
    result, _ = tiny_result
    written = demo_lib.save_data(result, tmp_path / "new" / "data")
    names = sorted(p.name for p in written)
    assert names == ["input.npy", "pred_acb_mse.npy", "pred_mae.npy", "pred_mse.npy", "target.npy"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "new/data/input.npy", allow_pickle=False), result.heldout.input
    )
    figure = demo_lib.save_figure(result, tmp_path / "fig")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "--steps"),
        ({"batch_size": 1.5}, "--batch-size"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**63}, "--seed"),
        ({"losses": ()}, "--losses"),
        ({"losses": ("mse", "huber")}, "--losses"),
        ({"hit_weight": -1.0}, "--hit-weight"),
        ({"nonhit_weight": float("inf")}, "--nonhit-weight"),
        ({"hit_weight": 0.0, "nonhit_weight": 0.0}, "both 0"),
        ({"height": 20}, "multiple of 8"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        DemoOptions(**kwargs)


# --------------------------------------------------------------------------- the command


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_json_output_shape_and_nothing_else(capsys):
    code, out, err = run_cli(capsys, *TINY_CLI, "--format", "json")
    assert code == 0
    assert err == ""  # no progress bars: stderr is not a terminal here
    data = json.loads(out)
    assert list(data) == ["mse", "mae", "acb_mse", "run"]
    del data["run"]  # how the numbers were made: test_cli_conventions checks it
    for metrics in data.values():
        assert set(metrics) == METRIC_KEYS
        assert {"recall", "precision", "f1", "blank_fraction"} <= set(metrics)
        best = metrics.pop("best_f1")
        assert best is None or set(best) == {"threshold", "f1", "recall", "precision"}
        assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())
        assert 0.0 <= metrics["blank_fraction"] <= 1.0


def saved_reference(data: Path, name: str, a: float = 1.0, b: float = 1.0) -> dict:
    """The reference metrics of the held-out set that ``--save-data`` wrote, for the model of ``name``:
    those at the detection threshold, and those over the grid with the input's noise hits."""
    pred = np.load(data / f"pred_{name}.npy", allow_pickle=False)
    target = np.load(data / "target.npy", allow_pickle=False)
    noisy = np.load(data / "input.npy", allow_pickle=False)
    detection = reference_detection(pred, target, noisy, reference_grid(target))
    return {**reference_metrics(pred, target, 10.0, a, b), **{k: detection[k] for k in CURVE_KEYS}}


def test_losses_subset_in_the_order_given(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, *TINY_CLI, "--format", "json", "--losses", "acb-mse, mse", "--hit-weight", "3",
        "--save-data", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert list(data) == ["acb_mse", "mse", "run"]
    del data["run"]
    for name, metrics in data.items():
        assert_metrics_equal(metrics, saved_reference(tmp_path, name, a=3.0))


def assert_demo_tables(out: str, data: Path, names: tuple[str, ...]) -> None:
    """The three demo tables in ``out`` hold the reference metrics of the ``--save-data`` files."""
    fixed, curve, errors = parse_tables(out)
    assert fixed.title == "hit finding at output > 10"
    assert fixed.headers == ["loss", "recall", "precision", "F1", "noise removed", "blank frames"]
    assert curve.title.startswith("hit finding over 201 thresholds, 0 to ")
    assert curve.headers == ["loss", "AP", "best F1", "at output >", "recall", "precision"]
    assert errors.headers == ["loss", "MSE hits", "MSE non-hits", "ACB-MSE"]
    labels = [demo_lib.LOSS_LABELS[name] for name in names]
    for name, label in zip(names, labels, strict=True):
        want = saved_reference(data, name)
        row = fixed.row(label)
        for cell, key in zip(row[1:5], ("recall", "precision", "f1", "noise_removed"), strict=True):
            assert_fixed(cell, want[key], 3)
        assert row[5] == f"{want['blank_frames']}/{want['frames']}"
        row, best = curve.row(label), want["best_f1"]
        assert_fixed(row[1], want["average_precision"], 3)
        for cell, key, digits in zip(
            row[2:], ("f1", "threshold", "recall", "precision"), (3, 1, 3, 3), strict=True
        ):
            assert_fixed(cell, best[key], digits)
        row = errors.row(label)
        assert_fixed(row[1], want["mse_hit"], 1)
        assert_fixed(row[2], want["mse_nonhit"], 2)
        assert_fixed(row[3], want["acb_mse"], 1)
    for table in (fixed, curve, errors):
        assert [r[0] for r in table.rows] == labels


def test_table_output(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = run_cli(capsys, *TINY_CLI, "--losses", "mse,acb_mse", "--save-data", str(tmp_path))
    assert code == 0
    # stderr names the files written; stdout holds the tables only
    assert err.splitlines() == [
        f"Wrote {tmp_path / n}.npy" for n in ("input", "target", "pred_mse", "pred_acb_mse")
    ]
    assert out.startswith("5 held-out frames of 16x24 after 3 steps of 2 frames (seed 0, cpu)\n")
    assert "MAE" not in out  # not asked for
    assert_demo_tables(out, tmp_path, ("mse", "acb_mse"))
    noise_hits = saved_reference(tmp_path, "mse")["noise_hits"]
    assert f"of the input's {noise_hits:,} noise hits" in out


def _render_demo(result, width: int) -> str:
    from rich.console import Console

    from acbmse_cli.report import render_demo_table

    out = io.StringIO()
    render_demo_table(result, Console(file=out, width=width, color_system=None))
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_tables_fit_the_terminal_whole(tiny_result, width):
    result, _ = tiny_result
    # The widest numbers a run prints: errors of a diverging model, weighted by a large A.
    wide = dataclasses.replace(result, runs={
        name: dataclasses.replace(run, metrics={**run.metrics, "mse_hit": 123456.7, "mse_nonhit": 98765.43,
                                                "acb_mse": 123456789.1})
        for name, run in result.runs.items()
    })  # fmt: skip
    for shown in (result, wide):
        text = _render_demo(shown, width)
        assert "…" not in text
        assert max(cell_len(line) for line in text.splitlines()) <= width
        assert len(parse_tables(text)) == 3
    assert "123456789.1" in _render_demo(wide, 80)


def test_progress_bars_on_a_terminal_stderr_and_quiet(capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal (rich 14 and later)
    monkeypatch.setenv("FORCE_COLOR", "1")  # the same for earlier rich releases
    code, out, err = run_cli(capsys, *TINY_CLI, "--format", "json", "--losses", "mae")
    assert code == 0 and "MAE" in err and "3/3" in err
    assert list(json.loads(out)) == ["mae", "run"]  # stdout stays plain JSON
    code, out, err = run_cli(capsys, *TINY_CLI, "--format", "json", "--losses", "mae", "--quiet")
    assert code == 0 and err == ""


def test_save_data_files_are_readable_by_numpy_and_by_eval(capsys, tmp_path):
    data, fig = tmp_path / "data", tmp_path / "fig"
    code, out, _ = run_cli(
        capsys, *TINY_CLI, "--format", "json", "--save-data", str(data), "--out", str(fig), "--seed", "4"
    )
    assert code == 0
    metrics = json.loads(out)
    x = np.load(data / "input.npy", allow_pickle=False)
    y = np.load(data / "target.npy", allow_pickle=False)
    assert x.shape == y.shape == (5, 1, 16, 24) and x.dtype == y.dtype == np.float32
    assert np.all(x[y != 0] == y[y != 0])  # the noise model: every signal hit is in the input
    for name in LOSS_NAMES:
        pred = np.load(data / f"pred_{name}.npy", allow_pickle=False)
        assert pred.shape == y.shape
        assert_metrics_equal(metrics[name], reference_metrics(pred, y, 10.0, 1.0, 1.0))
    assert (fig / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # `acbmse eval` reads the pair and reports the same per-class errors, and on its default grid the
    # same hit finding and denoising.
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(data / "pred_acb_mse.npy"), str(data / "target.npy"), "--format", "json",
              "--detect-curve", "--input", str(data / "input.npy"), "--detect-threshold", "10"])  # fmt: skip
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report["classes"]}
    mine = metrics["acb_mse"]
    assert by_name["hit"]["mse"] == pytest.approx(mine["mse_hit"], rel=1e-9)
    assert by_name["non-hit"]["mse"] == pytest.approx(mine["mse_nonhit"], rel=1e-9)
    assert report["acb_mse"] == pytest.approx(mine["acb_mse"], rel=1e-9)
    assert report["run"]["thresholds"] == metrics["run"]["thresholds"]
    assert report["detection_curve"]["average_precision"] == mine["average_precision"]
    assert report["detection_curve"]["best_f1"] == mine["best_f1"]
    denoising = report["denoising"]
    assert {k: denoising[k] for k in ("signal_hits", "signal_retained", "noise_hits", "noise_removed")} == {
        k: mine[k] for k in ("signal_hits", "signal_retained", "noise_hits", "noise_removed")
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--steps", "0"],
        ["--steps", "many"],
        ["--batch-size", "-2"],
        ["--seed", "-1"],
        ["--seed", "18446744073709551616"],
        ["--seed", str(2**63)],
        ["--eval-frames", "0"],
        ["--losses", ""],
        ["--losses", "mse,,mae"],
        ["--losses", "mse,mse"],
        ["--losses", "mse,huber"],
        ["--hit-weight", "-1"],
        ["--hit-weight", "nan"],
        ["--nonhit-weight", "inf"],
        ["--hit-weight", "1e39"],
        ["--hit-weight", "0", "--nonhit-weight", "0"],
        ["--device", "tpu"],
        ["--device", "cuda:99"],
        ["--format", "xml"],
        ["--threads", "0"],
        ["--frame-size", "20x20"],
        ["--frame-size", "4x8"],
        ["--frame-size", "big"],
        ["--no-such-option"],
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, args):
    data = tmp_path / "data"
    code, out, err = run_cli(capsys, "--save-data", str(data), "--out", str(tmp_path / "fig"), *args)
    assert code == 2
    assert out == ""
    assert err.startswith("acbmse: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--out", "--save-data"])
def test_output_folder_that_is_a_file_is_refused(capsys, tmp_path, option):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli(capsys, *TINY_CLI, option, str(blocker))
    assert code == 2 and out == ""
    assert err.startswith(f"acbmse: error: {option} {blocker}") and err.count("\n") == 1


def test_cli_defaults_are_the_library_defaults():
    import typer.main

    command = typer.main.get_command(app).commands["demo"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in command.params}
    options = DemoOptions()
    assert defaults["steps"] == options.steps
    assert defaults["batch_size"] == options.batch_size
    assert defaults["seed"] == options.seed
    assert defaults["eval_frames"] == options.eval_frames
    assert defaults["hit_weight"] == options.hit_weight and defaults["nonhit_weight"] == options.nonhit_weight
    assert tuple(defaults["losses"].split(",")) == options.losses
    assert defaults["frame_size"] == f"{options.height}x{options.width}"


def test_end_to_end_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "acbmse_cli",
            "demo",
            *TINY_CLI,
            "--format",
            "json",
            "--losses",
            "mse",
            "--save-data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"Wrote {tmp_path / n}.npy" for n in ("input", "target", "pred_mse")]
    data = json.loads(proc.stdout)
    assert list(data) == ["mse", "run"]
    assert_metrics_equal(data["mse"], saved_reference(tmp_path, "mse"))


@pytest.mark.parametrize("option", ["--out", "--save-data"])
def test_empty_output_folder_is_refused(capsys, tmp_path, monkeypatch, option):
    monkeypatch.chdir(tmp_path)  # an empty name must not mean the current folder
    code, out, err = run_cli(capsys, *TINY_CLI, option, "")
    assert code == 2 and out == ""
    assert err.startswith(f"acbmse: error: {option} is empty") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_largest_seed_is_accepted():
    assert DemoOptions(seed=2**63 - 1, **TINY).seed == 2**63 - 1


def _stamp(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("blocked", ["data/target.npy", "fig/demo.png"])
def test_a_destination_that_is_a_folder_writes_nothing(capsys, tmp_path, blocked):
    data, fig = tmp_path / "data", tmp_path / "fig"
    data.mkdir()
    fig.mkdir()
    (data / "input.npy").write_bytes(b"old input")
    (fig / "demo.png").write_bytes(b"old figure") if blocked != "fig/demo.png" else None
    (tmp_path / blocked).mkdir()
    before = {"data": _stamp(data), "fig": _stamp(fig)}
    code, out, err = run_cli(capsys, *TINY_CLI, "-q", "--save-data", str(data), "--out", str(fig))
    assert code == 2 and out == ""
    assert err.startswith("acbmse: error: cannot write ") and "is a folder" in err and err.count("\n") == 1
    assert {"data": _stamp(data), "fig": _stamp(fig)} == before  # nothing replaced, nothing added
    assert [p for p in tmp_path.rglob(".*")] == []  # no temporaries


def test_a_failing_rename_leaves_no_temporaries(tiny_result, tmp_path, monkeypatch):
    result, _ = tiny_result
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(demo_lib.os, "replace", failing_replace)
    with pytest.raises(InputError, match="Input/output error"):
        demo_lib.save_outputs(result, data_dir=tmp_path / "data", figure_dir=tmp_path / "fig")
    assert [p for p in tmp_path.rglob(".*")] == []
    assert calls["n"] == 2  # it stopped at the failure


def test_a_failing_writer_replaces_nothing(tiny_result, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    result, _ = tiny_result
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.npy").write_bytes(b"old input")

    def failing_savefig(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    with pytest.raises(InputError, match="No space left"):
        demo_lib.save_outputs(result, data_dir=data, figure_dir=tmp_path / "fig")
    assert _stamp(data) == {"input.npy": b"old input"}  # the data files wait for the figure
    assert [p for p in tmp_path.rglob(".*")] == []
