"""The three losses that ``acbmse curves`` and ``acbmse demo`` compare, by name and by label.

No torch here: the command line and the renderers read these names without importing it.
"""

from __future__ import annotations

__all__ = ["LOSS_COLORS", "LOSS_LABELS", "LOSS_NAMES"]

#: The losses, in the order of every table, CSV row and JSON object.
LOSS_NAMES: tuple[str, ...] = ("mse", "mae", "acb_mse")
#: How a table, legend or progress bar names each loss.
LOSS_LABELS: dict[str, str] = {"mse": "MSE", "mae": "MAE", "acb_mse": "ACB-MSE"}
#: The colour of each loss in every figure (``curves``, ``demo`` and ``eval``), as matplotlib names it.
LOSS_COLORS: dict[str, str] = {"mse": "tab:orange", "mae": "tab:blue", "acb_mse": "tab:green"}
