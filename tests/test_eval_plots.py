"""``acbmse eval --plot``: the figures exist, are valid images of their format, follow the options,
draw what the evaluation counted, and are written all together or not at all."""

from __future__ import annotations

import io
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cli_run import run_cli as run

from acbmse_cli import eval_plots
from acbmse_cli._figures import new_figure
from acbmse_cli._loss_names import LOSS_COLORS, LOSS_LABELS
from acbmse_cli.cli import main
from acbmse_cli.errors import InputError
from acbmse_cli.evaluate import EvalComparison, EvalOptions, evaluate_many
from acbmse_cli.histograms import error_bin_edges

ALL = {"detection", "errors", "calibration", "worst"}


def frames(
    folder: Path,
    shape: tuple[int, ...] = (12, 1, 10, 14),
    seed: int = 0,
    names: tuple[str, ...] = ("pred_mse",),
) -> dict[str, Path]:
    """A sparse target, the noisy input it was made from and predictions of it, saved as ``.npy``."""
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.08, rng.uniform(20.0, 100.0, shape), 0.0).astype(np.float32)
    noisy = np.maximum(target, np.where(rng.random(shape) < 0.1, rng.uniform(1.0, 100.0, shape), 0.0))
    paths = {"target": folder / "target.npy", "input": folder / "input.npy"}
    np.save(paths["target"], target)
    np.save(paths["input"], noisy.astype(np.float32))
    for k, name in enumerate(names):
        pred = target * rng.uniform(0.6, 1.1, shape) + rng.normal(0.0, 2.0 + k, shape) + 0.2 * noisy
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], pred.astype(np.float32))
    return paths


def eval_plot(
    paths: dict[str, Path], out: Path, capsys: pytest.CaptureFixture[str], *options: Any, preds: int = 1
) -> set[str]:
    """Run ``acbmse eval --plot out``; the figure stems written."""
    files = [p for name, p in paths.items() if name not in ("target", "input")][:preds]
    code, _, err = run(
        ["eval", *files, paths["target"], "--plot", out, "--quiet", "--device", "cpu", *options], capsys
    )
    assert code == 0, err
    written = sorted(out.iterdir())
    assert err.splitlines() == [f"Wrote {p}" for p in _in_figure_order(written)]
    return {p.stem for p in written}


def _in_figure_order(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: eval_plots.FIGURE_NAMES.index(p.stem))


def check_image(data: bytes, image_format: str) -> None:
    """A complete image file of the format, that a reader of the format opens."""
    if image_format == "png":
        import matplotlib.image

        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300 and image.shape[2] in (3, 4)
    elif image_format == "svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    else:
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        assert b"/Subtype /Type3" not in data  # journals refuse Type 3 fonts
        assert b"/FontFile2" in data  # TrueType, embedded


# --------------------------------------------------------------------------- files and formats


@pytest.mark.parametrize("image_format", ["png", "svg", "pdf"])
def test_every_figure_is_a_valid_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], image_format: str
) -> None:
    paths = frames(tmp_path, names=("pred_mse", "pred_acb_mse"))
    options = ["--detect-curve", "--detect-threshold", "10", "--input", paths["input"], "--per-sample"]
    out = tmp_path / "figures"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stems = eval_plot(paths, out, capsys, *options, "--image-format", image_format, preds=2)
    assert stems == ALL
    for path in out.iterdir():
        assert path.suffix == f".{image_format}"
        check_image(path.read_bytes(), image_format)


