"""The ``"run"`` record of every JSON document: which version made it, and with which options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from acbmse_cli._version import __version__

__all__ = ["run_record"]


def run_record(options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"version": ..., **options}``: the options that shaped the numbers, as JSON values."""
    return {"version": __version__, **{name: _plain(value) for name, value in options.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths, devices
