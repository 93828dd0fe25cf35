"""The figures of ``acbmse eval --plot``, drawn with matplotlib (Agg: no display needed).

:func:`write_eval_figures` draws, from an evaluation made with ``figure_stats``, the figures that
its options have the statistics for, and writes them together or not at all
(:func:`acbmse_cli._files.write_files`):

- ``detection``: precision against recall of "prediction > t", one step curve per prediction from
  ``--detect-curve`` (the area under each step curve is its average precision, given in the
  legend), its best-F1 threshold marked; the point of ``--detect-threshold`` marked as well.
  Without ``--detect-curve`` the figure shows the one point of ``--detect-threshold`` of each
  prediction; without either it is not drawn.  With ``--input``, a second panel: the noise removed
  against the signal retained at the same thresholds.
- ``errors``: the distribution of the error ``prediction - target`` of each class (a panel per
  class, log counts, one line per prediction) on a symmetric logarithmic axis.
- ``calibration``: the prediction against the true value on the true hits, a 2-D histogram per
  prediction with the identity line, from the hit threshold to the largest hit value; a note gives the
  share of the hits predicted below or above that range (the edge rows, where a missed hit
  lands).  Not drawn with ``--labels``: labelled classes have no true hits to calibrate on (the
  evaluation counts none).
- ``worst``: with ``--per-sample``, when the samples are images (at least two dimensions beyond
  dim 0 once the dimensions of size 1 are dropped; more than two are stacked along the rows):
  target, prediction and error map of the worst samples.  With one prediction, its
  :data:`WORST_SHOWN` worst; with several, the worst of each prediction in turn (its worst, then
  every prediction's second worst...) up to :data:`WORST_SHOWN` samples, each drawn for every
  prediction, so that the predictions compare on the same samples.  Those samples alone are
  re-read from the files.

Memory stays bounded whatever the file size: everything is drawn from the evaluation's histograms,
but for the few samples of ``worst``.  Each prediction keeps one colour in every figure; a
prediction whose file name names one loss (``pred_mse.npy``, ``pred_mae.npy``,
``pred_acb_mse.npy`` as ``acbmse demo --save-data`` writes them; also ``acbmse``, ``acb-mse``,
``acb``) has that loss's colour of ``acbmse curves`` and ``acbmse demo``.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from acbmse_cli._checks import as_input_error, check_choice
from acbmse_cli._figures import IMAGE_FORMATS, figure_settings, image_writer, new_figure
from acbmse_cli._files import OutputDir, as_output_dir, check_destinations, write_files
from acbmse_cli._loss_names import LOSS_COLORS
from acbmse_cli.arrays import open_array
from acbmse_cli.errors import InputError
from acbmse_cli.evaluate import EvalComparison, EvalResult
from acbmse_cli.histograms import DetectionCurve, error_bin_edges

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "FIGURE_NAMES",
    "WORST_SHOWN",
    "ErrorHistograms",
    "PredictionStyle",
    "WorstSample",
    "check_figure_destinations",
    "draw_calibration",
    "draw_detection",
    "draw_errors",
    "draw_worst",
    "error_histograms",
    "eval_figures",
    "loss_of_file",
    "prediction_styles",
    "read_worst_samples",
    "write_eval_figures",
]

#: The file stem of each figure, in the order they are written.
FIGURE_NAMES: tuple[str, ...] = ("detection", "errors", "calibration", "worst")
#: How many samples ``worst`` shows.
WORST_SHOWN = 4

# Colours for the predictions that do not name a loss: tab10 without the losses' own.
_OTHER_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
_LOSS_WORDS: dict[str, frozenset[str]] = {
    "mse": frozenset({"mse"}),
    "mae": frozenset({"mae"}),
    "acb_mse": frozenset({"acbmse", "acb"}),
}
_ERROR_LINTHRESH = 1e-3  # the middle bin of the error histogram: |error| below this


# --------------------------------------------------------------------------- one colour per prediction


@dataclass(frozen=True)
class PredictionStyle:
    """How every figure names and colours one prediction."""

    label: str
    color: str


def loss_of_file(path: str | os.PathLike[str]) -> str | None:
    """The loss that a prediction's file name names (``"mse"``, ``"mae"``, ``"acb_mse"``), when it
    names exactly one: ``pred_acb_mse.npy`` is ACB-MSE, ``model_mae.pt`` MAE, ``pred.npy`` none."""
    stem = re.sub(r"acb[-_ ]?mse", "acbmse", Path(path).stem.lower())
    words = set(re.split(r"[^a-z0-9]+", stem))
    named = [loss for loss, names in _LOSS_WORDS.items() if words & names]
    return named[0] if len(named) == 1 else None


def prediction_styles(preds: Sequence[str]) -> list[PredictionStyle]:
    """A distinct label and colour per prediction: the loss's colour where the file name names a
    loss that no other prediction names too; the other predictions take the colours left, in turn."""
    losses = [loss_of_file(p) for p in preds]
    claimed = Counter(losses)
    own = [loss if loss is not None and claimed[loss] == 1 else None for loss in losses]
    taken = {LOSS_COLORS[loss] for loss in own if loss is not None}
    spare = [c for c in (*_OTHER_COLORS, *LOSS_COLORS.values()) if c not in taken]
    others = iter(spare[k % len(spare)] for k in range(len(preds)))
    colors = [LOSS_COLORS[loss] if loss is not None else next(others) for loss in own]
    return [PredictionStyle(label, color) for label, color in zip(_labels(preds), colors, strict=True)]


def _labels(preds: Sequence[str]) -> list[str]:
    """The file names; the paths as given where two names are the same; numbered if still the same."""
    labels = [Path(p).name for p in preds]
    if len(set(labels)) < len(labels):
        labels = list(preds)
    repeated = {label for label, n in Counter(labels).items() if n > 1}
    return [f"{label} [{k + 1}]" if label in repeated else label for k, label in enumerate(labels)]


# --------------------------------------------------------------------------- writing


def eval_figures(comparison: EvalComparison) -> dict[str, Callable[[], Figure]]:
    """The figures that ``comparison`` has the statistics for, by file stem (in the order of
    :data:`FIGURE_NAMES`), each as a function that draws it.  The worst samples are read here.

    Raises:
        ValueError: the comparison was evaluated without ``figure_stats``.
        InputError: a file of the worst samples cannot be read again.
    """
    reports = comparison.reports
    if any(r.figure_stats is None for r in reports):
        raise ValueError("the figures need an evaluation with figure_stats=True")
    styles = prediction_styles([r.pred for r in reports])
    figures: dict[str, Callable[[], Figure]] = {}
    if _has_detection(reports):
        figures["detection"] = lambda: draw_detection(comparison, styles)
    figures["errors"] = lambda: draw_errors(comparison, styles)
    if all(r.figure_bounds is not None for r in reports):
        figures["calibration"] = lambda: draw_calibration(comparison, styles)
    samples = read_worst_samples(comparison)
    if samples:
        figures["worst"] = lambda: draw_worst(comparison, samples, styles)
    return figures


def check_figure_destinations(out: OutputDir, image_format: str) -> None:
    """Refuse now, before the evaluation, a figure's path that :func:`write_eval_figures` could not
    write (a folder in its place, a folder that cannot be written).

    Raises:
        InputError: naming the path.
    """
    paths = [out.path / f"{name}.{image_format}" for name in FIGURE_NAMES]
    check_destinations(paths, context=f"{out.option} {out}")


def write_eval_figures(
    comparison: EvalComparison, out: str | os.PathLike[str] | OutputDir, image_format: str = "png"
) -> list[Path]:
    """Draw the figures of ``comparison`` (see the module) and write them into ``out`` (created if
    missing) as ``<name>.<image_format>``, all together or not at all; the paths written.

    Raises:
        InputError: unknown format, ``out`` or a figure's path cannot be written (then no temporary
            file is left and no figure is replaced), or a file of the worst samples cannot be read.
    """
    with as_input_error():
        check_choice("--image-format", image_format, IMAGE_FORMATS)
    folder = as_output_dir(out, option="--plot")
    writers = {
        folder.path / f"{name}.{image_format}": image_writer(draw, image_format)
        for name, draw in eval_figures(comparison).items()
    }
    with figure_settings("acbmse-eval"):
        return write_files(writers, context=f"{folder.option} {folder}")


# --------------------------------------------------------------------------- shared drawing


def _grid_figure(panels: int, *, columns: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes in rows of ``columns``, each about ``size`` inches."""
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    fig = new_figure(figsize=(size[0] * columns, size[1] * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, columns, k + 1) for k in range(panels)]
    for ax in axes:
        ax.grid(visible=True, which="major", alpha=0.3)
    return fig, axes