@pytest.mark.parametrize(
    ("shape", "options", "expected"),
    [
        ((12, 1, 10, 14), [], {"errors", "calibration"}),
        ((12, 1, 10, 14), ["--detect-threshold", "10"], {"detection", "errors", "calibration"}),
        ((12, 1, 10, 14), ["--detect-curve"], {"detection", "errors", "calibration"}),
        ((12, 1, 10, 14), ["--per-sample", "--top", "2"], {"errors", "calibration", "worst"}),
        ((12, 3, 5, 4), ["--per-sample"], {"errors", "calibration", "worst"}),  # stacked along the rows
        ((12, 1, 40), ["--per-sample"], {"errors", "calibration"}),  # one dimension: not an image
        ((40,), ["--per-sample"], {"errors", "calibration"}),
        ((12, 1, 10, 14), ["--labels", "LABELS", "--class-weights", "1,2,3"], {"errors"}),
        (
            (12, 1, 10, 14),
            ["--labels", "LABELS", "--class-weights", "1,2,3", "--per-sample"],
            {"errors", "worst"},
        ),
    ],
)
def test_the_figures_follow_the_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shape: tuple[int, ...],
    options: list[str],
    expected: set[str],
) -> None:
    paths = frames(tmp_path, shape)
    if "LABELS" in options:
        labels = np.random.default_rng(1).integers(0, 3, shape).astype(np.int64)
        np.save(tmp_path / "labels.npy", labels)
        options = [str(tmp_path / "labels.npy") if o == "LABELS" else o for o in options]
    assert eval_plot(paths, tmp_path / "out", capsys, *options) == expected


def test_json_stays_clean_and_the_figures_are_told_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    paths = frames(tmp_path)
    out = tmp_path / "deep" / "figures"  # created, with its parent
    code, stdout, err = run(
        ["eval", paths["pred_mse"], paths["target"], "--plot", out, "--format", "json", "--quiet"], capsys
    )
    assert code == 0, err
    assert json.loads(stdout)["pred"] == str(paths["pred_mse"])
    assert err.splitlines() == [f"Wrote {out / 'errors.png'}", f"Wrote {out / 'calibration.png'}"]


# --------------------------------------------------------------------------- what is drawn


def comparison_of(paths: dict[str, Path], *preds: str, **options: Any) -> EvalComparison:
    return evaluate_many(
        [paths[p] for p in preds], paths["target"], EvalOptions(figure_stats=True, device="cpu", **options)
    )


