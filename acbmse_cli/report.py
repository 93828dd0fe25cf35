"""Rendering an :class:`~acbmse_cli.evaluate.EvalResult`: a rich table, JSON or CSV.

The JSON and CSV texts are plain strings for stdout; the table goes to a rich
console (colour when stdout is a terminal and ``NO_COLOR`` is unset).  The
progress bar of a long evaluation is drawn on stderr, and only once the work
has taken more than a moment.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table
    from rich.text import Text

    from acbmse_cli.evaluate import DenoisingResult, DetectionResult, EvalComparison, EvalResult, SampleResult
    from acbmse_cli.histograms import DetectionCurve

__all__ = ["CSV_COLUMNS", "DelayedProgress", "render_csv", "render_json", "render_table", "stdout_console"]

CSV_COLUMNS = (
    "name",
    "count",
    "fraction",
    "mse",
    "rmse",
    "mae",
    "max_abs_error",
    "mean_target",
    "mean_pred",
    "weight",
    "contribution",
)
OVERALL = "overall"


def _json_safe(value: Any, path: str = "", found: list[str] | None = None) -> Any:
    """Replace the non-finite floats (an overflowed sum) by None, JSON having no Infinity; the
    path of each (``acb_mse``, ``classes[1].mse``) is added to ``found``."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(path)
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{path}.{k}" if path else k, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def _report_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """One prediction's JSON document made JSON-safe; a value that overflowed to infinity (or is NaN)
    is ``null`` like an empty class's statistics, and its path is listed under ``non_finite`` to tell
    them apart."""
    found: list[str] = []
    safe: dict[str, Any] = _json_safe(doc, found=found)
    if found:
        safe["non_finite"] = found
    return safe


#: The precisions at which the table tells the highest recall of the curve.
RECALL_AT_PRECISIONS = (0.5, 0.9, 0.99)


def _reports(results: EvalResult | EvalComparison) -> tuple[EvalResult, ...]:
    reports: tuple[EvalResult, ...] | None = getattr(results, "reports", None)
    return (results,) if reports is None else reports  # type: ignore[return-value]


def render_json(results: EvalResult | EvalComparison) -> str:
    """The JSON document, with a final newline: :meth:`EvalResult.to_dict` for one prediction,
    :meth:`EvalComparison.to_dict` for several."""
    reports = _reports(results)
    if len(reports) == 1:
        doc = _report_doc(reports[0].to_dict())
    else:
        doc = results.to_dict()
        doc["reports"] = [_report_doc(r) for r in doc["reports"]]
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(results: EvalResult | EvalComparison) -> str:
    """A header, one row per class, and the ``overall`` row (its ``contribution`` is the ACB-MSE).

    With detection counts, the detection curve, denoising figures or worst samples, each follows as
    its own block (header and rows) after an empty line.  With several predictions every row of
    every block starts with a ``pred`` column, the predictions one after the other in each block.
    """
    reports = _reports(results)
    blocks = [_csv_blocks(r) for r in reports]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for b, (header, _) in enumerate(blocks[0]):
        if b:
            out.write("\n")
        named = len(reports) > 1
        writer.writerow(("pred", *header) if named else header)
        for report, report_blocks in zip(reports, blocks, strict=True):
            for row in report_blocks[b][1]:
                writer.writerow((report.pred, *row) if named else row)
    return out.getvalue()


_Block = tuple[tuple[str, ...], list[tuple[str, ...]]]


def _csv_blocks(result: EvalResult) -> list[_Block]:
    """The CSV blocks of one report: each a header and its rows."""
    blocks: list[_Block] = [(CSV_COLUMNS, _csv_class_rows(result))]
    if result.detection is not None:
        d = result.detection
        header = ("detect_threshold", "true_positives", "false_positives", "false_negatives",
                  "recall", "precision", "f1")  # fmt: skip
        values = (
            d.threshold,
            d.true_positives,
            d.false_positives,
            d.false_negatives,
            d.recall,
            d.precision,
            d.f1,
        )
        blocks.append((header, [tuple(_cell(v) for v in values)]))
    if result.denoising is not None:
        n = result.denoising
        header_n = ("detect_threshold", "signal_hits", "signal_retained", "noise_hits", "noise_removed")
        values_n = (n.threshold, n.signal_hits, n.signal_retained, n.noise_hits, n.noise_removed)
        blocks.append((header_n, [tuple(_cell(v) for v in values_n)]))
    if result.detection_curve is not None:
        blocks.append(_csv_curve_block(result.detection_curve))
    if result.worst_samples is not None:
        header_s = ("sample", "acb_mse", *(f"mse_{c.name}" for c in result.classes))
        rows = [
            (_cell(s.index), _cell(s.acb_mse), *(_cell(m) for m in s.class_mse)) for s in result.worst_samples
        ]
        if any(s.file is not None for s in result.worst_samples):  # folders: the sample's file first
            header_s = ("file", *header_s)
            rows = [(_cell(s.file), *row) for s, row in zip(result.worst_samples, rows, strict=True)]
        blocks.append((header_s, rows))
    return blocks


def _csv_curve_block(curve: DetectionCurve) -> _Block:
    """One row per grid threshold; the noise removed too where the network's input was given."""
    header: tuple[str, ...] = ("threshold", "tp", "fp", "fn", "recall", "precision", "f1")
    columns: list[Sequence[Any]] = [curve.threshold, curve.tp, curve.fp, curve.fn, curve.recall,
                                    curve.precision, curve.f1]  # fmt: skip
    if curve.noise_removed is not None:
        header += ("noise_removed",)
        columns.append(curve.noise_removed)
    return header, [tuple(_cell(v) for v in row) for row in zip(*columns, strict=True)]


