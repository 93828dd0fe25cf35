"""ACB-MSE: automatic class-balanced mean squared error for PyTorch, and the ``acbmse`` tool.

The loss names are loaded on first use, so that ``import acbmse_cli`` (and the
command line's ``--help``) does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acbmse_cli._version import __version__

if TYPE_CHECKING:
    from acbmse_cli.loss import ACBLoss, ACBMSELoss, ClassStats, acb_mse_loss, balanced_loss, class_stats

__all__ = [
    "ACBLoss",
    "ACBMSELoss",
    "ClassStats",
    "__version__",
    "acb_mse_loss",
    "balanced_loss",
    "class_stats",
]

_LAZY_NAMES = frozenset(
    {"ACBLoss", "ACBMSELoss", "ClassStats", "acb_mse_loss", "balanced_loss", "class_stats"}
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        from acbmse_cli import loss

        return getattr(loss, name)
    raise AttributeError(f"module 'acbmse_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_NAMES)