def reference_error_counts(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """numpy's histogram of prediction - target (float64) over the class's elements."""
    error = pred.astype(np.float64)[mask] - target.astype(np.float64)[mask]
    counts, _ = np.histogram(error, bins=np.asarray(error_bin_edges()))
    return counts


def test_error_histograms_count_every_element_of_each_class(tmp_path: Path) -> None:
    names = ("pred_mse", "pred_mae")
    paths = frames(tmp_path, (30, 1, 16, 16), names=names)
    comparison = comparison_of(paths, *names, hit_threshold=0.5, chunk_elements=1000)
    data = eval_plots.error_histograms(comparison)
    target = np.load(paths["target"])
    hits = np.abs(target) > 0.5
    assert data.classes == ("non-hit", "hit")
    assert data.counts.shape == (2, 2, len(error_bin_edges()) - 1)
    for p, (name, report) in enumerate(zip(names, comparison.reports, strict=True)):
        pred = np.load(paths[name])
        for c, mask in enumerate((~hits, hits)):
            assert data.counts[p, c].sum() == report.classes[c].count == mask.sum()
            np.testing.assert_array_equal(data.counts[p, c], reference_error_counts(pred, target, mask))
    styles = eval_plots.prediction_styles([r.pred for r in comparison.reports])
    fig = eval_plots.draw_errors(comparison, styles)
    for c, ax in enumerate(fig.axes[: len(data.classes)]):
        drawn = [patch.get_data().values for patch in ax.patches]
        assert len(drawn) == len(names)
        for p, values in enumerate(drawn):
            np.testing.assert_array_equal(values, data.counts[p, c])
        assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
        assert "prediction − target" in ax.get_xlabel() and ax.get_ylabel()


def test_calibration_counts_the_true_hits(tmp_path: Path) -> None:
    paths = frames(tmp_path, (20, 1, 12, 12))
    comparison = comparison_of(paths, "pred_mse")
    report = comparison.reports[0]
    assert report.figure_stats is not None and report.figure_bounds is not None
    target = np.load(paths["target"])
    assert int(report.figure_stats.calibration.sum()) == int((target > 0).sum())
    low, high = report.figure_bounds
    assert low == 0.0 and high == target.max()  # from the hit threshold: missed hits stay in view
    fig = eval_plots.draw_calibration(comparison, eval_plots.prediction_styles([report.pred]))
    ax = fig.axes[0]
    assert ax.get_xlim() == (low, high) and ax.get_ylim() == (low, high)
    assert "true value" in ax.get_xlabel() and "predicted" in ax.get_ylabel()
    identity = [line for line in ax.get_lines() if line.get_label() == "prediction = true value"]
    assert len(identity) == 1 and list(identity[0].get_xdata()) == list(identity[0].get_ydata())


def test_calibration_tells_the_hits_beyond_its_range(tmp_path: Path) -> None:
    paths = frames(tmp_path, (20, 1, 12, 12))
    np.save(tmp_path / "pred_zero.npy", np.full((20, 1, 12, 12), -5.0, np.float32))  # below the range
    paths["pred_zero"] = tmp_path / "pred_zero.npy"
    comparison = comparison_of(paths, "pred_zero", "pred_mse")
    fig = eval_plots.draw_calibration(
        comparison, eval_plots.prediction_styles([r.pred for r in comparison.reports])
    )
    notes = [[t.get_text() for t in ax.texts] for ax in fig.axes[:2]]
    assert len(notes[0]) == 1 and notes[0][0].startswith("100% of the hits predicted below")


def test_labelled_classes_have_no_calibration_bounds(tmp_path: Path) -> None:
    paths = frames(tmp_path)
    labels = np.random.default_rng(2).integers(0, 2, (12, 1, 10, 14))
    np.save(tmp_path / "labels.npy", labels)
    comparison = comparison_of(paths, "pred_mse", labels=tmp_path / "labels.npy", class_weights=(1.0, 1.0))
    assert comparison.reports[0].figure_bounds is None
    assert set(eval_plots.eval_figures(comparison)) == {"errors"}


def test_precision_recall_steps_enclose_the_average_precision(tmp_path: Path) -> None:
    paths = frames(tmp_path, (20, 1, 12, 12), names=("pred_mse", "pred_acb_mse"))
    comparison = comparison_of(paths, "pred_mse", "pred_acb_mse", detect_curve=True, detect_threshold=10.0)
    styles = eval_plots.prediction_styles([r.pred for r in comparison.reports])
    fig = eval_plots.draw_detection(comparison, styles)
    ax = fig.axes[0]
    assert "recall" in ax.get_xlabel() and "precision" in ax.get_ylabel()
    suptitle = fig._suptitle  # Figure.get_suptitle is matplotlib 3.8+, the floor is 3.7
    assert suptitle is not None and str(paths["target"]) in suptitle.get_text()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for report, style in zip(comparison.reports, styles, strict=True):
        curve = report.detection_curve
        assert curve is not None and curve.average_precision is not None
        (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"{style.label}: AP")]
        assert line.get_color() == style.color and line.get_drawstyle() == "steps-pre"
        recall, precision = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        area = float(np.sum(np.diff(recall) * precision[1:]))  # steps-pre: y[k] over (x[k-1], x[k]]
        assert area == pytest.approx(curve.average_precision, abs=1e-12)
        assert any(f"AP {curve.average_precision:.3f}" in text for text in legend)
    assert len(fig.axes) == 1  # no --input: no denoising panel