def _csv_class_rows(result: EvalResult) -> list[tuple[str, ...]]:
    rows = [tuple(_cell(getattr(c, column)) for column in CSV_COLUMNS) for c in result.classes]
    rows.append(
        tuple(
            _cell(v)
            for v in (
                OVERALL,
                result.elements,
                1.0 if result.elements else None,
                result.mse,
                None if result.mse is None else math.sqrt(result.mse),
                result.mae,
                result.max_abs_error,
                result.mean_target,
                result.mean_pred,
                None,
                result.acb_mse,
            )
        )
    )
    return rows


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.6g}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def stdout_console(file: TextIO | None = None) -> Console:
    """The console for the report: colour only on a terminal (and never with ``NO_COLOR``).

    A closed pipe is the caller's to handle (the command line meets it as :class:`BrokenPipeError`).
    """
    from rich.console import Console

    stream = sys.stdout if file is None else file
    terminal = stream.isatty()
    # Off a terminal rich would assume 80 columns and squeeze the table: give it room instead.
    return Console(file=stream, highlight=False, width=None if terminal else 200, soft_wrap=False)


# --------------------------------------------------------------------------- the report table
#
# A table of the report is first described as a _Grid of plain-text columns, then laid out for the
# console's width: in one rich table when its columns fit, else with its value columns split over
# several tables (each repeating the key columns).  A cell is never wrapped and a header word never
# broken, so that no number or class name is cut; only a grid that cannot fit even one value column
# per table is left to rich to squeeze, with its cells folded onto more lines (never an ellipsis).

_STATISTICS = ("count", "share", "MSE", "RMSE", "MAE", "max |error|",
               "mean target", "mean pred", "weight", "contribution")  # fmt: skip
_PADDING = 2  # a cell's padding: one space either side


def _text_width(text: str) -> int:
    from rich.cells import cell_len

    return cell_len(text)


@dataclass(frozen=True)
class _Column:
    """A column of a report table: the words of its header (never broken) and its cells (never wrapped)."""

    header: tuple[str, ...]
    cells: tuple[str, ...]
    justify: Literal["left", "right"] = "right"
    style: str = ""

    @property
    def min_width(self) -> int:
        """The widest header word or cell: the narrowest the column can be without cutting either."""
        return max(_text_width(text) for text in (*self.header, *self.cells, " "))

    @property
    def natural_width(self) -> int:
        """The width with the header on one line."""
        return max(self.min_width, _text_width(" ".join(self.header)))


