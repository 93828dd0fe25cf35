"""``acbmse eval`` end to end: JSON against a numpy float64 reference, csv, table, exit codes, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_run import run_cli as run
from eval_reference import (
    assert_close,
    reference_detection,
    reference_report,
    reference_summary,
    reference_worst,
)
from tables import assert_count, assert_percent, assert_printed, parse_tables

ROOT = Path(__file__).resolve().parents[1]


def eval_json(args: list[Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["eval", *args, "--format", "json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert err == ""
    return json.loads(out)  # type: ignore[no-any-return]


def sparse_pair(
    shape: tuple[int, ...], seed: int, hits: float = 0.05, scale: float = 50.0
) -> tuple[np.ndarray, ...]:
    """A sparse target (a share of hits of size ~scale) and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < hits, rng.uniform(0.2, 1.0, shape) * scale, 0.0)
    pred = target * rng.uniform(0.5, 1.2, shape) + rng.normal(0.0, 1.0, shape)
    return pred, target


def save(path: Path, array: np.ndarray, fmt: str, key: str = "x") -> list[str]:
    """Write ``array`` as ``fmt``; the CLI arguments that select it."""
    if fmt == "npy":
        np.save(path.with_suffix(".npy"), array)
        return [str(path.with_suffix(".npy"))]
    if fmt == "npy-fortran":
        np.save(path.with_suffix(".npy"), np.asfortranarray(array))
        return [str(path.with_suffix(".npy"))]
    if fmt in ("npz", "npz-compressed"):
        (np.savez if fmt == "npz" else np.savez_compressed)(
            path.with_suffix(".npz"), **{key: array, "other": 1}
        )
        return [str(path.with_suffix(".npz"))]
    if fmt == "pt":
        torch.save(torch.tensor(array), path.with_suffix(".pt"))
        return [str(path.with_suffix(".pt"))]
    raise AssertionError(fmt)


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return array > 10
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)


# Many generated files: dtypes, shapes, thresholds, weights, formats, chunk sizes.
CASES = [
    # shape,          pred dtype, target dtype, threshold, (B, A),  pred fmt,  target fmt,      chunk
    ((40, 1, 6, 7), "float32", "float32", 0.0, (1.0, 1.0), "npy", "npy", None),
    ((40, 1, 6, 7), "float32", "float32", 0.0, (1.0, 1.0), "npy", "npy", 5),
    ((33, 17), "float64", "float32", 10.0, (0.3, 2.5), "npy-fortran", "npy", 13),
    ((7,), "float16", "float16", 0.1, (1.0, 1.0), "npy", "npy", 2),
    ((3, 4, 5, 2), "int16", "uint8", 20.0, (2.0, 0.5), "npz", "npz", 7),
    ((3, 4, 5, 2), "int32", "int64", 0.0, (1.0, 3.0), "npz-compressed", "npz-compressed", 9),
    ((12, 30), "bool", "bool", 0.5, (1.0, 1.0), "npy", "pt", 11),
    ((12, 30), "float32", "float64", 1.5, (0.0, 1.0), "pt", "pt", 4),
    ((5, 200), "float32", "float32", 0.0, (1.0, 1.0), "npz-compressed", "npy-fortran", 64),
    ((1, 1), "float64", "float64", 0.0, (1.0, 1.0), "npy", "npy", None),
    ((), "float32", "float32", 0.0, (1.0, 1.0), "npy", "pt", None),
    ((64, 3, 3), "uint16", "int8", 5.0, (1.0, 1.0), "npy", "npz", 1),
]


