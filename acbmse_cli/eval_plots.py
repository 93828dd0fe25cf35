"""Figures of ``acbmse eval --plot``."""

from __future__ import annotations

import os
from pathlib import Path

from acbmse_cli._files import OutputDir
from acbmse_cli.evaluate import EvalComparison


def write_eval_figures(
    comparison: EvalComparison, out: str | os.PathLike[str] | OutputDir, image_format: str = "png"
) -> list[Path]:
    """Write the figures of ``comparison`` into ``out``; the paths written."""
    raise NotImplementedError