@dataclass(frozen=True)
class _Grid:
    """A report table before layout: its columns, the first ``keys`` of them repeated in every part."""

    title: str | None
    columns: tuple[_Column, ...]
    keys: int = 0
    row_styles: tuple[str, ...] = ()
    section_before: int | None = None  # the row that a rule separates from those above it


def _table_width(widths: Sequence[int]) -> int:
    """The width of a table whose columns hold ``widths`` cells: padding and borders added."""
    return sum(widths) + _PADDING * len(widths) + len(widths) + 1


def _fit_widths(columns: Sequence[_Column], room: int) -> list[int] | None:
    """The widths of ``columns`` in ``room`` cells, headers on one line where room is left; None if too wide.

    The spare room goes first to the headers that need the least of it to stay on one line.
    """
    widths = [column.min_width for column in columns]
    spare = room - _table_width(widths)
    if spare < 0:
        return None
    for i in sorted(range(len(columns)), key=lambda i: columns[i].natural_width - widths[i]):
        grow = min(spare, columns[i].natural_width - widths[i])
        widths[i] += grow
        spare -= grow
    return widths


def _parts(grid: _Grid, room: int) -> list[tuple[_Column, ...]]:
    """The grid's columns in tables of at most ``room`` cells: its value columns packed in order."""
    keys, values = grid.columns[: grid.keys], grid.columns[grid.keys :]
    parts: list[tuple[_Column, ...]] = []
    part: tuple[_Column, ...] = ()
    for column in values:
        if part and _fit_widths((*keys, *part, column), room) is None:
            parts.append((*keys, *part))
            part = ()
        part += (column,)
    parts.append((*keys, *part))
    return parts


def _pack(words: Sequence[str], width: int, sep: str = " ") -> str:
    """The words joined by ``sep`` on as few lines of ``width`` cells as hold them, none broken."""
    lines: list[str] = []
    for word in words:
        if lines and _text_width(f"{lines[-1]}{sep}{word}") <= width:
            lines[-1] += f"{sep}{word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def _header(words: tuple[str, ...], width: int | None) -> Text:
    """The header's words on as few lines of ``width`` cells as hold them (one line when no width)."""
    from rich.text import Text

    return Text(" ".join(words) if width is None else _pack(words, width))


def _rich_table(
    grid: _Grid, columns: tuple[_Column, ...], widths: list[int] | None, title: str | None
) -> Table:
    from rich.table import Table
    from rich.text import Text

    from acbmse_cli._streams import printable

    # Paths and class names are the user's text, never markup: "[/a]" must print as "[/a]"; and a
    # path's control characters are escaped, so that a file name cannot drive the terminal.
    table = Table(title=None if title is None else Text(printable(title)), title_justify="left")
    for i, column in enumerate(columns):
        width = None if widths is None else widths[i]
        table.add_column(
            _header(column.header, width),
            justify=column.justify,
            style=column.style,
            width=width,
            overflow="fold",
        )
    for row in range(len(columns[0].cells)):
        if row == grid.section_before:
            table.add_section()
        style = grid.row_styles[row] if grid.row_styles else None
        table.add_row(*(Text(column.cells[row]) for column in columns), style=style)
    return table


def _print_grid(grid: _Grid, console: Console) -> None:
    """Print the grid in as few tables as fit the console's width, the title over the first."""
    title = grid.title
    for columns in _parts(grid, console.width):
        console.print(_rich_table(grid, columns, _fit_widths(columns, console.width), title))
        title = None


def _class_values(result: EvalResult) -> list[tuple[str, ...]]:
    """Each class's statistics, then the overall ones, as printed (in the order of ``_STATISTICS``)."""
    values: list[tuple[str, ...]] = [
        (
            f"{c.count:,}", _share(c.fraction), _num(c.mse), _num(c.rmse), _num(c.mae), _num(c.max_abs_error),
            _num(c.mean_target), _num(c.mean_pred), _num(c.weight), _num(c.contribution),
        )
        for c in result.classes
    ]  # fmt: skip
    values.append(
        (
            f"{result.elements:,}", _share(1.0 if result.elements else None), _num(result.mse),
            _num(None if result.mse is None else math.sqrt(result.mse)), _num(result.mae),
            _num(result.max_abs_error), _num(result.mean_target), _num(result.mean_pred), "",
            _num(result.acb_mse),
        )
    )  # fmt: skip
    return values