def _title(fig: Figure, title: str, subtitle: str) -> None:
    """The title and the subtitle below it, wrapped to the figure's width."""
    width = max(40, int(fig.get_figwidth() * 11))  # characters of 11 points per inch, about
    lines = [
        textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)  # paths stay whole
        for text in (title, subtitle)
    ]
    fig.suptitle("\n".join(lines), fontsize=11)


def _run(report: EvalResult, name: str) -> Any:
    """An option of the run that made ``report`` (``None`` where it is not recorded)."""
    return None if report.run is None else report.run.get(name)


def _classes_line(report: EvalResult) -> str:
    threshold = _run(report, "hit_threshold")
    if threshold is None:
        return "classes from the labels file"
    return f"true hits: |target| > {threshold:g}"


def _unit_square(ax: Axes, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


# --------------------------------------------------------------------------- detection


def _has_detection(reports: Sequence[EvalResult]) -> bool:
    return any(r.detection_curve is not None or r.detection is not None for r in reports)


def _has_denoising(reports: Sequence[EvalResult]) -> bool:
    return any(
        r.denoising is not None
        or (r.detection_curve is not None and r.detection_curve.noise_removed is not None)
        for r in reports
    )


def draw_detection(comparison: EvalComparison, styles: Sequence[PredictionStyle]) -> Figure:
    """Precision against recall of each prediction; with the network's input known, a second panel
    of the noise removed against the signal retained."""
    reports = comparison.reports
    denoising = _has_denoising(reports)
    fig, axes = _grid_figure(2 if denoising else 1, columns=2, size=(5.8, 5.6))
    _iso_f1(axes[0])
    panels = [
        (_draw_precision_recall, "recall  (share of the true hits detected)",
         "precision  (share of detections that are hits)", "precision against recall"),
        (_draw_denoising, "signal retained  (share of the true hits kept)",
         "noise removed  (share of the noise hits)",
         "noise removed against signal retained (noise: hits of --input only)"),
    ]  # fmt: skip
    for ax, (draw, xlabel, ylabel, title) in zip(axes, panels, strict=False):
        for report, style in zip(reports, styles, strict=True):
            draw(ax, report, style)
        _marker_keys(ax, reports)
        _unit_square(ax, xlabel, ylabel)
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
        ax.set_title(title, fontsize=10)
    _title(fig, f"Hit finding against {comparison.target}", _detection_line(reports[0]))
    return fig


def _detection_line(report: EvalResult) -> str:
    parts = []
    curve = report.detection_curve
    if curve is not None:
        low, high = curve.threshold[0], curve.threshold[-1]
        parts.append(
            f"detected: prediction > t, at {len(curve.threshold)} thresholds t from {low:g} to {high:g}"
        )
    if report.detection is not None:
        parts.append(
            f"{'marked' if curve is not None else 'detected'}: prediction > {report.detection.threshold:g}"
        )
    return "; ".join([*parts, _classes_line(report)])


def _iso_f1(ax: Axes) -> None:
    """Faint lines of equal F1, for reading F1 off the curves."""
    for f1 in (0.2, 0.4, 0.6, 0.8):
        recall = np.linspace(f1 / (2 - f1), 1.0, 200)
        ax.plot(recall, f1 * recall / (2 * recall - f1), color="0.75", linewidth=0.8, zorder=1)
        ax.annotate(f"F1 = {f1:g}", (1.0, f1 / (2 - f1)), xytext=(-2, 3), textcoords="offset points",
                    ha="right", fontsize=7, color="0.55")  # fmt: skip


def _precision_recall_steps(curve: DetectionCurve) -> tuple[list[float], list[float]]:
    """Recall and precision in decreasing order of threshold, where something is detected, with the
    first precision repeated at recall 0: drawn as steps (``steps-pre``), the area under them is
    the average precision."""
    points = [
        (r, p)
        for r, p in zip(reversed(curve.recall), reversed(curve.precision), strict=True)
        if r is not None and p is not None
    ]
    if not points:
        return [], []
    recall, precision = (list(v) for v in zip(*points, strict=True))
    return [0.0, *recall], [precision[0], *precision]


def _draw_precision_recall(ax: Axes, report: EvalResult, style: PredictionStyle) -> None:
    curve, fixed = report.detection_curve, report.detection
    if curve is not None:
        recall, precision = _precision_recall_steps(curve)
        best = curve.best_f1()
        ax.plot(recall, precision, drawstyle="steps-pre", color=style.color, linewidth=1.8,
                label=_curve_label(style.label, curve))  # fmt: skip
        if best is not None and best["recall"] is not None and best["precision"] is not None:
            _mark(ax, best["recall"], best["precision"], style, "o")
    if fixed is not None:
        if fixed.recall is not None and fixed.precision is not None:
            _mark(ax, fixed.recall, fixed.precision, style, "s")
        if curve is None:
            ax.plot(
                [],
                [],
                color=style.color,
                marker="s",
                linestyle="none",
                label=_point_label(style.label, fixed.f1),
            )


def _curve_label(label: str, curve: DetectionCurve) -> str:
    best = curve.best_f1()
    if best is None or curve.average_precision is None:
        return f"{label}: no true hits, or nothing detected"
    return (
        f"{label}: AP {curve.average_precision:.3f}, best F1 {best['f1']:.3f} at t = {best['threshold']:.4g}"
    )


def _point_label(label: str, f1: float | None) -> str:
    return f"{label}: F1 {f1:.3f}" if f1 is not None else f"{label}: no true hits, or nothing detected"


def _mark(ax: Axes, x: float, y: float, style: PredictionStyle, marker: str) -> None:
    ax.plot([x], [y], marker=marker, markersize=7, color=style.color, markeredgecolor="black",
            linestyle="none", zorder=4)  # fmt: skip


def _marker_keys(ax: Axes, reports: Sequence[EvalResult]) -> None:
    """Legend entries for the markers: the best-F1 threshold, the --detect-threshold one."""
    if any(r.detection_curve is not None for r in reports):
        ax.plot([], [], marker="o", color="0.6", markeredgecolor="black", linestyle="none",
                label="best-F1 threshold")  # fmt: skip
        fixed = next((r.detection for r in reports if r.detection is not None), None)
        if fixed is not None:
            ax.plot([], [], marker="s", color="0.6", markeredgecolor="black", linestyle="none",
                    label=f"t = {fixed.threshold:g} (--detect-threshold)")  # fmt: skip


def _draw_denoising(ax: Axes, report: EvalResult, style: PredictionStyle) -> None:
    curve, fixed = report.detection_curve, report.denoising
    label = style.label
    if fixed is not None and fixed.signal_retained is not None and fixed.noise_removed is not None:
        label += (
            f": {fixed.signal_retained:.1%} signal retained, {fixed.noise_removed:.1%} noise removed"
            f" at t = {fixed.threshold:g}"
        )
        _mark(ax, fixed.signal_retained, fixed.noise_removed, style, "s")
    if curve is not None and curve.noise_removed is not None:
        _denoising_curve(ax, curve, curve.noise_removed, style, label)
    else:
        ax.plot([], [], color=style.color, marker="s", linestyle="none", label=label)


def _denoising_curve(
    ax: Axes, curve: DetectionCurve, removed: tuple[float | None, ...], style: PredictionStyle, label: str
) -> None:
    """Noise removed against signal retained along the grid, the best-F1 threshold marked."""
    points = [(r, n) for r, n in zip(curve.recall, removed, strict=True) if r is not None and n is not None]
    ax.plot([r for r, _ in points], [n for _, n in points], color=style.color, linewidth=1.8, label=label)
    best = curve.best_f1()
    if best is not None:
        k = curve.threshold.index(best["threshold"])
        retained, noise = curve.recall[k], removed[k]
        if retained is not None and noise is not None:
            _mark(ax, retained, noise, style, "o")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ErrorHistograms:
    """What the ``errors`` figure draws: ``counts[p, c, b]`` is how many elements of class ``c``
    have an error ``prediction - target`` of prediction ``p`` in bin ``b``, from ``edges[b]`` to
    ``edges[b + 1]`` (:func:`~acbmse_cli.histograms.error_bin_edges`; ``-inf`` and ``inf`` at the
    ends)."""

    classes: tuple[str, ...]
    edges: np.ndarray
    counts: np.ndarray


def error_histograms(comparison: EvalComparison) -> ErrorHistograms:
    """The error histograms of every prediction, from its figure statistics."""
    counts = []
    for report in comparison.reports:
        assert report.figure_stats is not None
        counts.append(report.figure_stats.errors.cpu().numpy())
    classes = tuple(c.name for c in comparison.reports[0].classes)
    return ErrorHistograms(classes, np.asarray(error_bin_edges()), np.stack(counts))


def draw_errors(comparison: EvalComparison, styles: Sequence[PredictionStyle]) -> Figure:
    """The error of each class: a panel per class, a line per prediction, log counts."""
    data = error_histograms(comparison)
    edges = _drawn_edges(data.edges)
    limit = _error_limit(data.counts, edges)
    fig, axes = _grid_figure(len(data.classes), columns=2 if len(data.classes) <= 4 else 3, size=(6.2, 4.4))
    for c, (ax, name) in enumerate(zip(axes, data.classes, strict=False)):
        for p, style in enumerate(styles):
            ax.stairs(
                data.counts[p, c], edges, baseline=None, color=style.color, linewidth=1.4, label=style.label
            )
        _error_axes(ax, limit, int(data.counts[:, c].max(initial=0)))
        ax.set_title(_class_title(name, data.counts[:, c]), fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(styles), 4),
               fontsize=8)  # fmt: skip
    _title(
        fig,
        f"Error per class against {comparison.target}",
        f"bins of 1/20 decade of |error|; |error| < {_ERROR_LINTHRESH:g} in the middle bin; "
        + _classes_line(comparison.reports[0]),
    )
    return fig