@pytest.mark.parametrize(
    ("shape", "pdt", "tdt", "threshold", "weights", "pfmt", "tfmt", "chunk"),
    CASES,
    ids=[f"case{i}" for i in range(len(CASES))],
)
def test_json_matches_numpy_reference(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shape: tuple[int, ...],
    pdt: str,
    tdt: str,
    threshold: float,
    weights: tuple[float, float],
    pfmt: str,
    tfmt: str,
    chunk: int | None,
) -> None:
    pred, target = sparse_pair(shape, seed=len(shape) + int(threshold * 10))
    pred, target = cast(pred, pdt), cast(target, tdt)
    args = [*save(tmp_path / "pred", pred, pfmt), *save(tmp_path / "target", target, tfmt)]
    if pfmt.startswith("npz"):
        args += ["--pred-key", "x"]
    if tfmt.startswith("npz"):
        args += ["--target-key", "x"]
    args += [
        "--hit-threshold",
        repr(threshold),
        "--nonhit-weight",
        repr(weights[0]),
        "--hit-weight",
        repr(weights[1]),
    ]
    if chunk is not None:
        args += ["--chunk-elements", str(chunk)]
    got = eval_json(args, capsys)
    expected = reference_report(pred, target, hit_threshold=threshold, weights=weights, paths=args[:2])
    assert list(got) == ["pred", "target", "elements", "classes", "mse", "mae", "acb_mse", "run"]
    assert got["pred"] == args[0] and got["target"] == args[1]
    assert [list(c) for c in got["classes"]] == [list(c) for c in expected["classes"]]
    assert_close(got, expected)


