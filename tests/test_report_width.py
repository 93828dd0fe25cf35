"""The report table at any console width: every number and class name whole, no line past the width.

Each rendered table is read back into a map of (row, column) -> cell, which must equal the cells
expected from the result whatever the layout (a row per class, a row per statistic, split tables).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from acbmse_cli.evaluate import EvalResult, evaluate_files
from acbmse_cli.report import render_table

WIDTHS = (40, 60, 80, 100, 200)
STATISTICS = ("count", "share", "MSE", "RMSE", "MAE", "max |error|",
              "mean target", "mean pred", "weight", "contribution")  # fmt: skip
SIX_NAMES = ("background", "minimum_ionising_track", "[bold]shower", "delta ray", "michel_electron",
             "low_energy_deposit")  # fmt: skip
LONG_NAME = "a_class_name_much_longer_than_any_console_that_this_report_is_printed_on"

Cells = dict[tuple[str, str], str]
Table = tuple[list[str], list[list[str]]]  # the headers (whitespace removed) and the body rows


def _key(text: str) -> str:
    """A header or label with its whitespace removed, which is how a wrapped header reads back."""
    return "".join(text.split())


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.6g}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _sparse_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.05, rng.uniform(50, 150, shape), 0).astype(np.float32)
    pred = (0.9 * target + rng.normal(0, 3, shape)).astype(np.float32)
    return pred, target


def _two_classes(tmp_path: Path, names: tuple[str, str] | None = None) -> EvalResult:
    pred, target = _sparse_pair((20, 30, 40), seed=0)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    return evaluate_files(
        tmp_path / "p.npy", tmp_path / "t.npy", per_sample=True, top=3, detect_threshold=40.0,
        hit_weight=2.0, class_names=names,
    )  # fmt: skip


def _six_classes(tmp_path: Path) -> EvalResult:
    """Six labelled classes with long names (markup, a space); the last class has no elements."""
    pred, target = _sparse_pair((12, 30, 40), seed=1)
    labels = np.random.default_rng(2).integers(0, 5, target.shape).astype(np.int32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "l.npy", labels)
    return evaluate_files(
        tmp_path / "p.npy", tmp_path / "t.npy", labels=tmp_path / "l.npy",
        class_weights=(0.5, 1.0, 2.0, 3.0, 0.25, 1.0), class_names=SIX_NAMES, per_sample=True, top=4,
    )  # fmt: skip


def _render(result: EvalResult, width: int) -> str:
    out = io.StringIO()
    render_table(result, Console(file=out, width=width, color_system=None))
    return out.getvalue()


def _tables(text: str) -> list[Table]:
    """The tables of a rendered report, in order; a header folded over several lines is joined."""
    tables: list[Table] = []
    header_lines: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("┏"):
            header_lines = []
            tables.append(([], []))
        elif line.startswith("┃"):
            header_lines.append([cell.strip() for cell in line.rstrip()[1:-1].split("┃")])
        elif line.startswith("┡"):
            tables[-1][0].extend(_key("".join(column)) for column in zip(*header_lines, strict=True))
        elif line.startswith("│"):
            tables[-1][1].append([cell.strip() for cell in line.rstrip()[1:-1].split("│")])
    return tables


def _put(cells: Cells, key: tuple[str, str], value: str) -> None:
    assert key not in cells, f"{key} shown twice"
    cells[key] = value


def _read_back(text: str) -> tuple[Cells, Cells, Cells]:
    """The class, detection and worst-samples cells of a report, whichever layout each table has."""
    classes: Cells = {}
    detection: Cells = {}
    worst: Cells = {}
    for headers, rows in _tables(text):
        for row in rows:
            for header, cell in zip(headers[1:], row[1:], strict=True):
                if headers[0] == "class":  # a row per class
                    _put(classes, (_key(row[0]), header), cell)
                elif headers[0] == "":  # a row per statistic
                    _put(classes, (header, _key(row[0])), cell)
                elif headers[0] == "sample":
                    _put(worst, (row[0], header), cell)
            if headers[0] not in ("class", "", "sample"):
                for header, cell in zip(headers, row, strict=True):
                    _put(detection, ("", header), cell)
    return classes, detection, worst


def _expected(result: EvalResult) -> tuple[Cells, Cells, Cells]:
    """The cells that the report must show, as _num, _share and f"{count:,}" print them."""
    classes: Cells = {}
    for c in result.classes:
        values = (f"{c.count:,}", _share(c.fraction), _num(c.mse), _num(c.rmse), _num(c.mae),
                  _num(c.max_abs_error), _num(c.mean_target), _num(c.mean_pred), _num(c.weight),
                  _num(c.contribution))  # fmt: skip
        classes.update(((_key(c.name), _key(s)), v) for s, v in zip(STATISTICS, values, strict=True))
    rmse = None if result.mse is None else result.mse**0.5
    overall = (f"{result.elements:,}", _share(1.0), _num(result.mse), _num(rmse), _num(result.mae),
               _num(result.max_abs_error), _num(result.mean_target), _num(result.mean_pred), "",
               _num(result.acb_mse))  # fmt: skip
    classes.update((("overall", _key(s)), v) for s, v in zip(STATISTICS, overall, strict=True))
    detection: Cells = {}
    if result.detection is not None:
        d = result.detection
        detection = {
            ("", "recall"): _num(d.recall), ("", "precision"): _num(d.precision), ("", "F1"): _num(d.f1),
            ("", "truepos."): f"{d.true_positives:,}", ("", "falsepos."): f"{d.false_positives:,}",
            ("", "falseneg."): f"{d.false_negatives:,}",
        }  # fmt: skip
    worst: Cells = {}
    for s in result.worst_samples or ():
        worst[(str(s.index), "ACB-MSE")] = _num(s.acb_mse)
        for c, m in zip(result.classes, s.class_mse, strict=True):
            worst[(str(s.index), _key(f"MSE {c.name}"))] = _num(m)
    return classes, detection, worst


def _assert_whole_and_within(result: EvalResult, text: str, width: int) -> None:
    assert "…" not in text
    too_long = [line for line in text.splitlines() if cell_len(line.rstrip()) > width]
    assert not too_long, f"lines wider than {width}: {too_long}"
    classes, detection, worst = _read_back(text)
    expected_classes, expected_detection, expected_worst = _expected(result)
    assert classes == expected_classes
    assert detection == expected_detection
    assert worst == expected_worst


@pytest.mark.parametrize("make", [_two_classes, _six_classes], ids=["two-classes", "six-long-names"])
def test_every_cell_is_whole_and_every_line_fits(make: Callable[[Path], EvalResult], tmp_path: Path) -> None:
    result = make(tmp_path)
    for width in WIDTHS:
        text = _render(result, width)
        _assert_whole_and_within(result, text, width)
        for total in f"ACB-MSE {_num(result.acb_mse)}", f"MSE {_num(result.mse)}", f"MAE {_num(result.mae)}":
            assert total in text, (width, total)


def test_a_row_per_class_where_it_fits_else_a_row_per_statistic(tmp_path: Path) -> None:
    result = _two_classes(tmp_path)
    wide = _tables(_render(result, 200))
    assert wide[0][0][0] == "class"
    assert [row[0] for row in wide[0][1]] == ["non-hit", "hit", "overall"]
    assert len(wide) == 3  # the class table, detection, worst samples: none split
    narrow = _tables(_render(result, 80))
    assert narrow[0][0] == ["", "non-hit", "hit", "overall"]
    assert [row[0] for row in narrow[0][1]] == list(STATISTICS)
    assert len(narrow) == 3  # detection and worst samples still fit whole at 80


def test_many_classes_are_split_over_tables_that_each_fit(tmp_path: Path) -> None:
    result = _six_classes(tmp_path)
    wide = _tables(_render(result, 200))
    assert wide[0][0][0] == "class"
    assert [row[0] for row in wide[0][1]] == [*SIX_NAMES, "overall"]
    text = _render(result, 80)
    tables = _tables(text)
    class_tables = [t for t in tables if t[0][0] == ""]
    worst_tables = [t for t in tables if t[0][0] == "sample"]
    assert len(class_tables) > 1 and len(worst_tables) > 1
    shown = [name for headers, _ in class_tables for name in headers[1:]]
    assert shown == [*(_key(n) for n in SIX_NAMES), "overall"]
    for _, rows in worst_tables:  # each part repeats the sample column
        assert [row[0] for row in rows] == [str(s.index) for s in result.worst_samples or ()]
    _assert_whole_and_within(result, text, 80)


@pytest.mark.parametrize("width", [40, 60])
def test_a_name_wider_than_the_console_is_folded_not_cut(tmp_path: Path, width: int) -> None:
    result = _two_classes(tmp_path, names=(LONG_NAME, "hit"))
    text = _render(result, width)
    _assert_whole_and_within(result, text, width)  # read back whole from its folded pieces
    assert not any(LONG_NAME in line for line in text.splitlines())
    assert LONG_NAME[:20] in text
