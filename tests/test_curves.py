"""``acbmse curves``: the sweeps against an independent numpy reference, the figures, the options.

The reference below rebuilds the synthetic images of ``../shared/reference/NOTES.md``
in numpy float64 and measures them with the textbook formulas; the gradient
sweep is checked against the analytic derivatives.  The numbers read off the
seed's figures (NOTES.md) are checked literally as well.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tables import assert_printed, parse_tables

from acbmse_cli.cli import main
from acbmse_cli.curves import compute_curves, kept_pixels, recovery_image_size
from acbmse_cli.errors import InputError
from acbmse_cli.plots import IMAGE_NAMES, draw_figures, quiet_parser_deprecations, write_figures

REL = 1e-12


# --------------------------------------------------------------------------- helpers


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["curves", *args])
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), captured.out, captured.err


def reference_losses(pred: np.ndarray, target: np.ndarray, a: float, b: float) -> tuple[float, float, float]:
    """MSE, MAE and ACB-MSE of one image pair, by the textbook formulas (float64)."""
    err = pred.astype(np.float64) - target.astype(np.float64)
    sq = err * err
    hit = target != 0
    acb = 0.0
    if hit.any():
        acb += a * sq[hit].mean()
    if (~hit).any():
        acb += b * sq[~hit].mean()
    return float(sq.mean()), float(np.abs(err).mean()), float(acb)


def reference_signal_size(
    pixels: int, value: float, recovery: float, a: float, b: float
) -> dict[str, list[float]]:
    hits = list(range(2, pixels + 1, 2))
    if hits[-1] != pixels:
        hits.append(pixels)
    out: dict[str, list[float]] = {"x": [], "mse": [], "mae": [], "acb_mse": []}
    for h in hits:
        target = np.zeros(pixels)
        target[:h] = value
        pred = np.zeros(pixels)
        pred[: math.floor(recovery * h + 0.5)] = value  # kept pixels: nearest, halves up (documented)
        mse, mae, acb = reference_losses(pred, target, a, b)
        out["x"].append(100.0 * h / pixels)
        out["mse"].append(mse)
        out["mae"].append(mae)
        out["acb_mse"].append(acb)
    return out


def reference_gradient(pixels: int, value: float, recovery: float, a: float) -> dict[str, list[float]]:
    """Analytic gradient mass on the hit pixels: each missed hit pixel contributes |d loss / d pred|."""
    hits = list(range(2, pixels + 1, 2))
    if hits[-1] != pixels:
        hits.append(pixels)
    out: dict[str, list[float]] = {"x": [], "mse": [], "mae": [], "acb_mse": []}
    for h in hits:
        missed = h - math.floor(recovery * h + 0.5)
        out["x"].append(100.0 * h / pixels)
        out["mse"].append(missed * 2 * value / pixels)
        out["mae"].append(missed / pixels)
        out["acb_mse"].append(missed * 2 * a * value / h)
    return out


def reference_recovery(pixels: int, value: float, a: float, b: float) -> dict[str, list[float]]:
    signal = max(1, math.floor(pixels / 6 + 0.5))
    image = 6 * signal
    target = np.zeros(image)
    target[:signal] = value
    out: dict[str, list[float]] = {"x": [], "mse": [], "mae": [], "acb_mse": []}
    for returned in range(image + 1):
        pred = np.zeros(image)
        pred[:returned] = value
        mse, mae, acb = reference_losses(pred, target, a, b)
        out["x"].append(returned / signal)
        out["mse"].append(mse)
        out["mae"].append(mae)
        out["acb_mse"].append(acb)
    return out


def assert_sweep(
    actual: dict[str, list[float]], expected: dict[str, list[float]], abs_tol: float = 0.0
) -> None:
    assert set(actual) == {"x", "mse", "mae", "acb_mse"}
    for key in ("x", "mse", "mae", "acb_mse"):
        assert len(actual[key]) == len(expected[key]), key
        assert actual[key] == pytest.approx(expected[key], rel=REL, abs=abs_tol), key


@pytest.fixture(scope="module")
def default_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[float]]]:
    out = tmp_path_factory.mktemp("default") / "Images"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "acbmse_cli",
            "curves",
            "--out",
            str(out),
            "--format",
            "json",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"Wrote {out / name}.png" for name in IMAGE_NAMES]
    data = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in IMAGE_NAMES]
    return data  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the numbers of NOTES.md


def test_json_has_the_three_sweeps(default_json: dict[str, dict[str, list[float]]]) -> None:
    assert list(default_json) == ["signal_size", "recovery", "gradient", "run"]
    for sweep in (default_json[name] for name in ("signal_size", "recovery", "gradient")):
        assert list(sweep) == ["x", "mse", "mae", "acb_mse"]
        assert all(isinstance(v, float) for series in sweep.values() for v in series)


def test_figure_1_numbers(default_json: dict[str, dict[str, list[float]]]) -> None:
    sweep = default_json["signal_size"]
    x = np.arange(2, 101, 2, dtype=np.float64)
    assert sweep["x"] == pytest.approx(x.tolist(), rel=REL)
    # NOTES.md: ACB-MSE flat at 0.5 * 100^2, even at 100% (empty non-hit class adds nothing).
    assert sweep["acb_mse"] == pytest.approx([5000.0] * 50, rel=REL)
    assert sweep["mse"] == pytest.approx((x / 100 * 5000).tolist(), rel=REL)
    assert sweep["mae"] == pytest.approx((x / 100 * 50).tolist(), rel=REL)
    assert (sweep["mse"][0], sweep["mse"][-1], sweep["mae"][0], sweep["mae"][-1]) == pytest.approx(
        (100.0, 5000.0, 1.0, 50.0), rel=REL
    )
    assert_sweep(sweep, reference_signal_size(100, 100.0, 0.5, 1.0, 1.0))


def test_figure_2_numbers(default_json: dict[str, dict[str, list[float]]]) -> None:
    sweep = default_json["recovery"]
    # The signal is one sixth of the image exactly: 17 of 102 pixels for --pixels 100.
    assert sweep["x"][0] == 0.0
    assert sweep["x"][-1] == pytest.approx(6.0, rel=REL)
    start = (sweep["acb_mse"][0], sweep["mse"][0], sweep["mae"][0])
    end = (sweep["acb_mse"][-1], sweep["mse"][-1], sweep["mae"][-1])
    assert start == pytest.approx((1e4, 1e4 / 6, 100 / 6), rel=REL)
    assert end == pytest.approx((1e4, 1e4 * 5 / 6, 100 * 5 / 6), rel=REL)
    # As read off the seed's figure: 10^4 / 1667 / 16.7 and 10^4 / 8333 / 83.3.
    assert (round(start[1]), round(start[2], 1), round(end[1]), round(end[2], 1)) == (1667, 16.7, 8333, 83.3)
    exact = [i for i, x in enumerate(sweep["x"]) if x == 1.0]
    assert exact == [17]
    assert (sweep["mse"][17], sweep["mae"][17], sweep["acb_mse"][17]) == (0.0, 0.0, 0.0)
    assert all(v > 0 for k in ("mse", "mae", "acb_mse") for i, v in enumerate(sweep[k]) if i != 17)
    assert_sweep(sweep, reference_recovery(100, 100.0, 1.0, 1.0))


def test_figure_3_gradient_numbers(default_json: dict[str, dict[str, list[float]]]) -> None:
    sweep = default_json["gradient"]
    assert_sweep(sweep, reference_gradient(100, 100.0, 0.5, 1.0))
    # ACB-MSE: A * value at 50% recovery, whatever the signal size.
    assert sweep["acb_mse"] == pytest.approx([100.0] * 50, rel=REL)


# --------------------------------------------------------------------------- options change the numbers


@pytest.mark.parametrize(
    ("a", "b", "value", "recovery", "pixels"),
    [
        (2.0, 3.0, 100.0, 0.5, 100),
        (0.25, 0.0, 7.5, 0.3, 37),
        (0.0, 1.5, 1.0, 1.0, 2),
        (1.0, 1.0, 3.0, 0.0, 13),
    ],
)
def test_sweeps_match_reference(a: float, b: float, value: float, recovery: float, pixels: int) -> None:
    curves = compute_curves(
        hit_weight=a, nonhit_weight=b, value=value, recovery=recovery, pixels=pixels, device="cpu"
    )
    data = curves.as_dict()
    assert_sweep(data["signal_size"], reference_signal_size(pixels, value, recovery, a, b))
    assert_sweep(data["recovery"], reference_recovery(pixels, value, a, b))
    assert_sweep(data["gradient"], reference_gradient(pixels, value, recovery, a), abs_tol=1e-15)


def test_weights_scale_the_balanced_loss_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(
        capsys, "--hit-weight", "2", "--nonhit-weight", "3", "--out", str(tmp_path), "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    # Figure 1: only hit pixels are wrong, so ACB-MSE = A * 5000; MSE and MAE do not see the weights.
    assert data["signal_size"]["acb_mse"] == pytest.approx([2 * 5000.0] * 50, rel=REL)
    assert data["signal_size"]["mse"][-1] == pytest.approx(5000.0, rel=REL)
    # Figure 2: nothing returned costs A * value^2, the whole image lit costs B * value^2.
    assert data["recovery"]["acb_mse"][0] == pytest.approx(2 * 1e4, rel=REL)
    assert data["recovery"]["acb_mse"][-1] == pytest.approx(3 * 1e4, rel=REL)
    assert data["recovery"]["mse"][0] == pytest.approx(1e4 / 6, rel=REL)
    # Figure 3: the push on the signal scales with A (A * value at 50% recovery).
    assert data["gradient"]["acb_mse"] == pytest.approx([2 * 100.0] * 50, rel=REL)


def test_value_scales_losses_and_gradients(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "--value", "10", "--out", str(tmp_path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["signal_size"]["acb_mse"] == pytest.approx([50.0] * 50, rel=REL)  # 0.5 * 10^2
    assert data["signal_size"]["mae"][-1] == pytest.approx(5.0, rel=REL)
    assert data["gradient"]["acb_mse"] == pytest.approx([10.0] * 50, rel=REL)


def test_kept_pixels_rounding() -> None:
    assert [kept_pixels(0.5, h) for h in (2, 4, 100)] == [1, 2, 50]
    assert kept_pixels(0.3, 5) == 2  # 1.5: halves go up
    assert kept_pixels(0.3, 2) == 1  # 0.6
    assert kept_pixels(0.2, 2) == 0  # 0.4
    assert kept_pixels(1.0, 7) == 7
    assert kept_pixels(0.0, 7) == 0
    assert recovery_image_size(100) == (102, 17)
    assert recovery_image_size(2) == (6, 1)
    assert recovery_image_size(600) == (600, 100)


def test_odd_pixels_end_at_the_whole_image() -> None:
    curves = compute_curves(pixels=7, device="cpu")
    assert curves.signal_size.x == pytest.approx([200 / 7, 400 / 7, 600 / 7, 100.0], rel=REL)


def test_device_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        on_cuda = compute_curves(device="cuda").as_dict()
        on_cpu = compute_curves(device="cpu").as_dict()
        for name, sweep in on_cpu.items():
            for key, values in sweep.items():
                assert on_cuda[name][key] == pytest.approx(values, rel=1e-12, abs=1e-12)
    else:
        code, _, err = run_cli(capsys, "--device", "cuda", "--out", str(tmp_path / "x"))
        assert code == 2
        assert err.startswith("acbmse: error: ") and err.count("\n") == 1 and "cuda" in err
        assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- output formats


def test_csv_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "--out", str(tmp_path), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["sweep", "x", "mse", "mae", "acb_mse"]
    by_sweep: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_sweep.setdefault(row["sweep"], []).append(row)
    assert list(by_sweep) == ["signal_size", "recovery", "gradient"]
    assert [len(v) for v in by_sweep.values()] == [50, 103, 50]
    assert_sweep(
        {k: [float(r[k]) for r in by_sweep["signal_size"]] for k in ("x", "mse", "mae", "acb_mse")},
        reference_signal_size(100, 100.0, 0.5, 1.0, 1.0),
    )
    assert float(by_sweep["recovery"][17]["x"]) == 1.0
    assert float(by_sweep["recovery"][17]["acb_mse"]) == 0.0


def test_table_output_names_the_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out_dir = tmp_path / "new" / "figures"
    code, out, err = run_cli(capsys, "--out", str(out_dir), "--image-format", "svg")
    assert code == 0, err
    assert err.splitlines() == [f"Wrote {out_dir / name}.svg" for name in IMAGE_NAMES]  # on stderr
    assert "exact recovery" in out
    assert "1666.67" in out and "8333.33" in out
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{n}.svg" for n in IMAGE_NAMES]
    # every printed point is the reference's, at its printed precision
    signal, recovery, gradient = parse_tables(out)
    assert signal.title == "Loss against signal size at 50% recovery"
    assert recovery.title == "Loss against recovery (signal of 17 in 102 pixels)"
    assert gradient.title.endswith("at 50% recovery")
    references = (
        (signal, reference_signal_size(100, 100.0, 0.5, 1.0, 1.0), {}),
        (recovery, reference_recovery(100, 100.0, 1.0, 1.0), {"exact recovery": 17}),
        (gradient, reference_gradient(100, 100.0, 0.5, 1.0), {}),
    )
    for table, expected, extra in references:
        assert table.headers[0] == "point" and table.headers[2:] == ["MSE", "MAE", "ACB-MSE"]
        last = len(expected["x"]) - 1
        marks = {"start": 0, "middle": len(expected["x"]) // 2, "end": last, **extra}
        assert sorted(r[0] for r in table.rows) == sorted(marks)
        assert [r[0] for r in table.rows] == sorted(marks, key=marks.__getitem__)  # in order of x
        for row in table.rows:
            i = marks[row[0]]
            for cell, key in zip(row[1:], ("x", "mse", "mae", "acb_mse"), strict=True):
                assert_printed(cell, expected[key][i])


# --------------------------------------------------------------------------- images


def _check_format(data: bytes, image_format: str) -> None:
    if image_format == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 600 and height > 400
        assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    elif image_format == "svg":
        text = data.decode("utf-8")
        assert text.startswith("<?xml")
        assert "<svg" in text and text.rstrip().endswith("</svg>")
    else:
        assert data.startswith(b"%PDF-")
        assert data.rstrip().endswith(b"%%EOF")
        assert b"/Subtype /Type3" not in data and b"/FontFile2" in data  # TrueType: journals refuse Type 3


@pytest.mark.parametrize("image_format", ["png", "svg", "pdf"])
def test_images_are_valid_files(image_format: str, tmp_path: Path) -> None:
    curves = compute_curves(pixels=20, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = write_figures(curves, tmp_path / "out", image_format)
    assert written == [tmp_path / "out" / f"{n}.{image_format}" for n in IMAGE_NAMES]
    for path in written:
        _check_format(path.read_bytes(), image_format)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)


def test_same_options_same_bytes(tmp_path: Path) -> None:
    curves = compute_curves(pixels=10, device="cpu")
    first = [p.read_bytes() for p in write_figures(curves, tmp_path / "a")]
    second = [p.read_bytes() for p in write_figures(curves, tmp_path / "b")]
    assert first == second


def test_exact_recovery_zero_is_drawn_without_warnings() -> None:
    curves = compute_curves(device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quiet_parser_deprecations():  # matplotlib's own use of its text parser, not ours
            figures = draw_figures(curves)
            for fig in figures:
                fig.canvas.draw()
    fig2 = figures[1]
    ax = fig2.axes[0]
    assert ax.get_yscale() == "symlog"  # a plain log axis would drop the zeros
    bottom, top = ax.get_ylim()
    assert bottom <= 0.0 and top >= 1e4
    series = curves.recovery.series()
    plotted = {line.get_label(): line for line in ax.get_lines()}
    for label, key in (("MAE", "mae"), ("MSE", "mse"), ("ACB-MSE", "acb_mse")):
        line = plotted[label]
        assert np.asarray(line.get_xdata()).tolist() == list(curves.recovery.x)
        assert np.asarray(line.get_ydata()).tolist() == list(series[key])  # every point, the zero included
    for fig in (figures[0], figures[2]):
        ax = fig.axes[0]
        assert ax.get_yscale() == "log"
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == ["MAE", "MSE", "ACB-MSE"]
    assert "%" in figures[0].axes[0].get_xlabel()
    assert "multiple of the true signal" in fig2.axes[0].get_xlabel()


def test_zero_weights_draw_zeros_without_warnings() -> None:
    curves = compute_curves(hit_weight=0.0, nonhit_weight=0.0, device="cpu")
    assert set(curves.signal_size.acb_mse) == {0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quiet_parser_deprecations():  # matplotlib's own use of its text parser, not ours
            figures = draw_figures(curves)
            for fig in figures:
                fig.canvas.draw()
    assert figures[0].axes[0].get_yscale() == "symlog"
    assert figures[0].axes[0].get_ylim()[0] <= 0.0


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    out = tmp_path / "old"
    out.mkdir()
    (out / "loss_curve_1.png").write_bytes(b"old image")
    calls = {"n": 0}
    real_savefig = Figure.savefig

    def failing_savefig(self: Figure, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_savefig(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    curves = compute_curves(pixels=10, device="cpu")
    with pytest.raises(InputError, match="No space left on device"):
        write_figures(curves, out)
    assert sorted(p.name for p in out.iterdir()) == ["loss_curve_1.png"]  # no temporaries, no new images
    assert (out / "loss_curve_1.png").read_bytes() == b"old image"
    calls["n"] = 0
    with pytest.raises(InputError):
        write_figures(curves, tmp_path / "fresh" / "deep")
    assert not (tmp_path / "fresh").exists()  # the folders it made are removed again


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--hit-weight", "-1"], "--hit-weight"),
        (["--nonhit-weight", "nan"], "--nonhit-weight"),
        (["--hit-weight", "inf"], "--hit-weight"),
        (["--value", "0"], "--value"),
        (["--value", "-5"], "--value"),
        (["--value", "inf"], "--value"),
        (["--recovery", "1.5"], "--recovery"),
        (["--recovery", "-0.1"], "--recovery"),
        (["--recovery", "nan"], "--recovery"),
        (["--pixels", "1"], "--pixels"),
        (["--pixels", "0"], "--pixels"),
        (["--pixels", "1000000"], "--pixels"),
        (["--image-format", "jpg"], "image-format"),
        (["--format", "xml"], "format"),
        (["--device", "tpu"], "--device"),
        (["--value", "1e200"], "--value"),
        (["--value", "1e-160"], "--value"),
        (["--value", "1.1e100"], "--value"),
        (["--hit-weight", "1e39"], "--hit-weight"),
    ],
)
def test_bad_options_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needle: str
) -> None:
    out_dir = tmp_path / "Images"
    code, out, err = run_cli(capsys, *args, "--out", str(out_dir))
    assert code == 2
    assert out == ""
    assert err.startswith("acbmse: error: ") and err.count("\n") == 1
    assert needle in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder


def test_out_that_cannot_be_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out_dir in (a_file, a_file / "sub"):
        code, out, err = run_cli(capsys, "--out", str(out_dir))
        assert code == 2 and out == ""
        assert err.startswith("acbmse: error: --out ") and err.count("\n") == 1
        assert "not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert a_file.read_text() == "not a folder"


def test_library_refuses_bad_options() -> None:
    with pytest.raises(InputError, match="--recovery"):
        compute_curves(recovery=2.0)
    with pytest.raises(InputError, match="--pixels"):
        compute_curves(pixels=1)
    with pytest.raises(InputError, match="--image-format"):
        write_figures(compute_curves(pixels=4), Path("unused"), "gif")


def test_help_does_not_import_torch_or_matplotlib() -> None:
    code = (
        "import sys\n"
        "from acbmse_cli.cli import main\n"
        "try:\n    main(['curves', '--help'])\nexcept SystemExit as e:\n    assert not e.code\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "--hit-weight" in result.stdout and "--image-format" in result.stdout


@pytest.mark.parametrize("value", [1e-100, 1e100])
def test_extreme_values_draw_without_warnings(value: float, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = compute_curves(value=value, pixels=10, device="cpu")
        with quiet_parser_deprecations():  # matplotlib's own use of its text parser, not ours
            for fig in draw_figures(curves):
                fig.canvas.draw()
    signal = curves.signal_size
    # Last point: the whole image is signal, half of it returned: MSE = value**2 / 2.
    assert math.isclose(signal.mse[-1], value * value / 2, rel_tol=REL)


def test_an_image_path_that_is_a_folder_replaces_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "cv3"
    (out_dir / "loss_curve_2.png").mkdir(parents=True)
    (out_dir / "loss_curve_1.png").write_bytes(b"old image")
    code, out, err = run_cli(capsys, "--out", str(out_dir), "--pixels", "10", "--format", "json")
    assert code == 2 and out == ""
    assert err.startswith("acbmse: error: --out ") and "is a folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["loss_curve_1.png", "loss_curve_2.png"]
    assert (out_dir / "loss_curve_1.png").read_bytes() == b"old image"
    with pytest.raises(InputError, match="is a folder"):
        write_figures(compute_curves(pixels=4), out_dir)
    assert (out_dir / "loss_curve_1.png").read_bytes() == b"old image"


def test_a_failing_rename_leaves_no_temporaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from acbmse_cli import plots

    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(plots.os, "replace", failing_replace)
    with pytest.raises(InputError, match="Input/output error"):
        write_figures(compute_curves(pixels=4), tmp_path / "out")
    assert [p for p in tmp_path.rglob(".*")] == []


def test_empty_out_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty name must not mean the current folder
    code, out, err = run_cli(capsys, "--out", "", "--pixels", "4")
    assert code == 2 and out == ""
    assert err.startswith("acbmse: error: --out is empty") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