def test_detection_without_a_curve_draws_the_threshold_points(tmp_path: Path) -> None:
    paths = frames(tmp_path, names=("pred_mse", "pred_mae"))
    comparison = comparison_of(paths, "pred_mse", "pred_mae", detect_threshold=10.0, input=paths["input"])
    fig = eval_plots.draw_detection(
        comparison, eval_plots.prediction_styles([r.pred for r in comparison.reports])
    )
    assert len(fig.axes) == 2  # precision-recall, and denoising with --input
    pr, denoising = fig.axes
    for report in comparison.reports:
        assert report.detection is not None and report.denoising is not None
        points = [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in pr.get_lines() if len(ln.get_xdata()) == 1]
        assert (report.detection.recall, report.detection.precision) in points
        points = [
            (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in denoising.get_lines() if len(ln.get_xdata()) == 1
        ]
        assert (report.denoising.signal_retained, report.denoising.noise_removed) in points
    assert "noise removed" in denoising.get_ylabel() and "signal retained" in denoising.get_xlabel()


# --------------------------------------------------------------------------- worst samples


def test_worst_samples_are_read_sample_by_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("pred_mse", "pred_mae")
    shape = (10, 1, 6, 8)
    paths = frames(tmp_path, shape, names=names)
    np.savez_compressed(tmp_path / "target.npz", t=np.load(paths["target"]))  # a stream, read in order
    comparison = evaluate_many(
        [paths[n] for n in names],
        tmp_path / "target.npz",
        EvalOptions(target_key="t", per_sample=True, top=3, figure_stats=True, device="cpu"),
    )
    reads: list[tuple[str, int, int]] = []
    real_open = eval_plots.open_array

    def recording_open(path: Any, **kwargs: Any) -> Any:
        source = real_open(path, **kwargs)
        real_read = source.read

        def read(start: int, stop: int) -> Any:
            reads.append((Path(path).name, start, stop))
            return real_read(start, stop)

        source.read = read  # type: ignore[method-assign]
        return source

    monkeypatch.setattr(eval_plots, "open_array", recording_open)
    samples = eval_plots.read_worst_samples(comparison)
    worst = [[s.index for s in r.worst_samples or ()] for r in comparison.reports]
    expected: list[int] = []
    for rank in range(3):  # each prediction's worst in turn, each sample once
        for lists in worst:
            if lists[rank] not in expected and len(expected) < eval_plots.WORST_SHOWN:
                expected.append(lists[rank])
    assert [s.index for s in samples] == expected
    row = 6 * 8
    for name in ("target.npz", "pred_mse.npy", "pred_mae.npy"):
        ranges = [(start, stop) for file, start, stop in reads if file == name]
        assert ranges == [(i * row, (i + 1) * row) for i in sorted(expected)]  # those samples, in file order
    target = np.load(paths["target"])
    for sample in samples:
        np.testing.assert_array_equal(sample.target, target[sample.index, 0])
        for name, pred in zip(names, sample.preds, strict=True):
            np.testing.assert_array_equal(pred, np.load(paths[name])[sample.index, 0])
        assert sample.acb_mse == comparison.reports[sample.owner].worst_samples[sample.rank - 1].acb_mse  # type: ignore[index]


def test_worst_figure_one_row_per_sample(tmp_path: Path) -> None:
    paths = frames(tmp_path, (10, 1, 6, 8), names=("pred_mse", "pred_acb_mse"))
    comparison = comparison_of(paths, "pred_mse", "pred_acb_mse", per_sample=True)
    samples = eval_plots.read_worst_samples(comparison)
    styles = eval_plots.prediction_styles([r.pred for r in comparison.reports])
    fig = eval_plots.draw_worst(comparison, samples, styles)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == len(samples) * (1 + 2 * 2)
    titles = [ax.get_title() for ax in images[:5]]
    assert titles == ["target", "pred_mse.npy\nprediction", "pred_acb_mse.npy\nprediction",
                      "pred_mse.npy\nerror", "pred_acb_mse.npy\nerror"]  # fmt: skip
    error = images[3].get_images()[0].get_array()
    np.testing.assert_allclose(error, samples[0].preds[0] - samples[0].target)


# --------------------------------------------------------------------------- colours


def test_a_loss_has_its_colour_in_every_figure() -> None:
    from acbmse_cli import plots

    assert {name: style["color"] for name, style in plots._STYLE.items()} == LOSS_COLORS
    cases = {
        "runs/pred_mse.npy": "mse",
        "pred_mae.npy": "mae",
        "pred_acb_mse.npy": "acb_mse",
        "model-acbmse.pt": "acb_mse",
        "ACB-MSE_out.npz": "acb_mse",
        "pred.npy": None,
        "mse_vs_mae.npy": None,  # two losses: neither
        "amsel.npy": None,
    }
    for path, loss in cases.items():
        assert eval_plots.loss_of_file(path) == loss, path
    from acbmse_cli import demo

    fig = new_figure()
    runs = {name: SimpleNamespace(curve=[4.0, 2.0, 1.0]) for name in LOSS_COLORS}
    demo._plot_training_curves(fig.add_subplot(), SimpleNamespace(runs=runs))  # type: ignore[arg-type]
    drawn = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert {name: drawn[LOSS_LABELS[name]] for name in LOSS_COLORS} == LOSS_COLORS
    styles = eval_plots.prediction_styles(
        ["d/pred_mse.npy", "d/pred_mae.npy", "d/pred_acb_mse.npy", "d/unet.npy"]
    )
    assert [s.color for s in styles[:3]] == [LOSS_COLORS["mse"], LOSS_COLORS["mae"], LOSS_COLORS["acb_mse"]]
    assert styles[3].color not in LOSS_COLORS.values()
    assert [s.label for s in styles] == ["pred_mse.npy", "pred_mae.npy", "pred_acb_mse.npy", "unet.npy"]


def test_every_prediction_has_its_own_colour_and_label() -> None:
    styles = eval_plots.prediction_styles(["a/pred_mse.npy", "b/pred_mse.npy", "c.npy", "c.npy"])
    assert len({s.color for s in styles}) == 4  # two claim MSE: neither takes its colour
    assert len({s.label for s in styles}) == 4
    assert styles[0].label == "a/pred_mse.npy"
    many = eval_plots.prediction_styles([f"p{k}.npy" for k in range(10)])
    assert len({s.color for s in many}) == 10


# --------------------------------------------------------------------------- all or nothing


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupted_or_failed_write_leaves_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failure: type[BaseException],
) -> None:
    from matplotlib.figure import Figure

    paths = frames(tmp_path)
    out = tmp_path / "old"
    out.mkdir()
    (out / "errors.png").write_bytes(b"old image")
    calls = {"n": 0}
    real_savefig = Figure.savefig

    def failing_savefig(self: Figure, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # detection and errors are drawn, calibration fails
            raise (
                KeyboardInterrupt if failure is KeyboardInterrupt else OSError(28, "No space left on device")
            )
        real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    args = ["eval", paths["pred_mse"], paths["target"], "--detect-curve", "--quiet", "--device", "cpu"]
    code, stdout, err = run([*args, "--plot", out], capsys)
    assert code == (130 if failure is KeyboardInterrupt else 2)
    assert err.count("\n") <= 1 and "Traceback" not in err  # typer 0.29 ends an interrupt silently
    assert stdout == ""  # the figures come before the report: no report without them
    assert sorted(p.name for p in out.iterdir()) == ["errors.png"]  # no temporaries, nothing new
    assert (out / "errors.png").read_bytes() == b"old image"
    calls["n"] = 0
    code, _, _ = run([*args, "--plot", tmp_path / "fresh" / "deep"], capsys)
    assert code != 0
    assert not (tmp_path / "fresh").exists()  # the folders it made are removed again


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = frames(tmp_path)
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    missing = tmp_path / "missing.npy"  # read only if the evaluation started
    for out in (a_file, a_file / "sub"):
        code, stdout, err = run(["eval", missing, paths["target"], "--plot", out], capsys)
        assert code == 2 and stdout == ""
        assert err.startswith("acbmse: error: --plot") and err.count("\n") == 1, err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:  # as if not root, in a read-only folder
        return False if Path(path) == locked else real_access(path, mode, **kwargs)

    monkeypatch.setattr("acbmse_cli._files.os.access", access)
    code, stdout, err = run(["eval", missing, paths["target"], "--plot", locked / "figures"], capsys)
    assert code == 2 and "not writable" in err and "missing.npy" not in err
    assert list(locked.iterdir()) == []


def test_library_refuses_what_it_cannot_draw(tmp_path: Path) -> None:
    paths = frames(tmp_path)
    comparison = evaluate_many([paths["pred_mse"]], paths["target"], EvalOptions(device="cpu"))
    with pytest.raises(ValueError, match="figure_stats"):
        eval_plots.write_eval_figures(comparison, tmp_path / "out")
    with pytest.raises(InputError, match="--image-format"):
        eval_plots.write_eval_figures(comparison_of(paths, "pred_mse"), tmp_path / "out", "jpg")
    assert not (tmp_path / "out").exists()


def test_a_figure_path_taken_by_a_folder_is_refused_before_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    (tmp_path / "figs" / "errors.png").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "eval",
                str(tmp_path / "missing.npy"),
                str(tmp_path / "gone.npy"),
                "--plot",
                str(tmp_path / "figs"),
            ]
        )
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert "errors.png" in err and "missing.npy" not in err
