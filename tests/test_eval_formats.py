"""``acbmse eval`` in its three formats on one data set with NaN and Inf left out: every number printed,
read back and compared with the float64 reference (the table at the precision it prints)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_reference import assert_close, reference_report, reference_summary
from tables import assert_count, assert_percent, assert_printed, parse_tables

from acbmse_cli.cli import main

THRESHOLD, DETECT, HIT_WEIGHT, NONHIT_WEIGHT, TOP = 0.5, 2.5, 2.0, 0.5, 3
OPTIONS = ["--hit-threshold", "0.5", "--detect-threshold", "2.5", "--hit-weight", "2", "--nonhit-weight",
           "0.5", "--nan-policy", "omit", "--per-sample", "--top", "3", "--device", "cpu"]  # fmt: skip


def data_set() -> tuple[np.ndarray, np.ndarray]:
    """Float32 pairs with targets on the hit threshold, predictions on the detection threshold, and
    NaN/Inf in both files, some of them where the other file's value would be detected or be a hit."""
    rng = np.random.default_rng(21)
    shape = (7, 3, 4)
    hits = rng.random(shape) < 0.35
    target = np.where(hits, rng.uniform(1.0, 30.0, shape), rng.uniform(-0.4, 0.4, shape)).astype(np.float32)
    pred = (target + rng.normal(0.0, 1.0, shape)).astype(np.float32)
    above = np.nextafter(np.float32(THRESHOLD), np.float32(1.0))
    target[0, 0, :] = [THRESHOLD, above, -THRESHOLD, -above]  # non-hit, hit, non-hit, hit
    pred[0, 0, :] = target[0, 0, :] + np.array([0.3, -0.2, 0.1, 0.4], np.float32)
    target[4, 1, 2], pred[4, 1, 2] = 3.0, DETECT  # a hit on the detection threshold: not detected
    target[4, 1, 3], pred[4, 1, 3] = 3.0, np.nextafter(np.float32(DETECT), np.float32(3.0))  # detected
    pred[1, 0, 0] = np.nan
    target[2, 1, 1], pred[2, 1, 1] = 0.0, np.inf  # would be a false positive
    pred[2] += 4.0  # the worst sample, with an element left out
    target[3, 2, 3] = -np.inf  # would be a hit
    target[5, 0, 2], pred[5, 0, 2] = np.nan, 10.0  # a prediction above the detection threshold
    target[6, 2, 0], pred[6, 2, 0] = np.inf, np.inf
    return pred, target


def reference(pred: np.ndarray, target: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    options: dict[str, Any] = {
        "hit_threshold": THRESHOLD,
        "weights": (NONHIT_WEIGHT, HIT_WEIGHT),
        "omit_nonfinite": True,
    }
    doc = reference_report(
        pred, target, **options, detect_threshold=DETECT, top=TOP, paths=("p.npy", "t.npy")
    )
    return doc, reference_summary(pred, target, **options)


def run_eval(capsys: pytest.CaptureFixture[str], fmt: str, chunk: str | None) -> str:
    args = ["eval", "p.npy", "t.npy", *OPTIONS, "--format", fmt]
    if chunk is not None:
        args += ["--chunk-elements", chunk]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    assert err == "acbmse: left out 5 elements with NaN or Inf (--nan-policy omit)\n"
    return out


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    pred, target = data_set()
    np.save("p.npy", pred)
    np.save("t.npy", target)
    return pred, target


def test_the_data_set_has_what_it_is_for(files: tuple[np.ndarray, np.ndarray]) -> None:
    doc, _ = reference(*files)
    assert doc["omitted"] == 5
    assert doc["worst_samples"][0]["index"] == 2  # a sample with an element left out leads
    detected_or_hit_only_if_kept = doc["detection"]["false_positives"] + doc["detection"]["false_negatives"]
    assert detected_or_hit_only_if_kept > 0 and doc["detection"]["true_positives"] > 0


@pytest.mark.parametrize("chunk", [None, "5"])
def test_json(
    files: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str], chunk: str | None
) -> None:
    doc, _ = reference(*files)
    got = json.loads(run_eval(capsys, "json", chunk))
    assert list(got) == [*doc, "run"]
    assert_close(got, doc)


def _csv_number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