def _class_title(name: str, counts: np.ndarray) -> str:
    totals = {int(n) for n in counts.sum(axis=-1)}
    if len(totals) != 1:  # elements left out (--nan-policy omit) differ between the predictions
        return name
    (total,) = totals
    return f"{name}: {total:,} elements" if total else f"{name}: no elements"


def _drawn_edges(edges: np.ndarray) -> np.ndarray:
    """The edges with the infinite ends replaced by one more bin's width, so the edge bins show."""
    drawn = edges.astype(np.float64, copy=True)
    ratio = drawn[-2] / drawn[-3]
    drawn[0], drawn[-1] = drawn[1] * ratio, drawn[-2] * ratio
    return drawn


def _error_limit(counts: np.ndarray, edges: np.ndarray) -> float:
    """Half the width of the x axis: the largest |edge| of a bin that holds anything, and two bins."""
    occupied = np.flatnonzero(counts.sum(axis=(0, 1)))
    if occupied.size == 0:
        return 10 * _ERROR_LINTHRESH
    reach = max(abs(edges[occupied[0]]), abs(edges[occupied[-1] + 1]))
    return float(max(reach * 10**0.1, 10 * _ERROR_LINTHRESH))


def _error_axes(ax: Axes, limit: float, most: int) -> None:
    # the zero line before the scale: on a symlog axis matplotlib 3.7 warns about a line at 0 alone
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
    # linscale: the middle bin (|error| < linthresh) as wide as the others, a twentieth of a decade
    ax.set_xscale("symlog", linthresh=_ERROR_LINTHRESH, linscale=0.025)
    ax.set_xlim(-limit, limit)
    ax.set_xticks(_error_ticks(limit))
    ax.set_ylim(0.5, max(most, 1) * 2.0)  # first: a class without elements has nothing to autoscale on
    ax.set_yscale("log")
    ax.set_xlabel("prediction − target  (the target's units; symmetric log scale)")
    ax.set_ylabel("elements per bin")


