"""What the figures of ``acbmse curves`` and ``acbmse eval --plot`` share: the image formats, the
matplotlib settings that make the files reproducible and fit for journals, and a figure's writer.

matplotlib is imported inside the functions only: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from acbmse_cli._files import Writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "IMAGE_FORMATS",
    "ImageFormat",
    "figure_settings",
    "image_writer",
    "new_figure",
    "quiet_parser_deprecations",
]

ImageFormat = Literal["png", "svg", "pdf"]
IMAGE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
DPI = 150

# No timestamps or version strings in the files: the same options give the same bytes.
_METADATA: dict[str, dict[str, str | None]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
}


@contextlib.contextmanager
def figure_settings(salt: str) -> Iterator[None]:
    """matplotlib's settings while figures are saved: fonts embedded in PDF (and PostScript) as
    TrueType, not Type 3 (which some journals refuse), and SVG element ids derived from ``salt``
    rather than drawn at random, so that the same figure gives the same bytes."""
    with quiet_parser_deprecations():  # matplotlib parses its font settings when first imported
        import matplotlib

    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": salt}):
        yield


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib figure on the Agg canvas (no display, no global pyplot state)."""
    with quiet_parser_deprecations():  # matplotlib parses its font settings when first imported
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def image_writer(draw: Callable[[], Figure], image_format: str) -> Writer:
    """A writer that draws a figure and saves it in ``image_format``."""

    def write(stream: BinaryIO) -> None:
        with quiet_parser_deprecations():
            draw().savefig(stream, format=image_format, dpi=DPI, metadata=_METADATA[image_format])

    return write


@contextlib.contextmanager
def quiet_parser_deprecations() -> Iterator[None]:
    """Silence the deprecation warnings that matplotlib releases before 3.11 raise from the text
    parser they use (pyparsing 3.3 renamed its API): they say nothing about the figure, and
    would reach the user's terminal as noise."""
    with warnings.catch_warnings():
        try:
            from pyparsing.warnings import PyparsingDeprecationWarning
        except ImportError:  # a pyparsing without the warning: nothing to silence
            pass
        else:
            warnings.simplefilter("ignore", PyparsingDeprecationWarning)
        yield