@pytest.mark.parametrize("chunk", [None, "5"])
def test_csv(
    files: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str], chunk: str | None
) -> None:
    doc, summary = reference(*files)
    blocks = run_eval(capsys, "csv", chunk).split("\n\n")
    assert len(blocks) == 3
    classes, detection, worst = (list(csv.reader(io.StringIO(b))) for b in blocks)

    columns = ["name", "count", "fraction", "mse", "rmse", "mae", "max_abs_error", "mean_target",
               "mean_pred", "weight", "contribution"]  # fmt: skip
    assert classes[0] == columns
    assert [r[0] for r in classes[1:]] == ["non-hit", "hit", "overall"]
    for row, ref in zip(classes[1:3], doc["classes"], strict=True):
        assert int(row[1]) == ref["count"]
        for column, cell in zip(columns[2:], row[2:], strict=True):
            assert_close(_csv_number(cell), ref[column], f"csv {ref['name']} {column}")
    overall = dict(zip(columns, classes[3], strict=True))
    assert int(overall["count"]) == summary["elements"] == doc["elements"]
    assert overall["weight"] == ""
    for column in ("fraction", "mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred"):
        assert_close(_csv_number(overall[column]), summary[column], f"csv overall {column}")
    assert_close(_csv_number(overall["contribution"]), doc["acb_mse"], "csv overall contribution")

    keys = ["true_positives", "false_positives", "false_negatives", "recall", "precision", "f1"]
    assert detection[0] == ["detect_threshold", *keys]
    assert len(detection) == 2
    assert_close(float(detection[1][0]), DETECT, "csv detect_threshold")
    for key, cell in zip(keys, detection[1][1:], strict=True):
        expected = doc["detection"][key]
        assert_close(int(cell) if isinstance(expected, int) else _csv_number(cell), expected, f"csv {key}")

    assert worst[0] == ["sample", "acb_mse", "mse_non-hit", "mse_hit"]
    assert len(worst) == 1 + TOP
    for row, ref in zip(worst[1:], doc["worst_samples"], strict=True):
        assert int(row[0]) == ref["index"]
        assert_close(float(row[1]), ref["acb_mse"], f"csv sample {row[0]}")
        assert_close(
            [_csv_number(c) for c in row[2:]], list(ref["class_mse"].values()), f"csv sample {row[0]}"
        )


@pytest.mark.parametrize("chunk", [None, "5"])
def test_table(
    files: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str], chunk: str | None
) -> None:
    doc, summary = reference(*files)
    out = run_eval(capsys, "table", chunk)
    tables = parse_tables(out)
    assert len(tables) == 3
    main_table, detection, worst = tables

    assert main_table.title == "p.npy vs t.npy"
    numbers = ["MSE", "RMSE", "MAE", "max |error|", "mean target", "mean pred", "weight", "contribution"]
    assert main_table.headers == ["class", "count", "share", *numbers]
    keys = ["mse", "rmse", "mae", "max_abs_error", "mean_target", "mean_pred", "weight", "contribution"]
    assert [r[0] for r in main_table.rows] == ["non-hit", "hit", "overall"]
    for ref in doc["classes"]:
        row = main_table.row(ref["name"])
        assert_count(row[1], ref["count"])
        assert_percent(row[2], ref["fraction"])
        for cell, key in zip(row[3:], keys, strict=True):
            assert_printed(cell, ref[key])
    overall = main_table.row("overall")
    assert_count(overall[1], summary["elements"])
    assert_percent(overall[2], summary["fraction"])
    for cell, key in zip(overall[3:9], keys[:6], strict=True):
        assert_printed(cell, summary[key])
    assert overall[9] == ""
    assert_printed(overall[10], doc["acb_mse"])

    line = next(line for line in out.splitlines() if line.startswith("ACB-MSE"))
    match = re.fullmatch(
        r"ACB-MSE (\S+)   MSE (\S+)   MAE (\S+)   \(([\d,]+) elements with NaN/Inf left out\)", line
    )
    assert match is not None, line
    assert_printed(match[1], doc["acb_mse"])
    assert_printed(match[2], doc["mse"])
    assert_printed(match[3], doc["mae"])
    assert_count(match[4], doc["omitted"])

    assert detection.title == "hit detection: prediction > 2.5"
    assert detection.headers == ["recall", "precision", "F1", "true pos.", "false pos.", "false neg."]
    (row,) = detection.rows
    d = doc["detection"]
    for cell, key in zip(row[:3], ("recall", "precision", "f1"), strict=True):
        assert_printed(cell, d[key])
    for cell, key in zip(row[3:], ("true_positives", "false_positives", "false_negatives"), strict=True):
        assert_count(cell, d[key])

    assert worst.title == "worst 3 samples (dim 0) by ACB-MSE"
    assert worst.headers == ["sample", "ACB-MSE", "MSE non-hit", "MSE hit"]
    assert len(worst.rows) == TOP
    for row, ref in zip(worst.rows, doc["worst_samples"], strict=True):
        assert int(row[0]) == ref["index"]
        assert_printed(row[1], ref["acb_mse"])
        for cell, mse in zip(row[2:], ref["class_mse"].values(), strict=True):
            assert_printed(cell, mse)


def test_json_tells_an_overflow_from_an_empty_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from acbmse_cli.cli import main

    target = np.array([[0.0, 0.0, 50.0, 60.0]])
    pred = np.array([[1.0, 0.0, 1e200, 70.0]])  # a finite error whose square overflows float64
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "blank.npy", np.zeros_like(target))

    def doc(*args: object) -> dict:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", *map(str, args), "--format", "json", "--device", "cpu"])
        out, err = capsys.readouterr()
        assert exit_info.value.code == 0, err
        return json.loads(out)

    overflow = doc(tmp_path / "p.npy", tmp_path / "t.npy")
    assert overflow["acb_mse"] is None and overflow["classes"][1]["mse"] is None
    assert overflow["classes"][1]["max_abs_error"] == pytest.approx(1e200)  # finite, so kept
    assert sorted(overflow["non_finite"]) == [
        "acb_mse", "classes[1].contribution", "classes[1].mse", "classes[1].rmse", "mse",
    ]  # fmt: skip
    empty = doc(tmp_path / "t.npy", tmp_path / "blank.npy")
    assert (
        empty["classes"][1]["mse"] is None and "non_finite" not in empty
    )  # null: no hits, nothing overflowed