def _class_grid(result: EvalResult) -> _Grid:
    """A row per class and the overall row, a column per statistic."""
    values = _class_values(result)
    names = (*(c.name for c in result.classes), OVERALL)
    columns = (
        _Column(("class",), names, "left"),
        *(_Column(tuple(label.split()), tuple(v[i] for v in values)) for i, label in enumerate(_STATISTICS)),
    )
    n = len(result.classes)
    styles = ("",) * n + ("bold",)
    return _Grid(f"{result.pred} vs {result.target}", columns, keys=1, row_styles=styles, section_before=n)


def _statistics_grid(result: EvalResult) -> _Grid:
    """The class grid transposed: a row per statistic, a column per class and the overall column."""
    values = _class_values(result)
    columns = (
        _Column(("",), _STATISTICS, "left"),
        *(_Column((c.name,), v) for c, v in zip(result.classes, values[:-1], strict=True)),
        _Column((OVERALL,), values[-1], style="bold"),
    )
    return _Grid(f"{result.pred} vs {result.target}", columns, keys=1)


def _detection_grid(d: DetectionResult) -> _Grid:
    cells = (_num(d.recall), _num(d.precision), _num(d.f1),
             f"{d.true_positives:,}", f"{d.false_positives:,}", f"{d.false_negatives:,}")  # fmt: skip
    headers = ("recall", "precision", "F1", "true pos.", "false pos.", "false neg.")
    columns = tuple(_Column(tuple(h.split()), (c,)) for h, c in zip(headers, cells, strict=True))
    return _Grid(f"hit detection: prediction > {d.threshold:g}", columns)


def _worst_grid(result: EvalResult, worst: tuple[SampleResult, ...]) -> _Grid:
    from acbmse_cli._streams import printable

    files = [s.file for s in worst if s.file is not None]
    file_column = (_Column(("file",), tuple(printable(f) for f in files), justify="left"),) if files else ()
    columns = (
        *file_column,
        _Column(("sample",), tuple(str(s.index) for s in worst)),
        _Column(("ACB-MSE",), tuple(_num(s.acb_mse) for s in worst)),
        *(
            _Column(("MSE", c.name), tuple(_num(s.class_mse[i]) for s in worst))
            for i, c in enumerate(result.classes)
        ),
    )
    return _Grid(f"worst {len(worst)} samples (dim 0) by ACB-MSE", columns, keys=1 + len(file_column))


def _summary(result: EvalResult, width: int) -> Text:
    """The totals line; on a narrow console a line per total, each figure kept by its name."""
    from rich.text import Text

    totals = [f"ACB-MSE {_num(result.acb_mse)}", f"MSE {_num(result.mse)}", f"MAE {_num(result.mae)}"]
    if result.omitted is not None:
        totals.append(f"({result.omitted:,} elements with NaN/Inf left out)")
    if result.masked is not None:
        totals.append(f"({result.masked:,} elements left out by --mask)")
    return Text(_pack(totals, width, sep="   "))


def _curve_grid(curve: DetectionCurve) -> _Grid:
    best = curve.best_f1() or {}
    headers = ["AP", "best F1", "at threshold", "recall", "precision"]
    cells = [_num(curve.average_precision), _num(best.get("f1")), _num(best.get("threshold")),
             _num(best.get("recall")), _num(best.get("precision"))]  # fmt: skip
    for p in RECALL_AT_PRECISIONS:
        headers.append(f"recall at precision ≥ {p:g}")
        cells.append(_num(curve.recall_at_precision(p)))
    columns = tuple(_Column(tuple(h.split()), (c,)) for h, c in zip(headers, cells, strict=True))
    grid = curve.threshold
    return _Grid(f"hit finding at {len(grid)} thresholds, {grid[0]:g} to {grid[-1]:g}", columns)