def _error_ticks(limit: float) -> list[float]:
    """0 and powers of ten each side, at most about five per side."""
    top = math.floor(math.log10(limit))
    low = round(math.log10(_ERROR_LINTHRESH)) + 1  # the threshold itself would crowd the 0
    step = max(1, math.ceil((top - low + 1) / 5))
    magnitudes = [10.0**k for k in range(top, low - 1, -step)]
    return sorted([0.0, *magnitudes, *(-m for m in magnitudes)])


# --------------------------------------------------------------------------- calibration


def draw_calibration(comparison: EvalComparison, styles: Sequence[PredictionStyle]) -> Figure:
    """Predicted against true value on the true hits: a 2-D histogram per prediction, one colour
    scale for all, with the identity line."""
    from matplotlib.colors import LogNorm

    reports = comparison.reports
    bounds = reports[0].figure_bounds
    assert bounds is not None
    cells = []
    for report in reports:
        assert report.figure_stats is not None
        cells.append(report.figure_stats.calibration.cpu().numpy())
    norm = LogNorm(vmin=1, vmax=max(2, *(int(c.max()) for c in cells)))
    edges = np.linspace(bounds[0], bounds[1], cells[0].shape[0] + 1)
    fig, axes = _grid_figure(len(reports), columns=3, size=(4.6, 4.4))
    mesh = None
    for ax, cell, style in zip(axes, cells, styles, strict=True):
        ax.grid(visible=False)
        # rows of the counts are true values, columns predictions: x true, y predicted
        mesh = ax.pcolormesh(edges, edges, np.ma.masked_equal(cell.T, 0), cmap="viridis", norm=norm)
        ax.plot(bounds, bounds, color="black", linestyle="--", linewidth=1.0, label="prediction = true value")
        ax.set_xlim(bounds)
        ax.set_ylim(bounds)
        ax.set_aspect("equal")
        ax.set_title(style.label, color=style.color, fontsize=10)
        ax.set_xlabel("true value  (target, true hits only)")
        ax.set_ylabel("predicted value")
        note = _edge_note(cell, bounds)
        if note:
            ax.text(0.97, 0.03, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})  # fmt: skip
    assert mesh is not None
    fig.colorbar(mesh, ax=axes, label="true hits per cell", shrink=0.9)
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    n = cells[0].shape[0]
    _title(
        fig,
        f"Predicted against true value on the true hits of {comparison.target}",
        f"{_classes_line(reports[0])}; {n} x {n} cells over [{bounds[0]:g}, {bounds[1]:g}] "
        "(hit threshold to largest hit), values outside counted in the edge cells",
    )
    return fig


