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
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from acbmse_cli.evaluate import EvalResult

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


def _json_safe(value: Any) -> Any:
    """Replace the non-finite floats (an overflowed sum) by None: JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def render_json(result: EvalResult) -> str:
    """The JSON document of :meth:`EvalResult.to_dict`, with a final newline."""
    return json.dumps(_json_safe(result.to_dict()), indent=2, allow_nan=False) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(result: EvalResult) -> str:
    """A header, one row per class, and the ``overall`` row (its ``contribution`` is the ACB-MSE).

    With detection counts or worst samples, each follows as its own block
    (header and rows) after an empty line.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in result.classes:
        writer.writerow(_cell(getattr(c, column)) for column in CSV_COLUMNS)
    writer.writerow(
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
    if result.detection is not None:
        d = result.detection
        out.write("\n")
        writer.writerow(
            (
                "detect_threshold",
                "true_positives",
                "false_positives",
                "false_negatives",
                "recall",
                "precision",
                "f1",
            )
        )
        writer.writerow(
            _cell(v)
            for v in (
                d.threshold,
                d.true_positives,
                d.false_positives,
                d.false_negatives,
                d.recall,
                d.precision,
                d.f1,
            )
        )
    if result.worst_samples is not None:
        out.write("\n")
        writer.writerow(("sample", "acb_mse", *(f"mse_{c.name}" for c in result.classes)))
        for s in result.worst_samples:
            writer.writerow((_cell(s.index), _cell(s.acb_mse), *(_cell(m) for m in s.class_mse)))
    return out.getvalue()


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.6g}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def stdout_console(file: TextIO | None = None) -> Console:
    """The console for the report: colour only on a terminal (and never with ``NO_COLOR``).

    A closed pipe on stdout raises :class:`BrokenPipeError` (rich itself would exit with 1).
    """
    from rich.console import Console

    class ReportConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit with 1 here, which is the failed-gate code: let the caller decide.
            self.quiet = True
            raise BrokenPipeError

    stream = sys.stdout if file is None else file
    terminal = stream.isatty()
    # Off a terminal rich would assume 80 columns and squeeze the table: give it room instead.
    return ReportConsole(file=stream, highlight=False, width=None if terminal else 200, soft_wrap=False)


def render_table(result: EvalResult, console: Console) -> None:
    """The human report: a row per class, the overall row and totals; detection and worst samples."""
    from rich.table import Table
    from rich.text import Text

    # Paths and class names are the user's text, never markup: "[/a]" must print as "[/a]".
    table = Table(title=Text(f"{result.pred} vs {result.target}"), title_justify="left")
    for header in ("class", "count", "share", "MSE", "RMSE", "MAE", "max |error|",
                   "mean target", "mean pred", "weight", "contribution"):  # fmt: skip
        table.add_column(header, justify="left" if header == "class" else "right")
    for c in result.classes:
        table.add_row(
            Text(c.name), f"{c.count:,}", _share(c.fraction), _num(c.mse), _num(c.rmse), _num(c.mae),
            _num(c.max_abs_error), _num(c.mean_target), _num(c.mean_pred), _num(c.weight),
            _num(c.contribution),
        )  # fmt: skip
    table.add_section()
    table.add_row(
        OVERALL,
        f"{result.elements:,}",
        _share(1.0 if result.elements else None),
        _num(result.mse),
        _num(None if result.mse is None else math.sqrt(result.mse)),
        _num(result.mae),
        _num(result.max_abs_error),
        _num(result.mean_target),
        _num(result.mean_pred),
        "",
        _num(result.acb_mse),
        style="bold",
    )
    console.print(table)
    summary = f"ACB-MSE {_num(result.acb_mse)}   MSE {_num(result.mse)}   MAE {_num(result.mae)}"
    if result.omitted is not None:
        summary += f"   ({result.omitted:,} elements with NaN/Inf left out)"
    console.print(summary)

    if result.detection is not None:
        d = result.detection
        det = Table(title=f"hit detection: prediction > {d.threshold:g}", title_justify="left")
        for header in ("recall", "precision", "F1", "true pos.", "false pos.", "false neg."):
            det.add_column(header, justify="right")
        det.add_row(
            _num(d.recall), _num(d.precision), _num(d.f1),
            f"{d.true_positives:,}", f"{d.false_positives:,}", f"{d.false_negatives:,}",
        )  # fmt: skip
        console.print(det)

    if result.worst_samples is not None:
        worst = Table(
            title=f"worst {len(result.worst_samples)} samples (dim 0) by ACB-MSE", title_justify="left"
        )
        worst.add_column("sample", justify="right")
        worst.add_column("ACB-MSE", justify="right")
        for c in result.classes:
            worst.add_column(Text(f"MSE {c.name}"), justify="right")
        for s in result.worst_samples:
            worst.add_row(str(s.index), _num(s.acb_mse), *(_num(m) for m in s.class_mse))
        console.print(worst)


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

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            if done >= total or time.monotonic() - self._start < self.delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=total)
        self._progress.update(self._task, completed=done)

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
    import os
    from collections.abc import Callable, Iterable, Sequence

    from rich.table import Table

    from acbmse_cli.curves import Curves, Sweep
    from acbmse_cli.demo import DemoResult

__all__ += [
    "TrainingProgress",
    "demo_metrics_table",
    "render_curves_table",
    "render_demo_table",
    "render_written",
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


def _demo_cell(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def demo_metrics_table(result: DemoResult) -> Table:
    """A rich table, one row per trained loss, of the demo's held-out metrics."""
    from rich.table import Table

    from acbmse_cli._loss_names import LOSS_LABELS

    opts = result.options
    table = Table(
        title=(
            f"{opts.eval_frames} held-out frames of {opts.height}x{opts.width} after {opts.steps} steps "
            f"of {opts.batch_size} frames (seed {opts.seed}, {result.device})"
        ),
        caption=(
            f"hit detected where output > {result.detect_threshold:g}; blank frame: none detected; "
            f"A={opts.hit_weight:g}, B={opts.nonhit_weight:g}"
        ),
    )
    table.add_column("loss")
    for column in ("recall", "precision", "F1", "blank\nframes", "MSE\nhits", "MSE\nnon-hits", "ACB-MSE"):
        table.add_column(column, justify="right")
    for name, run in result.runs.items():
        m = run.metrics
        table.add_row(
            LOSS_LABELS[name],
            _demo_cell(m["recall"]),
            _demo_cell(m["precision"]),
            _demo_cell(m["f1"]),
            f"{m['blank_frames']}/{m['frames']}",
            _demo_cell(m["mse_hit"], 1),
            _demo_cell(m["mse_nonhit"], 2),
            _demo_cell(m["acb_mse"], 1),
        )
    return table


def render_demo_table(result: DemoResult, console: Console) -> None:
    """Print :func:`demo_metrics_table` of ``result``."""
    console.print(demo_metrics_table(result))


def render_written(paths: Iterable[str | os.PathLike[str]], console: Console) -> None:
    """A ``Wrote PATH`` line per file written (the path as it is, never read as markup)."""
    for path in paths:
        console.print(f"Wrote {path}", markup=False, highlight=False, soft_wrap=True)


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