def _denoising_grid(d: DenoisingResult) -> _Grid:
    headers = ("signal hits", "signal retained", "noise hits", "noise removed")
    cells = (f"{d.signal_hits:,}", _share(d.signal_retained), f"{d.noise_hits:,}", _share(d.noise_removed))
    columns = tuple(_Column(tuple(h.split()), (c,)) for h, c in zip(headers, cells, strict=True))
    return _Grid(f"denoising: prediction > {d.threshold:g}", columns)


def _comparison_grid(reports: Sequence[EvalResult]) -> _Grid:
    """A row per prediction: ACB-MSE, MSE, each class's MSE, and the detection figures asked for."""
    first = reports[0]
    columns = [
        _Column(("prediction",), tuple(r.pred for r in reports), "left"),
        _Column(("ACB-MSE",), tuple(_num(r.acb_mse) for r in reports)),
        _Column(("MSE",), tuple(_num(r.mse) for r in reports)),
        *(
            _Column(("MSE", c.name), tuple(_num(r.classes[i].mse) for r in reports))
            for i, c in enumerate(first.classes)
        ),
        *_detection_columns(reports),
    ]
    return _Grid(f"{len(reports)} predictions vs {first.target}", tuple(columns), keys=1)


def _detection_columns(reports: Sequence[EvalResult]) -> list[_Column]:
    """The comparison's columns of hit finding: at the threshold, noise removed, over the curve."""
    first, columns = reports[0], []
    if first.detection is not None:
        at = f"at {first.detection.threshold:g}"
        for name, header in (("recall", "recall"), ("precision", "precision"), ("f1", "F1")):
            cells = tuple(_num(getattr(r.detection, name, None)) for r in reports)
            columns.append(_Column((header, at), cells))
    if first.denoising is not None:
        cells = tuple(_share(getattr(r.denoising, "noise_removed", None)) for r in reports)
        columns.append(_Column(("noise", "removed"), cells))
    if first.detection_curve is not None:
        columns += _curve_columns(reports)
    return columns


def _curve_columns(reports: Sequence[EvalResult]) -> list[_Column]:
    curves = [r.detection_curve for r in reports]
    best = [{} if c is None else (c.best_f1() or {}) for c in curves]
    return [
        _Column(("AP",), tuple(_num(getattr(c, "average_precision", None)) for c in curves)),
        _Column(("best", "F1"), tuple(_num(b.get("f1")) for b in best)),
        _Column(("at", "threshold"), tuple(_num(b.get("threshold")) for b in best)),
    ]


def render_table(results: EvalResult | EvalComparison, console: Console) -> None:
    """The human report of each prediction, then (for several) one comparison table, a row each."""
    reports = _reports(results)
    for result in reports:
        _render_one(result, console)
    if len(reports) > 1:
        _print_grid(_comparison_grid(reports), console)


def _render_one(result: EvalResult, console: Console) -> None:
    """The human report: a row per class, the overall row and totals; detection and worst samples.

    Where the console is too narrow for a row per class, the statistics are the rows and the classes
    the columns; no table is wider than the console unless a single cell is (that cell is folded).
    """
    grid = _class_grid(result)
    if _fit_widths(grid.columns, console.width) is None:
        grid = _statistics_grid(result)
    _print_grid(grid, console)
    console.print(_summary(result, console.width))
    if result.detection is not None:
        _print_grid(_detection_grid(result.detection), console)
    if result.denoising is not None:
        _print_grid(_denoising_grid(result.denoising), console)
    if result.detection_curve is not None:
        _print_grid(_curve_grid(result.detection_curve), console)
    if result.worst_samples is not None:
        _print_grid(_worst_grid(result, result.worst_samples), console)


