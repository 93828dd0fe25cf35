"""Choosing the device that a command computes on (``--device``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """The torch device for a ``--device`` value; :class:`InputError` if it is not there."""
    import torch

    text = spec.strip().lower()
    if not _DEVICE_RE.match(text):
        raise InputError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("--device mps was asked for, but no MPS device is available")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise InputError(f"--device {text} was asked for, but no CUDA device is available")
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(
            f"--device {text} was asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return device
