"""The loss-response figures of ``acbmse curves``, drawn with matplotlib (Agg, no display needed).

:func:`write_figures` draws the three sweeps of :mod:`acbmse_cli.curves` and
writes them atomically: every destination is checked first (not a folder, in
a writable folder), every image is then written to a temporary file beside its
destination, and only when all of them are complete are they renamed into
place, so an interrupted or failed run leaves no half image, and a destination
known to be unusable stops the run before any image is replaced.  A rename that
fails even so (a race with another process) leaves the images renamed before it
in place and removes the remaining temporaries.

The y axes are logarithmic like the seed's figures.  Where a series touches 0
(exact recovery in figure 2, or a zero weight) the axis is symmetric-log
instead: linear in a narrow band above 0, logarithmic beyond, so a zero is
drawn at the bottom of the axis rather than silently dropped.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from acbmse_cli.curves import X_LABELS, Curves, Sweep
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["IMAGE_FORMATS", "IMAGE_NAMES", "ImageFormat", "check_out_dir", "draw_figures", "write_figures"]

ImageFormat = Literal["png", "svg", "pdf"]
IMAGE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
#: File stem of each figure, in the order of :meth:`Curves.sweeps`.
IMAGE_NAMES: tuple[str, ...] = ("loss_curve_1", "loss_curve_2", "loss_curve_3")

# Same colour and line for a loss in every figure (as in the seed's figures).
_STYLE: dict[str, dict[str, object]] = {
    "mae": {"label": "MAE", "color": "tab:blue", "linestyle": "-"},
    "mse": {"label": "MSE", "color": "tab:orange", "linestyle": "-"},
    "acb_mse": {"label": "ACB-MSE", "color": "tab:green", "linestyle": "--"},
}
# No timestamps or version strings in the files: the same options give the same bytes.
_METADATA: dict[str, dict[str, str | None]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
}
_DPI = 150
_LEFT, _RIGHT = 0.13, 0.975


# --------------------------------------------------------------------------- output folder


def check_out_dir(out: str | os.PathLike[str], image_format: str | None = None) -> None:
    """Refuse an output folder that cannot be written, before anything is computed or written.

    ``out`` may not exist yet (it is created on writing), but then its nearest
    existing parent must be a writable folder.  An empty ``out`` is refused (it
    would mean the current folder).  With ``image_format``, the three image
    paths in ``out`` are checked too: none may be a folder.
    """
    if os.fspath(out) == "":
        raise InputError("--out is empty: name a folder (use . for the current folder)")
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"--out {out}: {probe} is a broken symbolic link")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        where = "is" if probe == out else f"lies under {probe}, which is"
        raise InputError(f"--out {out} {where} a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: the folder {probe} is not writable")
    if image_format is not None:
        for target in _targets(out, image_format):
            if target.is_dir():
                raise InputError(f"--out {out}: {target} is a folder; cannot write the image there")


def _targets(out: Path, image_format: str) -> list[Path]:
    return [out / f"{name}.{image_format}" for name in IMAGE_NAMES]


def _make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and missing parents; return the folders created, deepest first."""
    missing: list[Path] = []
    probe = out
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir()
    return missing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    for name in ("mae", "mse", "acb_mse"):
        style = _STYLE[name]
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
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.08)
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
    """Figures 1 and 3: a series per loss along the 50%-recovery signal-size sweep."""
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


def draw_figures(curves: Curves) -> list[Figure]:
    """The three figures, in the order of :data:`IMAGE_NAMES`."""
    return [_figure_signal_size(curves), _figure_recovery(curves), _figure_gradient(curves)]


# --------------------------------------------------------------------------- writing


def write_figures(curves: Curves, out: str | os.PathLike[str], image_format: str = "png") -> list[Path]:
    """Draw the figures and write them into ``out`` (created if missing), atomically.

    Returns the paths written, ``out/loss_curve_{1,2,3}.<image_format>``.

    Every destination is checked before anything is written (see :func:`check_out_dir`), all images
    are written to temporary files, and only then renamed into place.

    Raises:
        InputError: unknown format, or ``out`` or one of the image paths cannot be written; then no
            temporary file is left behind, and no image is replaced unless a rename itself fails.
    """
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    import matplotlib

    check_out_dir(out, image_format)
    out = Path(out)
    figures = draw_figures(curves)
    targets = _targets(out, image_format)
    created: list[Path] = []
    temporaries: list[Path] = []
    try:
        created = _make_dirs(out)
        with matplotlib.rc_context({"svg.hashsalt": "acbmse-curves"}):
            for fig, target in zip(figures, targets, strict=True):
                handle, name = tempfile.mkstemp(dir=out, prefix=f".{target.name}.", suffix=".tmp")
                temporaries.append(Path(name))
                with os.fdopen(handle, "wb") as stream:
                    fig.savefig(stream, format=image_format, dpi=_DPI, metadata=_METADATA[image_format])
                os.chmod(name, 0o666 & ~_umask())
        for temporary, target in zip(temporaries, targets, strict=True):
            os.replace(temporary, target)
    except OSError as exc:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        where = exc.filename if exc.filename else out
        raise InputError(f"cannot write the figures into {out}: {exc.strerror or exc} ({where})") from None
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
    return targets