class DelayedProgress:
    """A progress callback that shows a rich bar on stderr once the work has run ``delay`` seconds.

    Quick runs print nothing; the bar is removed when the work is done.
    Use as a context manager and call it with ``(done, total)``.
    """

    def __init__(self, description: str = "evaluating", *, delay: float = 0.5) -> None:
        self.description = description
        self.delay = delay
        self._start = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None
        self._bytes = False

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            if done >= total or time.monotonic() - self._start < self.delay:
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                *((DownloadColumn(),) if self._bytes else ()),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=total)
        self._progress.update(self._task, completed=done, description=self.description)

    def files(self, files_done: int, files: int, done: int, total: int) -> None:
        """The progress of folders: files done of ``files``, and bytes ``done`` of ``total``."""
        self._bytes = True
        self.description = f"evaluating {files_done}/{files} files"
        self(done, total)

    def __enter__(self) -> DelayedProgress:
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------- curves and demo
#
# The tables of ``acbmse curves`` and ``acbmse demo``, the demo's training progress bars and the
# "Wrote PATH" lines of both.

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rich.table import Table

    from acbmse_cli.curves import Curves, Sweep
    from acbmse_cli.demo import DemoResult

__all__ += [
    "TrainingProgress",
    "demo_metrics_table",
    "render_curves_table",
    "render_demo_table",
]


def render_curves_table(curves: Curves, console: Console) -> None:
    """One table per sweep of its telling points (start, middle, end, exact recovery), every loss."""
    share = f"{100 * curves.recovery_share:g}% recovery"
    from acbmse_cli.curves import Y_LABELS

    titles = {
        "signal_size": f"Loss against signal size at {share}",
        "recovery": (
            f"Loss against recovery (signal of {curves.recovery_hits} in {curves.recovery_pixels} pixels)"
        ),
        "gradient": f"{Y_LABELS['gradient']} at {share}",
    }
    for sweep in curves.sweeps():
        console.print(_sweep_table(sweep, titles[sweep.name]))


def _sweep_table(sweep: Sweep, title: str) -> Table:
    from rich.table import Table

    from acbmse_cli._loss_names import LOSS_LABELS, LOSS_NAMES
    from acbmse_cli.curves import X_LABELS

    table = Table(title=title, title_justify="left")
    table.add_column("point")
    table.add_column(X_LABELS[sweep.name], justify="right")
    for name in LOSS_NAMES:
        table.add_column(LOSS_LABELS[name], justify="right")
    series = sweep.series()
    for label, i in sweep.marks:
        row = (sweep.x[i], *(series[name][i] for name in LOSS_NAMES))
        table.add_row(label, *(f"{v:.6g}" for v in row))
    return table