def test_threshold_compares_exactly_in_float32(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0.1f is above 0.1 (by 1.5e-9): a hit, though float32(0.1) == 0.1f."""
    target = np.array([0.1, 0.0999, 0.2, 0.0], dtype=np.float32)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "p.npy", np.zeros(4, np.float32))
    got = eval_json([tmp_path / "p.npy", tmp_path / "t.npy", "--hit-threshold", "0.1"], capsys)
    assert [c["count"] for c in got["classes"]] == [2, 2]
    paths = (tmp_path / "p.npy", tmp_path / "t.npy")
    assert_close(got, reference_report(np.zeros(4), target, hit_threshold=0.1, paths=paths))


@pytest.mark.parametrize("chunk", [None, 3, 50])
def test_labels_with_an_empty_class_and_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chunk: int | None
) -> None:
    pred, target = sparse_pair((20, 4, 5), seed=3)
    labels = np.random.default_rng(5).choice([0, 1, 3], size=target.shape).astype(np.int32)  # class 2 empty
    np.save(tmp_path / "p.npy", pred.astype(np.float32))
    np.save(tmp_path / "t.npy", target.astype(np.float32))
    np.save(tmp_path / "l.npy", labels)
    weights = (0.2, 1.0, 3.0, 0.5)
    args = [tmp_path / "p.npy", tmp_path / "t.npy", "--labels", tmp_path / "l.npy"]
    args += ["--class-weights", "0.2,1,3,0.5", "--class-names", "bg,track,shower,noise"]
    if chunk:
        args += ["--chunk-elements", chunk]
    got = eval_json(args, capsys)
    expected = reference_report(
        pred.astype(np.float32), target.astype(np.float32), weights=weights, labels=labels,
        names=("bg", "track", "shower", "noise"), paths=args[:2],
    )  # fmt: skip
    assert_close(got, expected)
    empty = got["classes"][2]
    assert empty["count"] == 0 and empty["contribution"] == 0.0 and empty["mse"] is None
    assert empty["max_abs_error"] is None and empty["mean_target"] is None and empty["fraction"] == 0.0


def test_no_hits_gives_a_null_hit_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = np.zeros((4, 5), np.float32)
    pred = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    got = eval_json([tmp_path / "p.npy", tmp_path / "t.npy", "--hit-weight", "7"], capsys)
    nulls = dict.fromkeys(("mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred"))
    assert got["classes"][1] == {
        "name": "hit",
        "count": 0,
        "fraction": 0.0,
        **nulls,
        "weight": 7.0,
        "contribution": 0.0,
    }
    paths = (tmp_path / "p.npy", tmp_path / "t.npy")
    assert_close(got, reference_report(pred, target, weights=(1.0, 7.0), paths=paths))
    assert_close(got["acb_mse"], got["classes"][0]["mse"])


def test_csv_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((10, 8), seed=1)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    code, out, err = run(
        ["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--format", "csv", "--hit-weight", "2"], capsys
    )
    assert code == 0 and err == ""
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["name", "count", "fraction", "mse", "rmse", "mae", "max_abs_error", "mean_target",
                       "mean_pred", "weight", "contribution"]  # fmt: skip
    assert [r[0] for r in rows[1:]] == ["non-hit", "hit", "overall"]
    expected = reference_report(pred, target, weights=(1.0, 2.0))
    for row, ref in zip(rows[1:3], expected["classes"], strict=True):
        assert int(row[1]) == ref["count"]
        for column, text in zip(rows[0][2:], row[2:], strict=True):
            assert math.isclose(float(text), ref[column], rel_tol=1e-9, abs_tol=1e-12), column
    overall = rows[3]
    assert int(overall[1]) == expected["elements"] and overall[9] == ""
    assert math.isclose(float(overall[3]), expected["mse"], rel_tol=1e-9)
    assert math.isclose(float(overall[4]), math.sqrt(expected["mse"]), rel_tol=1e-9)
    assert math.isclose(float(overall[5]), expected["mae"], rel_tol=1e-9)
    assert math.isclose(float(overall[10]), expected["acb_mse"], rel_tol=1e-9)
    summary = reference_summary(pred, target, weights=(1.0, 2.0))
    for column, text in zip(rows[0][2:9], overall[2:9], strict=True):
        assert math.isclose(float(text), summary[column], rel_tol=1e-9, abs_tol=1e-12), column


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((10, 8), seed=2)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    code, out, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--device", "cpu"], capsys)
    assert code == 0 and err == ""
    assert "\x1b[" not in out  # no colour codes off a terminal
    expected = reference_report(pred, target)
    header = next(line for line in out.splitlines() if "class" in line and "contribution" in line)
    for column in (
        "count",
        "share",
        "MSE",
        "RMSE",
        "MAE",
        "max |error|",
        "mean target",
        "mean pred",
        "weight",
    ):
        assert column in header
    for name, ref in zip(("non-hit", "hit"), expected["classes"], strict=True):
        line = next(line for line in out.splitlines() if line.strip("│ ").startswith(name + " "))
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[0] == name and cells[1] == f"{ref['count']:,}"
        assert cells[2] == f"{ref['fraction']:.2%}"
        assert [float(c) for c in cells[3:9]] == pytest.approx(
            [ref[k] for k in ("mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred")], rel=1e-5
        )
    overall = next(line for line in out.splitlines() if "overall" in line)
    assert float(overall.strip("│").split("│")[-1]) == pytest.approx(expected["acb_mse"], rel=1e-5)
    summary = reference_summary(pred, target)
    (table,) = parse_tables(out)
    cells = table.row("overall")
    assert_count(cells[1], summary["elements"])
    assert_percent(cells[2], summary["fraction"])
    for cell, key in zip(
        cells[3:9], ("mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred"), strict=True
    ):
        assert_printed(cell, summary[key])
    assert cells[9] == ""
    summary = next(line for line in out.splitlines() if line.startswith("ACB-MSE"))
    numbers = [float(w) for w in summary.split()[1::2]]
    assert numbers == pytest.approx([expected["acb_mse"], expected["mse"], expected["mae"]], rel=1e-5)


def test_per_sample_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((30, 3, 4), seed=4, hits=0.15)
    pred[7] += 200.0  # a clearly bad sample
    pred[12:14] = target[12:14]  # two perfect samples: equal losses tie by index
    target[20] = 0.0  # a sample with no hits
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    for chunk in ("5", "12", "1000"):
        got = eval_json(
            [tmp_path / "p.npy", tmp_path / "t.npy", "--per-sample", "--top", "30", "--hit-weight", "2",
             "--chunk-elements", chunk],
            capsys,
        )  # fmt: skip
        worst = reference_worst(pred, target, 30, weights=(1.0, 2.0))
        assert [s["index"] for s in got["worst_samples"]] == [w[0] for w in worst]
        assert got["worst_samples"][0]["index"] == 7
        for sample, (_, loss, mses) in zip(got["worst_samples"], worst, strict=True):
            assert_close(sample["acb_mse"], loss)
            assert_close(sample["class_mse"], {"non-hit": mses[0], "hit": mses[1]})
        paths = (tmp_path / "p.npy", tmp_path / "t.npy")
        assert_close(got, reference_report(pred, target, weights=(1.0, 2.0), top=30, paths=paths))
    got = eval_json([tmp_path / "p.npy", tmp_path / "t.npy", "--per-sample"], capsys)
    assert len(got["worst_samples"]) == 10
    code, out, _ = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--per-sample", "--top", "3"], capsys)
    assert code == 0 and "worst 3 samples" in out
    worst_table = parse_tables(out)[-1]
    assert worst_table.title == "worst 3 samples (dim 0) by ACB-MSE"
    assert worst_table.headers == ["sample", "ACB-MSE", "MSE non-hit", "MSE hit"]
    assert len(worst_table.rows) == 3
    for row, (index, loss, mses) in zip(worst_table.rows, reference_worst(pred, target, 3), strict=True):
        assert int(row[0]) == index
        assert_printed(row[1], loss)
        for cell, mse in zip(row[2:], mses, strict=True):
            assert_printed(cell, mse)
    code, out, _ = run(
        ["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--per-sample", "--top", "2", "--format", "csv"],
        capsys,
    )
    block = out.split("\n\n")[1].splitlines()
    assert block[0] == "sample,acb_mse,mse_non-hit,mse_hit"
    assert [int(r.split(",")[0]) for r in block[1:]] == [w[0] for w in reference_worst(pred, target, 2)]
    for line, (_, loss, mses) in zip(block[1:], reference_worst(pred, target, 2), strict=True):
        cells = line.split(",")
        assert_close([float(c) if c else None for c in cells[1:]], [loss, *mses])


def test_detect_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((20, 10), seed=6)
    pred = pred.astype(np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    for detect, threshold in ((5.0, 0.0), (0.1, 12.0), (-1.0, 0.0), (1e9, 0.0)):
        got = eval_json(
            [tmp_path / "p.npy", tmp_path / "t.npy", "--detect-threshold", detect,
             "--hit-threshold", threshold, "--chunk-elements", "17"],
            capsys,
        )  # fmt: skip
        assert_close(got["detection"], reference_detection(pred, target, detect, threshold))
    assert got["detection"]["precision"] is None and got["detection"]["recall"] == 0.0  # nothing detected
    code, out, _ = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--detect-threshold", "1.5"], capsys)
    assert code == 0 and "prediction > 1.5" in out and "recall" in out
    detection = parse_tables(out)[-1]
    assert detection.title == "hit detection: prediction > 1.5"
    assert detection.headers == ["recall", "precision", "F1", "true pos.", "false pos.", "false neg."]
    (row,) = detection.rows
    expected = reference_detection(pred, target, 1.5)
    assert expected["true_positives"] and expected["false_positives"]
    for cell, key in zip(row[:3], ("recall", "precision", "f1"), strict=True):
        assert_printed(cell, expected[key])
    for cell, key in zip(row[3:], ("true_positives", "false_positives", "false_negatives"), strict=True):
        assert_count(cell, expected[key])


def test_fail_above_is_a_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((10, 10), seed=7)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    acb = reference_report(pred, target)["acb_mse"]
    code, out, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--format", "json",
                          "--fail-above", repr(acb * 0.99)], capsys)  # fmt: skip
    assert code == 1
    assert_close(json.loads(out)["acb_mse"], acb)  # the report still comes, on stdout only
    assert err.startswith("acbmse: ACB-MSE") and "--fail-above" in err and err.count("\n") == 1
    code, _, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--format", "json",
                        "--fail-above", repr(acb * 1.01)], capsys)  # fmt: skip
    assert code == 0 and err == ""


def test_nan_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((6, 5), seed=8)
    pred[1, 2] = np.nan
    pred[4, 0] = np.inf
    target[0, 3] = -np.inf
    target[4, 0] = np.nan  # same element as pred's inf: 3 elements left out in all
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    for chunk in ("4", "1000"):
        code, out, err = run(
            ["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--chunk-elements", chunk], capsys
        )
        assert code == 2 and out == ""
        assert err == (
            f"acbmse: error: {tmp_path / 'p.npy'}: 2 NaN/Inf values, the first at index (1, 2); "
            f"{tmp_path / 't.npy'}: 2 NaN/Inf values, the first at index (0, 3) "
            "(--nan-policy omit leaves them out)\n"
        )
        for per_sample in ([], ["--per-sample"]):
            code, out, err = run(
                ["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--nan-policy", "omit", "--format", "json",
                 "--chunk-elements", chunk, *per_sample],
                capsys,
            )  # fmt: skip
            assert code == 0
            assert err == "acbmse: left out 3 elements with NaN or Inf (--nan-policy omit)\n"
            got = json.loads(out)
            assert got["omitted"] == 3
            expected = reference_report(
                pred, target, omit_nonfinite=True, top=10 if per_sample else None,
                paths=(tmp_path / "p.npy", tmp_path / "t.npy"),
            )  # fmt: skip
            assert_close(got, expected)


def test_nan_in_one_file_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = np.zeros((3, 4), np.float16)
    target[2, 1] = np.nan
    np.save(tmp_path / "p.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "t.npy", target)
    code, _, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy"], capsys)
    assert code == 2
    assert err == f"acbmse: error: {tmp_path / 't.npy'}: 1 NaN/Inf value, the first at index (2, 1) " \
                  "(--nan-policy omit leaves them out)\n"  # fmt: skip


def test_overflowing_sums_are_not_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Finite values whose squares overflow float64: reported (as null in JSON), not taken for NaN."""
    np.save(tmp_path / "p.npy", np.array([1e300, 0.0]))
    np.save(tmp_path / "t.npy", np.array([-1e300, 0.0]))
    got = eval_json([tmp_path / "p.npy", tmp_path / "t.npy"], capsys)
    assert got["classes"][1]["mse"] is None and got["acb_mse"] is None  # inf has no JSON form
    assert got["classes"][1]["count"] == 1 and got["classes"][1]["max_abs_error"] == 2e300
    # the other class is clean
    assert got["classes"][0]["mse"] == 0.0 and got["classes"][0]["max_abs_error"] == 0.0


# --------------------------------------------------------------------------- bad input


def _one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert out == ""
    assert err.startswith("acbmse: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    pred, target = sparse_pair((4, 6), seed=9)
    np.save(tmp_path / "p.npy", pred.astype(np.float32))
    np.save(tmp_path / "t.npy", target.astype(np.float32))
    return tmp_path / "p.npy", tmp_path / "t.npy"


def test_bad_files(tmp_path: Path, good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    p, t = good
    (tmp_path / "text.npy").write_text("not an array\n")
    (tmp_path / "dir.npy").mkdir()
    raw = (tmp_path / "p.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-10])
    np.save(tmp_path / "shape.npy", np.zeros((4, 5), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    np.save(tmp_path / "complex.npy", np.zeros((4, 6), np.complex64))
    np.save(tmp_path / "struct.npy", np.zeros((4, 6), [("a", "f4")]))
    cases = [
        ([tmp_path / "missing.npy", t], ["missing.npy: no such file"]),
        ([p, tmp_path / "dir.npy"], ["dir.npy: is a directory"]),
        ([tmp_path / "text.npy", t], ["text.npy: not an array file"]),
        ([p, tmp_path / "cut.npy"], ["cut.npy: truncated"]),
        ([p, tmp_path / "shape.npy"], ["p.npy has shape (4, 6) but", "shape.npy has shape (4, 5)"]),
        ([tmp_path / "empty.npy", t], ["empty.npy: empty array (shape (0, 6))"]),
        ([p, tmp_path / "complex.npy"], ["complex.npy: complex dtype complex64"]),
        ([tmp_path / "struct.npy", t], ["struct.npy: structured dtype"]),
    ]
    for args, fragments in cases:
        _one_error_line(*run(["eval", *args], capsys), *fragments)


def test_pickle_payload_is_refused_without_running(tmp_path: Path, good: tuple[Path, Path]) -> None:
    """End to end in a fresh process: a .npy whose pickled payload would create a file."""
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.npy"
    script = (
        "import numpy as np, sys\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        f"        return (open, ({str(marker)!r}, 'w'))\n"
        f"np.save({str(evil)!r}, np.array([Evil(), Evil()], dtype=object), allow_pickle=True)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert not marker.exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "acbmse_cli", "eval", str(evil), str(good[1])],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    _one_error_line(done.returncode, done.stdout, done.stderr, "evil.npy: holds Python objects")
    assert not marker.exists()
    # the payload is live: numpy's own pickle loading would have run it
    np.load(evil, allow_pickle=True)
    assert marker.exists()


def test_pickle_payload_in_pt(
    tmp_path: Path, good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    torch.save(Evil(), tmp_path / "evil.pt")
    _one_error_line(*run(["eval", good[0], tmp_path / "evil.pt"], capsys), "evil.pt: holds Python objects")
    assert not marker.exists()
    pickle.loads(pickle.dumps(Evil()))  # the same payload, unpickled, does run
    assert marker.exists()


def test_bad_labels(tmp_path: Path, good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    p, t = good
    labels = np.zeros((4, 6), np.int64)
    labels[3, 2] = 3
    np.save(tmp_path / "range.npy", labels)
    np.save(tmp_path / "negative.npy", -np.ones((4, 6), np.int8))
    np.save(tmp_path / "shape.npy", np.zeros((6, 4), np.int64))
    np.save(tmp_path / "float.npy", np.zeros((4, 6), np.float32))
    w = ["--class-weights", "1,1,1"]
    for chunk in ("5", "100"):
        args = ["eval", p, t, "--labels", tmp_path / "range.npy", *w, "--chunk-elements", chunk]
        _one_error_line(*run(args, capsys), "range.npy: label 3 at index (3, 2) is outside 0..2")
    _one_error_line(*run(["eval", p, t, "--labels", tmp_path / "negative.npy", *w], capsys),
                    "negative.npy: label -1 at index (0, 0)")  # fmt: skip
    _one_error_line(*run(["eval", p, t, "--labels", tmp_path / "shape.npy", *w], capsys),
                    "shape.npy: labels have shape (6, 4)", "has shape (4, 6)")  # fmt: skip
    _one_error_line(*run(["eval", p, t, "--labels", tmp_path / "float.npy", *w], capsys),
                    "float.npy: labels must be integers")  # fmt: skip


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--hit-weight", "-1"], "--hit-weight must be finite and non-negative, got -1.0"),
        (["--nonhit-weight", "inf"], "--nonhit-weight must be finite and non-negative"),
        (["--hit-threshold", "-0.5"], "--hit-threshold must be finite and non-negative"),
        (["--hit-threshold", "nan"], "--hit-threshold must be finite and non-negative"),
        (["--detect-threshold", "nan"], "--detect-threshold must be a finite number"),
        (["--fail-above", "nan"], "--fail-above must be a number"),
        (["--class-weights", "1,2"], "--class-weights needs --labels"),
        (["--labels", "LABELS"], "--labels needs --class-weights"),
        (["--labels", "LABELS", "--class-weights", "1,x"], "--class-weights must be numbers"),
        (
            ["--labels", "LABELS", "--class-weights", "1,-2"],
            "--class-weights must be finite and non-negative",
        ),
        (
            ["--labels", "LABELS", "--class-weights", "1,1", "--hit-weight", "2"],
            "--hit-weight has no meaning",
        ),
        (
            ["--labels", "LABELS", "--class-weights", "1,1", "--detect-threshold", "2"],
            "--detect-threshold has no",
        ),
        (["--class-names", "a,b,c"], "--class-names must give 2 names"),
        (["--class-names", "a,a"], "--class-names must be distinct"),
        (["--top", "3"], "--top needs --per-sample"),
        (["--per-sample", "--top", "0"], "--top must be at least 1"),
        (["--format", "xml"], "Invalid value for '--format'"),
        (["--nan-policy", "ignore"], "Invalid value for '--nan-policy'"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
        (["--device", "mps"], "--device mps cannot sum in float64"),
        (["--hit-weight", "abc"], "Invalid value for '--hit-weight'"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_options(
    tmp_path: Path,
    good: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    fragment: str,
) -> None:
    np.save(tmp_path / "labels.npy", np.zeros((4, 6), np.int64))
    options = [str(tmp_path / "labels.npy") if o == "LABELS" else o for o in options]
    code, out, err = run(["eval", *good, *options], capsys)
    _one_error_line(code, out, err, fragment)


def test_cuda_device_that_is_not_there(good: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _one_error_line(*run(["eval", *good, "--device", "cuda"], capsys), "--device cuda was asked for")


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["eval", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "Exit codes: 0 ok; 1 the ACB-MSE is above --fail-above; 2 bad usage or bad input" in text
    options = ("--pred-key", "--labels", "--per-sample", "--detect-threshold", "--fail-above", "--nan-policy")
    for option in (*options, "--quiet", "--format", "--device"):
        assert option in text
    assert "--chunk-elements" not in text


def test_subprocess_json_and_quiet_stderr(tmp_path: Path, good: tuple[Path, Path]) -> None:
    """``python -m acbmse_cli eval`` in a pipeline: JSON on stdout, nothing on stderr (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "acbmse_cli", "eval", str(good[0]), str(good[1]), "--format", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    pred, target = np.load(good[0]), np.load(good[1])
    assert_close(json.loads(done.stdout), reference_report(pred, target, paths=good))


def test_table_prints_user_text_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paths and class names are shown as typed, never read as rich markup (nor a crash on '[/a]')."""
    monkeypatch.chdir(tmp_path)  # short relative names: the title stays on one line
    pred, target = sparse_pair((4, 6), seed=11)
    labels = np.arange(24).reshape(4, 6) % 3
    np.save("[bold]p.npy", pred)
    os.mkdir("x[")
    np.save("x[/y]z.npy", target)  # the file y]z.npy in the folder x[
    np.save("lab.npy", labels)
    args = ["eval", "[bold]p.npy", "x[/y]z.npy", "--labels", "lab.npy", "--class-weights", "1,2,3"]
    code, out, err = run([*args, "--class-names", "[/a],b,c", "--per-sample", "--device", "cpu"], capsys)
    assert code == 0 and err == ""
    assert "[bold]p.npy vs x[/y]z.npy" in out
    cells = [[c.strip() for c in line.split("│")] for line in out.splitlines()]
    assert any(row[1:2] == ["[/a]"] for row in cells)  # the class cell
    assert "MSE [/a]" in out  # the worst-samples header


def test_fail_above_fails_on_a_nan_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An overflowing non-hit error with weight 0 makes the score 0 * inf = NaN: that fails the gate."""
    pred, target = np.array([1e200, 1.0, 2.0]), np.array([0.0, 1.0, 0.0])
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    with np.errstate(over="ignore", invalid="ignore"):
        sq = (pred - target) ** 2
        reference = 0.0 * sq[target == 0].mean() + 1.0 * sq[target != 0].mean()
    assert math.isnan(reference)  # the reference agrees that the score is not a number
    code, out, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--nonhit-weight", "0",
                          "--format", "json", "--fail-above", "1e300"], capsys)  # fmt: skip
    assert code == 1
    assert json.loads(out)["acb_mse"] is None
    assert err == "acbmse: ACB-MSE nan is not a number, which fails --fail-above 1e+300\n"


def test_nothing_left_after_omitting_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "p.npy", np.full((2, 3), np.nan))
    np.save(tmp_path / "t.npy", np.zeros((2, 3)))
    code, out, err = run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--nan-policy", "omit",
                          "--fail-above", "1"], capsys)  # fmt: skip
    assert code == 2 and out == ""
    assert err.startswith("acbmse: error: ") and err.count("\n") == 1
    assert "every element (6) was NaN/Inf" in err and "nothing left to score" in err


def test_device_file_as_labels_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "p.npy", np.zeros(3))
    code, out, err = run(["eval", tmp_path / "p.npy", tmp_path / "p.npy", "--labels", os.devnull,
                          "--class-weights", "1,1"], capsys)  # fmt: skip
    assert code == 2 and out == ""
    expected = "not a regular file (a character device): need an array file"
    assert err == f"acbmse: error: {os.devnull}: {expected}\n"


@pytest.mark.parametrize(
    "fmt, fail_above, expected", [("json", "1e9", 0), ("table", "1e9", 0), ("csv", "0", 1)]
)
def test_closed_stdout_pipe_keeps_the_gate_verdict(
    tmp_path: Path, good: tuple[Path, Path], fmt: str, fail_above: str, expected: int
) -> None:
    """`acbmse eval ... | head -c 10`: a reader that stops early is not a failed gate (nor a traceback)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "acbmse_cli", "eval", *map(str, good), "--format", fmt,
             "--device", "cpu", "--fail-above", fail_above],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == expected
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    if expected == 0:
        assert done.stderr == ""
    else:
        assert done.stderr.startswith("acbmse: ACB-MSE ") and done.stderr.count("\n") == 1


def test_an_infinite_class_leaves_the_others_contribution_finite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hit error overflows float64; the non-hit row keeps its own MSE as its contribution."""
    np.save(tmp_path / "p.npy", np.array([[1e308, 0.5, 0.0, 0.0]]))
    np.save(tmp_path / "t.npy", np.array([[-1e308, 0.0, 0.0, 0.0]]))
    non_hit, hit = eval_json([tmp_path / "p.npy", tmp_path / "t.npy"], capsys)["classes"]
    assert non_hit["mse"] == pytest.approx(0.25 / 3) and non_hit["contribution"] == pytest.approx(0.25 / 3)
    assert hit["contribution"] is None  # not finite: written as null
