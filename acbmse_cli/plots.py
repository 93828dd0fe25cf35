"""The loss-response figures of ``acbmse curves``, drawn with matplotlib (Agg, no display needed).

:func:`write_figures` draws the three sweeps of :mod:`acbmse_cli.curves` and writes the three images
together or not at all (:func:`acbmse_cli._files.write_files`): an interrupted or failed run leaves no
half image, and a destination known to be unusable stops the run before any image is replaced.

The y axes are logarithmic.  Where a series touches 0 (exact recovery in figure 2, or a zero weight) the
axis is symmetric-log instead: linear in a narrow band above 0, logarithmic beyond, so a zero is drawn at
the bottom of the axis rather than silently dropped.  PDF files embed their fonts as TrueType
(:func:`acbmse_cli._figures.figure_settings`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from acbmse_cli._checks import as_input_error, check_choice
from acbmse_cli._figures import (
    IMAGE_FORMATS,
    ImageFormat,
    figure_settings,
    image_writer,
    quiet_parser_deprecations,
)
from acbmse_cli._files import OutputDir, as_output_dir, write_files
from acbmse_cli._loss_names import LOSS_COLORS, LOSS_LABELS
from acbmse_cli.curves import X_LABELS, Curves, Sweep

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "IMAGE_FORMATS",
    "IMAGE_NAMES",
    "ImageFormat",
    "draw_figures",
    "quiet_parser_deprecations",
    "write_figures",
]

#: File stem of each figure, in the order of :meth:`Curves.sweeps`.
IMAGE_NAMES: tuple[str, ...] = ("loss_curve_1", "loss_curve_2", "loss_curve_3")

# Same colour and line for a loss in every figure; the legend lists the losses in this order.
_STYLE: dict[str, dict[str, object]] = {
    "mae": {"label": LOSS_LABELS["mae"], "color": LOSS_COLORS["mae"], "linestyle": "-"},
    "mse": {"label": LOSS_LABELS["mse"], "color": LOSS_COLORS["mse"], "linestyle": "-"},
    "acb_mse": {"label": LOSS_LABELS["acb_mse"], "color": LOSS_COLORS["acb_mse"], "linestyle": "--"},
}
_LEFT, _RIGHT = 0.13, 0.975


# --------------------------------------------------------------------------- drawing


def _positive_floor(values: Sequence[float]) -> float | None:
    """The power of ten at or below the smallest positive value, None if there is none."""
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    return float(10.0 ** math.floor(math.log10(min(positive))))


def _set_y_scale(ax: Axes, values: Sequence[float]) -> str:
    """Log y axis; symmetric-log (zero at the bottom) where a value is 0; linear if none is positive."""
    floor = _positive_floor(values)
    if floor is None:
        ax.set_yscale("linear")
        ax.set_ylim(bottom=0.0)
        return "linear"
    if min(values) > 0:
        ax.set_yscale("log")
        return "log"
    ax.set_yscale("symlog", linthresh=floor, linscale=0.4)
    ax.set_ylim(bottom=0.0)
    return "symlog"


def _plot_series(ax: Axes, sweep: Sweep) -> None:
    few = len(sweep.x) < 30
    for name, style in _STYLE.items():
        ax.plot(
            sweep.x,
            sweep.series()[name],
            marker="o" if few else None,
            markersize=3,
            linewidth=1.8,
            **style,  # type: ignore[arg-type]
        )


def _settings_line(curves: Curves, image_pixels: int, extra: str = "") -> str:
    weights = f"A = {curves.hit_weight:g}, B = {curves.nonhit_weight:g}"
    return f"{weights}; hit value {curves.value:g}; image of {image_pixels} pixels{extra}"


def _new_figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0))
    FigureCanvasAgg(fig)
    # Fixed margins that fit the labels: a layout engine would double the drawing time.
    fig.subplots_adjust(left=_LEFT, right=_RIGHT, bottom=0.105, top=0.87)
    ax = fig.add_subplot()
    ax.grid(visible=True, which="major", alpha=0.3)
    ax.grid(visible=True, which="minor", alpha=0.08)
    return fig, ax


def _finish(fig: Figure, ax: Axes, title: str, subtitle: str, xlabel: str, ylabel: str) -> None:
    fig.suptitle(title, x=(_LEFT + _RIGHT) / 2, fontsize=13, fontweight="bold")
    ax.set_title(subtitle, fontsize=9, color="0.3")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", framealpha=0.9)


def _figure_signal_size(curves: Curves) -> Figure:
    return _figure_against_signal_size(
        curves, "signal_size", "Loss against signal size", "Loss  (ToF² for MSE and ACB-MSE, ToF for MAE)"
    )


def _figure_recovery(curves: Curves) -> Figure:
    sweep = curves.recovery
    fig, ax = _new_figure()
    ax.axvspan(0, 1, color="0.5", alpha=0.07, linewidth=0)
    ax.axvline(1.0, color="0.35", linestyle=":", linewidth=1.2)
    _plot_series(ax, sweep)
    all_values = [v for ys in sweep.series().values() for v in ys]
    scale = _set_y_scale(ax, all_values)
    exact = dict((label, i) for label, i in sweep.marks)["exact recovery"]
    zeros = [sweep.series()[n][exact] for n in ("mae", "mse", "acb_mse")]
    ax.plot([1.0], [max(zeros)], marker="v", color="black", markersize=7, linestyle="none")
    note = f"\n(y axis linear from 0 to {_positive_floor(all_values):g})" if scale == "symlog" else ""
    ax.annotate(
        f"exact recovery: all three losses are {max(zeros):g}{note}",
        xy=(1.0, max(zeros)),
        xytext=(14, 10),
        textcoords="offset points",
        fontsize=8.5,
        va="bottom",
        arrowprops={"arrowstyle": "-", "color": "0.4", "linewidth": 0.8},
    )
    ax.text(
        0.5, 0.32, "signal\nmissed", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8.5
    )
    ax.text(
        (1.0 + sweep.x[-1]) / 2,
        0.98,
        "false hits (overshoot)",
        transform=ax.get_xaxis_transform(),
        ha="center",
        va="top",
        fontsize=8.5,
    )
    ax.set_xlim(0, sweep.x[-1])
    _finish(
        fig,
        ax,
        "Loss against signal recovery and overshoot",
        _settings_line(
            curves,
            curves.recovery_pixels,
            f"; signal of {curves.recovery_hits} pixel{'s' if curves.recovery_hits != 1 else ''} "
            "(1/6 of the image)",
        ),
        f"{X_LABELS['recovery']}: 1 = exact recovery, {sweep.x[-1]:g} = whole image lit",
        "Loss  (ToF² for MSE and ACB-MSE, ToF for MAE)",
    )
    return fig


def _figure_gradient(curves: Curves) -> Figure:
    return _figure_against_signal_size(
        curves,
        "gradient",
        "Gradient on the signal against signal size",
        "Gradient mass on the hit pixels, Σ |∂loss/∂prediction|\n"
        "(ToF for MSE and ACB-MSE, dimensionless for MAE)",
    )


def _figure_against_signal_size(curves: Curves, name: str, title: str, ylabel: str) -> Figure:
    """Figures 1 and 3: a series per loss along the signal-size sweep."""
    sweep = curves.signal_size if name == "signal_size" else curves.gradient
    fig, ax = _new_figure()
    _plot_series(ax, sweep)
    _set_y_scale(ax, [v for ys in sweep.series().values() for v in ys])
    ax.set_xlim(0, 100)
    share = f"{100 * curves.recovery_share:g}%"
    _finish(
        fig,
        ax,
        f"{title} at {share} recovery",
        _settings_line(curves, curves.pixels, f"; {share} of the hit pixels returned"),
        X_LABELS[name],
        ylabel,
    )
    return fig


_FIGURES: tuple[Callable[[Curves], Figure], ...] = (_figure_signal_size, _figure_recovery, _figure_gradient)


def draw_figures(curves: Curves) -> list[Figure]:
    """The three figures, in the order of :data:`IMAGE_NAMES`."""
    return [draw(curves) for draw in _FIGURES]


# --------------------------------------------------------------------------- writing


def write_figures(
    curves: Curves, out: str | os.PathLike[str] | OutputDir, image_format: str = "png"
) -> list[Path]:
    """Draw the figures and write them into ``out`` (created if missing), all together or not at all.

    Returns the paths written, ``out/loss_curve_{1,2,3}.<image_format>``.  ``out`` is checked here
    unless it is an :class:`~acbmse_cli._files.OutputDir` already.

    Raises:
        InputError: unknown format, or ``out`` or one of the image paths cannot be written; then no
            temporary file is left behind, and no image is replaced unless a rename itself fails.
    """
    with as_input_error():
        check_choice("--image-format", image_format, IMAGE_FORMATS)
    folder = as_output_dir(out, option="--out")
    writers = {
        folder.path / f"{name}.{image_format}": image_writer(_bound(draw, curves), image_format)
        for name, draw in zip(IMAGE_NAMES, _FIGURES, strict=True)
    }
    with figure_settings("acbmse-curves"):
        return write_files(writers, context=f"{folder.option} {folder}")


def _bound(draw: Callable[[Curves], Figure], curves: Curves) -> Callable[[], Figure]:
    return lambda: draw(curves)