def _demo_cell(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _demo_title(result: DemoResult) -> str:
    opts = result.options
    density = "" if opts.signal_hits is None else f", about {opts.signal_hits} signal hits each"
    return (
        f"{opts.eval_frames} held-out frames of {opts.height}x{opts.width}{density} after {opts.steps} "
        f"steps of {opts.batch_size} frames (seed {opts.seed}, {result.device})"
    )


def _demo_table(
    title: str, caption: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> Table:
    """A table with a row per loss: the loss's label, then right-aligned numbers."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column(headers[0])
    for header in headers[1:]:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


_DemoMetrics = dict[str, dict[str, Any]]  # {loss label: that loss's metrics}


def _fixed_threshold_rows(metrics: _DemoMetrics) -> list[list[str]]:
    return [
        [label, _demo_cell(m["recall"]), _demo_cell(m["precision"]), _demo_cell(m["f1"]),
         _demo_cell(m["noise_removed"]), f"{m['blank_frames']}/{m['frames']}"]
        for label, m in metrics.items()
    ]  # fmt: skip


def _curve_rows(metrics: _DemoMetrics) -> list[list[str]]:
    rows = []
    for label, m in metrics.items():
        best = m["best_f1"] or {}
        rows.append([label, _demo_cell(m["average_precision"]), _demo_cell(best.get("f1")),
                     _demo_cell(best.get("threshold"), 1), _demo_cell(best.get("recall")),
                     _demo_cell(best.get("precision"))])  # fmt: skip
    return rows


def _error_rows(metrics: _DemoMetrics) -> list[list[str]]:
    return [
        [label, _demo_cell(m["mse_hit"], 1), _demo_cell(m["mse_nonhit"], 2), _demo_cell(m["acb_mse"], 1)]
        for label, m in metrics.items()
    ]


def demo_metrics_table(result: DemoResult) -> list[Table]:
    """Rich tables of the demo's held-out metrics, a row per trained loss, each within 80 columns: hit
    finding at the detection threshold, hit finding over every threshold, the error per class."""
    from acbmse_cli._loss_names import LOSS_LABELS

    opts, at = result.options, f"{result.detect_threshold:g}"
    metrics = {LOSS_LABELS[name]: run.metrics for name, run in result.runs.items()}
    first = next(iter(metrics.values()))  # the held-out set is the same for every loss
    signal, noise = (_demo_count(first[key]) for key in ("signal_hits", "noise_hits"))
    grid = result.grid.values
    return [
        _demo_table(
            f"hit finding at output > {at}",
            f"recall: the signal retained, of {signal} true hits\n"
            f"noise removed: of the input's {noise} noise hits\n"
            f"blank frame: no output above {at}",
            ["loss", "recall", "precision", "F1", "noise\nremoved", "blank\nframes"],
            _fixed_threshold_rows(metrics),
        ),
        _demo_table(
            f"hit finding over {len(grid)} thresholds, {grid[0]:g} to {grid[-1]:.4g}",
            "AP: average precision over the thresholds\n"
            "best F1: the highest, at the threshold shown;\nrecall and precision: at that threshold",
            ["loss", "AP", "best\nF1", "at\noutput >", "recall", "precision"],
            _curve_rows(metrics),
        ),
        _demo_table(
            f"error per class; ACB-MSE with A={opts.hit_weight:g}, B={opts.nonhit_weight:g}",
            None,
            ["loss", "MSE\nhits", "MSE\nnon-hits", "ACB-MSE"],
            _error_rows(metrics),
        ),
    ]


def _demo_count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "no"


def render_demo_table(result: DemoResult, console: Console) -> None:
    """Print what the run was, then the tables of :func:`demo_metrics_table` of ``result``."""
    console.print(_demo_title(result), highlight=False)
    for table in demo_metrics_table(result):
        console.print()
        console.print(table)


class TrainingProgress:
    """The demo's progress bars on stderr, one per loss; shown only when stderr is a terminal.

    Use as a context manager; :attr:`callback` is the ``progress`` of :func:`~acbmse_cli.demo.run_demo`
    (``None`` when no bars are shown, so that training does not pay for them).
    """

    def __init__(self, losses: Sequence[str], steps: int, *, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from acbmse_cli._loss_names import LOSS_LABELS

        stderr = Console(stderr=True)
        self.shown = enabled and stderr.is_terminal
        self._bars = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4g}"),
            TimeElapsedColumn(),
            console=stderr,
            disable=not self.shown,
        )
        self._tasks = {
            name: self._bars.add_task(LOSS_LABELS[name], total=steps, loss=float("nan")) for name in losses
        }

    @property
    def callback(self) -> Callable[[str, int, int, float], None] | None:
        """``progress(loss, step, steps, loss_value)`` updating the bars, or ``None`` when none is shown."""
        return self._update if self.shown else None

    def _update(self, name: str, step: int, total: int, value: float) -> None:
        self._bars.update(self._tasks[name], completed=step, loss=value)

    def __enter__(self) -> TrainingProgress:
        if self.shown:
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self._bars.stop()


# --------------------------------------------------------------------------- the study
#
# ``acbmse demo`` with lists of weights or densities, or several seeds: a row per configuration with
# the mean and standard deviation over its seeds, laid out like the eval report (value columns split
# over several tables where the terminal is narrow, never a number cut).

if TYPE_CHECKING:
    from acbmse_cli.study import StudyResult

__all__ += ["StudyProgressBar", "render_study_table"]

#: The study table's value columns: header words, the metric (``best_f1``: its ``f1``), the decimals.
_STUDY_COLUMNS: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("AP",), "average_precision", 3),
    (("best", "F1"), "best_f1", 3),
    (("signal", "retained"), "signal_retained", 3),
    (("noise", "removed"), "noise_removed", 3),
    (("blank", "frames"), "blank_fraction", 3),
    (("MSE", "hits"), "mse_hit", 1),
    (("MSE", "non-hits"), "mse_nonhit", 2),
)


def _study_number(stats: dict[str, Any], metric: str) -> float | None:
    value = stats.get(metric)
    if isinstance(value, dict):
        value = value.get("f1")
    return value if isinstance(value, (int, float)) else None


def _mean_sd_cell(mean: float | None, sd: float | None, digits: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _weight_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _study_grid(result: StudyResult) -> _Grid:
    from acbmse_cli._loss_names import LOSS_LABELS

    summaries = result.summaries()
    keys: list[_Column] = []
    if result.plan.signal_hits != (None,):
        keys.append(_Column(("signal", "hits"), tuple(str(s["signal_hits"]) for s in summaries)))
    keys += [
        _Column(("loss",), tuple(LOSS_LABELS[s["loss"]] for s in summaries), justify="left"),
        _Column(("A",), tuple(_weight_cell(s["hit_weight"]) for s in summaries)),
        _Column(("B",), tuple(_weight_cell(s["nonhit_weight"]) for s in summaries)),
        _Column(("seeds",), tuple(str(len(s["runs"])) for s in summaries)),
    ]
    values = [
        _Column(header, tuple(
            _mean_sd_cell(_study_number(s["mean"], metric), _study_number(s["sd"], metric), digits)
            for s in summaries))
        for header, metric, digits in _STUDY_COLUMNS
    ]  # fmt: skip
    return _Grid(title=None, columns=(*keys, *values), keys=len(keys))


def _study_title(result: StudyResult) -> str:
    base, seeds = result.plan.base, result.plan.seed_values()
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]} to {seeds[-1]}"
    return (
        f"{base.eval_frames} held-out frames of {base.height}x{base.width} after {base.steps} steps of "
        f"{base.batch_size} frames; mean ± sd over {which} ({result.device})"
    )


def render_study_table(result: StudyResult, console: Console) -> None:
    """What the study was, a row per configuration (mean ± sd over its seeds), and how to read it."""
    console.print(_study_title(result), highlight=False)
    console.print()
    if result.rows():
        _print_grid(_study_grid(result), console)
    at = f"{result.plan.base.detect_threshold:g}"
    notes = [
        "AP, best F1: over the thresholds of each run's curve",
        f"signal retained, noise removed: at output > {at}",
        f"blank frames: share of held-out outputs with no pixel above {at}",
        "A, B: the weights of ACB-MSE; sd: sample standard deviation over the seeds",
    ]
    if result.interrupted:
        finished = sum(len(runs) for runs in result.runs.values())
        notes.append(f"interrupted: {finished} of {len(result.plan.runs())} runs finished")
    console.print(_pack(notes, console.width, sep="; "), highlight=False)


class StudyProgressBar:
    """One progress bar on stderr over every run of a study, with the runs done and the time left;
    shown only when stderr is a terminal.  :attr:`callback` is :func:`~acbmse_cli.study.run_study`'s
    ``progress`` (``None`` when no bar is shown)."""

    def __init__(self, runs: int, steps: int, *, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        stderr = Console(stderr=True)
        self.shown = enabled and stderr.is_terminal
        self._steps = steps
        self._done = [0] * runs  # per run: steps trained, + 1 once scored
        self._runs = runs
        self._bar = Progress(
            TextColumn("grid"),
            BarColumn(),
            TextColumn("{task.fields[finished]}/{task.fields[runs]} runs"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=stderr,
            disable=not self.shown,
        )
        self._task = self._bar.add_task("grid", total=runs * (steps + 1), finished=0, runs=runs)

    @property
    def callback(self) -> Callable[[int, int, bool], None] | None:
        return self._update if self.shown else None

    def _update(self, run: int, steps_done: int, finished: bool) -> None:
        self._done[run] = steps_done + (1 if finished else 0)
        finished_runs = sum(1 for done in self._done if done > self._steps)
        self._bar.update(self._task, completed=sum(self._done), finished=finished_runs)

    def __enter__(self) -> StudyProgressBar:
        if self.shown:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self._bar.stop()