def _edge_note(cell: np.ndarray, bounds: tuple[float, float]) -> str:
    """How many hits the bottom and top rows hold: predictions beyond the target's hit values (a
    missed hit predicted near 0 lands in the bottom row), which the colours alone understate."""
    hits = int(cell.sum())
    if hits == 0:
        return "no true hits"
    width = (bounds[1] - bounds[0]) / cell.shape[1]
    below, above = cell[:, 0].sum() / hits, cell[:, -1].sum() / hits
    lines = []
    if below >= 0.01:
        lines.append(f"{below:.0%} of the hits predicted below {bounds[0] + width:.4g}")
    if above >= 0.01:
        lines.append(f"{above:.0%} of the hits predicted above {bounds[1] - width:.4g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- worst samples


@dataclass(frozen=True)
class WorstSample:
    """One row of the ``worst`` figure: sample ``index`` (dim 0), the ``rank``-th worst (1: the
    worst) of prediction ``owner``, whose ACB-MSE on it is ``acb_mse``; its target and every
    prediction's values, as 2-D images."""

    index: int
    owner: int
    rank: int
    acb_mse: float
    target: np.ndarray
    preds: tuple[np.ndarray, ...]


def read_worst_samples(comparison: EvalComparison, shown: int = WORST_SHOWN) -> list[WorstSample]:
    """The samples of the ``worst`` figure (see the module), read from the files, those samples
    only; empty without ``--per-sample``, when the samples are not images, or with folders.

    Raises:
        InputError: a file cannot be read, or no longer has the shape it was evaluated with.
    """
    reports = comparison.reports
    if any(s.file is not None for r in reports for s in r.worst_samples or ()):
        return []  # folders: the samples are in many files
    chosen = _choose_worst(reports, shown)
    if not chosen:
        return []
    indices = sorted({index for index, *_ in chosen})  # in file order: compressed members stream
    target_key = _run(reports[0], "target_key")
    with open_array(comparison.target, key=target_key, key_option="--target-key") as target:
        shape = target.shape
        image = _image_shape(shape)
        if image is None:
            return []
        targets = _read_samples(target, indices, image)
    preds = []
    for report in reports:
        with open_array(report.pred, key=_run(report, "pred_key"), key_option="--pred-key") as pred:
            if pred.shape != shape:
                raise InputError(
                    f"{pred.name} has shape {pred.shape} but {target.name} has shape {shape}: "
                    "a file changed after it was evaluated"
                )
            preds.append(_read_samples(pred, indices, image))
    return [
        WorstSample(index, owner, rank, loss, targets[index], tuple(p[index] for p in preds))
        for index, owner, rank, loss in chosen
    ]


def _choose_worst(reports: Sequence[EvalResult], shown: int) -> list[tuple[int, int, int, float]]:
    """``(index, owner, rank, acb_mse)`` of the samples shown: each prediction's worst in turn,
    then each one's second worst..., every sample once, ``shown`` in all."""
    lists = [r.worst_samples or () for r in reports]
    chosen: list[tuple[int, int, int, float]] = []
    seen: set[int] = set()
    for rank in range(max(len(samples) for samples in lists)):
        for owner, samples in enumerate(lists):
            if len(chosen) == shown:
                return chosen
            if rank < len(samples) and samples[rank].index not in seen:
                seen.add(samples[rank].index)
                chosen.append((samples[rank].index, owner, rank + 1, samples[rank].acb_mse))
    return chosen


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """A sample as a 2-D image (rows, columns): the dimensions beyond dim 0 but those of size 1,
    all but the last stacked along the rows; ``None`` where fewer than two are left."""
    sample = [d for d in shape[1:] if d != 1]
    if len(sample) < 2:
        return None
    return math.prod(sample[:-1]), sample[-1]


def _read_samples(source: Any, indices: Sequence[int], image: tuple[int, int]) -> dict[int, np.ndarray]:
    """Samples ``indices`` (increasing) of an open :class:`~acbmse_cli.arrays.ArraySource`, as images."""
    row = math.prod(source.shape[1:])
    return {
        i: np.array(source.read(i * row, (i + 1) * row).numpy(), dtype=np.float64).reshape(image)
        for i in indices
    }


def draw_worst(
    comparison: EvalComparison, samples: Sequence[WorstSample], styles: Sequence[PredictionStyle]
) -> Figure:
    """A row per sample: its target and each prediction, then each prediction's error map
    (prediction - target); one colour scale for the values (the target's range) and one for the
    errors, for all rows."""
    n = len(styles)
    ratio = samples[0].target.shape[0] / samples[0].target.shape[1]
    # a long strip (a sample of three or more dimensions, stacked) fills its panel instead
    aspect: Literal["equal", "auto"] = "equal" if 0.25 <= ratio <= 4 else "auto"
    height = 2.3 * min(ratio, 1.5) if aspect == "equal" else 2.3
    fig = new_figure(
        figsize=(2.3 * (1 + 2 * n) + 0.8, (height + 0.4) * len(samples) + 2.0), layout="constrained"
    )
    axes = fig.subplots(len(samples), 1 + 2 * n, squeeze=False)
    values, errors = _value_range(samples), _error_range(samples)
    for r, sample in enumerate(samples):
        value_image, error_image = _draw_worst_row(list(axes[r]), sample, values, errors, aspect)
        axes[r][0].set_ylabel(_row_label(sample, styles), fontsize=8)
    for c, ax in enumerate(axes[0]):
        _column_title(ax, c, styles)
    value_axes = [ax for row in axes for ax in row[: 1 + n]]
    error_axes = [ax for row in axes for ax in row[1 + n :]]
    fig.colorbar(value_image, ax=value_axes, label="value  (the target's units)", extend="both",
                 location="bottom", shrink=0.8, aspect=30)  # fmt: skip
    fig.colorbar(error_image, ax=error_axes, label="prediction − target",
                 location="bottom", shrink=0.8, aspect=30)  # fmt: skip
    _title(
        fig,
        f"Worst samples (ACB-MSE) against {comparison.target}",
        "target and each prediction (values beyond the target's range in the colours of the scale's "
        "ends), then each prediction's error map",
    )
    return fig


def _draw_worst_row(
    axes: list[Axes],
    sample: WorstSample,
    values: tuple[float, float],
    errors: float,
    aspect: Literal["equal", "auto"],
) -> tuple[AxesImage, AxesImage]:
    """Draw one sample's panels; an image of the value scale and one of the error scale."""
    n = len(sample.preds)
    value_image = _image(axes[0], sample.target, "viridis", values, aspect)
    error_image = value_image
    for p, pred in enumerate(sample.preds):
        _image(axes[1 + p], pred, "viridis", values, aspect)
        error_image = _image(axes[1 + n + p], pred - sample.target, "RdBu_r", (-errors, errors), aspect)
    return value_image, error_image


def _image(
    ax: Axes, data: np.ndarray, cmap: str, limits: tuple[float, float], aspect: Literal["equal", "auto"]
) -> AxesImage:
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(data, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest", aspect=aspect)


def _row_label(sample: WorstSample, styles: Sequence[PredictionStyle]) -> str:
    if len(styles) == 1:
        return f"sample {sample.index}\nACB-MSE {sample.acb_mse:.4g}"
    return f"sample {sample.index}\nworst #{sample.rank} of\n{styles[sample.owner].label}"


def _column_title(ax: Axes, column: int, styles: Sequence[PredictionStyle]) -> None:
    if column == 0:
        ax.set_title("target", fontsize=9)
        return
    n = len(styles)
    style = styles[(column - 1) % n]
    what = "prediction" if column <= n else "error"
    ax.set_title(f"{style.label}\n{what}", fontsize=9, color=style.color)


def _value_range(samples: Sequence[WorstSample]) -> tuple[float, float]:
    """The colour range of the values: the targets' finite values; the predictions' where the
    targets are constant; a unit around the value where everything is."""
    for arrays in ([s.target for s in samples], [p for s in samples for p in (s.target, *s.preds)]):
        finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
        if finite.size and finite.max() > finite.min():
            return float(finite.min()), float(finite.max())
    middle = float(finite[0]) if finite.size else 0.0
    return middle - 0.5, middle + 0.5


def _error_range(samples: Sequence[WorstSample]) -> float:
    """The largest finite |prediction - target| of the samples (1 where there is none)."""
    largest = 0.0
    for sample in samples:
        for pred in sample.preds:
            error = np.abs(pred - sample.target)
            error = error[np.isfinite(error)]
            if error.size:
                largest = max(largest, float(error.max()))
    return largest if largest > 0 else 1.0
