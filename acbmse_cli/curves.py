"""The loss-response sweeps behind ``acbmse curves``, as data (no plotting here).

Each sweep builds synthetic target/prediction images, a batch of them (one row
per point of the sweep), and measures them with the real losses: the
project's :func:`~acbmse_cli.loss.acb_mse_loss`, torch's ``mse_loss`` and
``l1_loss``, and autograd for the gradients.  No closed-form value is typed in
anywhere; the formulas live in the tests, as the independent reference.

The three sweeps (``--pixels`` = P, ToF value of a hit = v):

- ``signal_size``: an image of P pixels whose first 2, 4, ... hit pixels hold
  v (ending at P, so the last point is 100%), the rest 0.  The prediction keeps
  ``recovery`` of the hit pixels and returns the others as 0.  x: hit pixels in
  percent of the image.
- ``recovery``: a signal that is exactly one sixth of the image (the image is
  P rounded to the nearest multiple of 6 pixels, at least 6).  Pixels are
  returned (set to v) one after another, first the signal, then the non-hit
  pixels, from none to the whole image.  x: returned pixels as a multiple of
  the true signal (exact recovery at 1).
- ``gradient``: the images of ``signal_size``; y is the gradient mass on the
  signal, the sum over hit pixels of ``|d loss / d prediction|``.

Kept hit pixels at a given recovery: ``floor(recovery * hits + 1/2)``, i.e.
rounded to the nearest whole pixel, halves up.

This module depends on torch and the project's loss only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from acbmse_cli.errors import InputError
from acbmse_cli.loss import acb_mse_loss, hit_mask

__all__ = [
    "MAX_PIXELS",
    "MAX_VALUE",
    "MAX_WEIGHT",
    "MIN_VALUE",
    "SIGNAL_SHARE",
    "SWEEP_NAMES",
    "X_LABELS",
    "Y_LABELS",
    "Curves",
    "Sweep",
    "compute_curves",
    "kept_pixels",
    "recovery_image_size",
    "validate_options",
]

SweepName = Literal["signal_size", "recovery", "gradient"]
SWEEP_NAMES: tuple[SweepName, ...] = ("signal_size", "recovery", "gradient")
LOSS_NAMES: tuple[str, ...] = ("mse", "mae", "acb_mse")

#: The recovery sweep's signal is this share of its image (as in the seed's figure).
SIGNAL_SHARE = 6
#: Largest ``--pixels``: the recovery sweep holds about P^2 values.
MAX_PIXELS = 10_000
#: Range of ``--value``: the squared errors (up to value**2 times the image size) stay normal floats
#: that matplotlib can place on a log axis without overflow or underflow warnings.
MIN_VALUE = 1e-100
MAX_VALUE = 1e100
#: Largest weight: the project's loss takes weights in the float32 range.
MAX_WEIGHT = float(torch.finfo(torch.float32).max)
#: Rows of a sweep are measured in chunks of at most this many elements.
_CHUNK_ELEMENTS = 1 << 22

#: What each sweep's x is, with its unit.
X_LABELS: dict[str, str] = {
    "signal_size": "Signal pixels (% of the image)",
    "recovery": "Returned pixels (multiple of the true signal)",
    "gradient": "Signal pixels (% of the image)",
}
#: What each sweep's y is.
Y_LABELS: dict[str, str] = {
    "signal_size": "Loss",
    "recovery": "Loss",
    "gradient": "Sum over hit pixels of |d loss / d prediction|",
}


@dataclass(frozen=True)
class Sweep:
    """One sweep: x and the value of each loss at every x.

    ``marks`` names the telling points (start, middle, end, exact recovery) as
    ``(label, index)`` pairs, in order of x.
    """

    name: SweepName
    x: tuple[float, ...]
    mse: tuple[float, ...]
    mae: tuple[float, ...]
    acb_mse: tuple[float, ...]
    marks: tuple[tuple[str, int], ...]

    def series(self) -> dict[str, tuple[float, ...]]:
        """The three loss series by name (``mse``, ``mae``, ``acb_mse``)."""
        return {"mse": self.mse, "mae": self.mae, "acb_mse": self.acb_mse}

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "x": list(self.x),
            "mse": list(self.mse),
            "mae": list(self.mae),
            "acb_mse": list(self.acb_mse),
        }


@dataclass(frozen=True)
class Curves:
    """The three sweeps and the settings that made them."""

    signal_size: Sweep
    recovery: Sweep
    gradient: Sweep
    hit_weight: float
    nonhit_weight: float
    value: float
    recovery_share: float
    pixels: int
    recovery_pixels: int
    recovery_hits: int

    def sweeps(self) -> tuple[Sweep, Sweep, Sweep]:
        return (self.signal_size, self.recovery, self.gradient)

    def as_dict(self) -> dict[str, dict[str, list[float]]]:
        """``{"signal_size": {"x": [...], "mse": [...], "mae": [...], "acb_mse": [...]}, ...}``."""
        return {s.name: s.as_dict() for s in self.sweeps()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def to_csv(self) -> str:
        """One row per point: ``sweep,x,mse,mae,acb_mse``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["sweep", "x", *LOSS_NAMES])
        for sweep in self.sweeps():
            for i, x in enumerate(sweep.x):
                writer.writerow(
                    [sweep.name, repr(x), repr(sweep.mse[i]), repr(sweep.mae[i]), repr(sweep.acb_mse[i])]
                )
        return buffer.getvalue()


# --------------------------------------------------------------------------- options


def _real(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{option} must be a number, got {value!r}")
    fvalue = float(value)
    if not math.isfinite(fvalue):
        raise InputError(f"{option} must be finite, got {value!r}")
    return fvalue


def validate_options(
    *, hit_weight: float, nonhit_weight: float, value: float, recovery: float, pixels: int
) -> None:
    """Refuse bad sweep options with an :class:`InputError` naming the option and the value."""
    for option, weight in (("--hit-weight", hit_weight), ("--nonhit-weight", nonhit_weight)):
        if not 0 <= _real(option, weight) <= MAX_WEIGHT:
            raise InputError(
                f"{option} must lie in [0, {MAX_WEIGHT:.4g}] (the float32 range), got {weight!r}"
            )
    if not MIN_VALUE <= _real("--value", value) <= MAX_VALUE:
        raise InputError(
            f"--value (the ToF value of a hit pixel) must lie in [{MIN_VALUE:g}, {MAX_VALUE:g}], "
            f"got {value!r}"
        )
    if not 0.0 <= _real("--recovery", recovery) <= 1.0:
        raise InputError(f"--recovery must lie in [0, 1], got {recovery!r}")
    if isinstance(pixels, bool) or not isinstance(pixels, int):
        raise InputError(f"--pixels must be a whole number, got {pixels!r}")
    if not 2 <= pixels <= MAX_PIXELS:
        raise InputError(f"--pixels must be between 2 and {MAX_PIXELS}, got {pixels}")


def kept_pixels(recovery: float, hits: int) -> int:
    """Hit pixels the prediction keeps: ``recovery * hits`` rounded to nearest, halves up."""
    return math.floor(recovery * hits + 0.5)


def recovery_image_size(pixels: int) -> tuple[int, int]:
    """``(image pixels, signal pixels)`` of the recovery sweep: the signal exactly a sixth of the image."""
    hits = max(1, math.floor(pixels / SIGNAL_SHARE + 0.5))
    return SIGNAL_SHARE * hits, hits


# --------------------------------------------------------------------------- measuring


def _chunks(rows: int, pixels: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(pixels, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _first(counts: Tensor, pixels: int, value: float, dtype: torch.dtype) -> Tensor:
    """Rows of ``pixels`` columns whose first ``counts[i]`` entries hold ``value``, the rest 0."""
    columns = torch.arange(pixels, device=counts.device)
    lit = columns.unsqueeze(0) < counts.unsqueeze(1)
    return torch.where(lit, torch.tensor(value, dtype=dtype, device=counts.device), 0.0).to(dtype)


def _losses(prediction: Tensor, target: Tensor, hit_weight: float, nonhit_weight: float) -> dict[str, Tensor]:
    """Each row's MSE, MAE (torch's losses, one call per row via vmap) and ACB-MSE (balanced per row)."""
    return {
        "mse": vmap(F.mse_loss)(prediction, target),
        "mae": vmap(F.l1_loss)(prediction, target),
        "acb_mse": acb_mse_loss(
            prediction,
            target,
            hit_weight=hit_weight,
            nonhit_weight=nonhit_weight,
            per_sample=True,
            reduction="none",
        ),
    }


def _measure(
    target_counts: Tensor,
    kept_counts: Tensor,
    pixels: int,
    measure: Callable[[Tensor, Tensor], dict[str, Tensor]],
    value: float,
    dtype: torch.dtype,
) -> dict[str, list[float]]:
    """Build the target/prediction rows chunk by chunk and collect ``measure`` of each row."""
    out: dict[str, list[float]] = {name: [] for name in LOSS_NAMES}
    for rows in _chunks(int(target_counts.shape[0]), pixels):
        target = _first(target_counts[rows], pixels, value, dtype)
        prediction = _first(kept_counts[rows], pixels, value, dtype)
        for name, values in measure(prediction, target).items():
            out[name].extend(float(v) for v in values.detach().cpu().tolist())
    return out


def _marks(x: list[float], extra: tuple[tuple[str, int], ...] = ()) -> tuple[tuple[str, int], ...]:
    base = {0: "start", len(x) // 2: "middle", len(x) - 1: "end"}
    marks = dict(base)
    for label, index in extra:
        marks[index] = label
    return tuple((label, index) for index, label in sorted(marks.items()))


def compute_curves(
    *,
    hit_weight: float = 1.0,
    nonhit_weight: float = 1.0,
    value: float = 100.0,
    recovery: float = 0.5,
    pixels: int = 100,
    device: torch.device | str = "cpu",
) -> Curves:
    """Run the three sweeps (see the module docstring) and return their numbers.

    Args:
        hit_weight: A, the ACB-MSE weight of the hit class.
        nonhit_weight: B, the weight of the non-hit class.
        value: the ToF value of a hit pixel (the rest are 0).
        recovery: share of the hit pixels kept in the signal-size and gradient sweeps.
        pixels: image size of the signal-size and gradient sweeps; the recovery sweep uses
            the nearest multiple of 6.
        device: where the arithmetic runs (float64, or float32 where float64 is missing: MPS).

    Raises:
        InputError: an option is out of range.
    """
    validate_options(
        hit_weight=hit_weight, nonhit_weight=nonhit_weight, value=value, recovery=recovery, pixels=pixels
    )
    device = torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    value = float(value)

    def losses(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        return _losses(prediction, target, hit_weight, nonhit_weight)

    def gradient_mass(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        prediction = prediction.detach().requires_grad_(True)
        on_signal = hit_mask(target)
        out: dict[str, Tensor] = {}
        for name, per_row in _losses(prediction, target, hit_weight, nonhit_weight).items():
            # Rows are independent, so the gradient of the sum holds each row's own gradient.
            (grad,) = torch.autograd.grad(per_row.sum(), prediction)
            out[name] = torch.where(on_signal, grad.abs(), 0.0).sum(dim=1)
        return out

    # Signal-size and gradient sweeps: 2, 4, ... hit pixels, ending at the whole image.
    hit_counts = list(range(2, pixels + 1, 2))
    if hit_counts[-1] != pixels:
        hit_counts.append(pixels)
    kept = [kept_pixels(recovery, h) for h in hit_counts]
    hits_t = torch.tensor(hit_counts, device=device)
    kept_t = torch.tensor(kept, device=device)
    size_x = [100.0 * h / pixels for h in hit_counts]
    size = _measure(hits_t, kept_t, pixels, losses, value, dtype)
    grads = _measure(hits_t, kept_t, pixels, gradient_mass, value, dtype)

    # Recovery sweep: a signal of a sixth of the image; 0 ... all pixels returned.
    image, signal = recovery_image_size(pixels)
    returned = torch.arange(image + 1, device=device)
    rec = _measure(torch.full_like(returned, signal), returned, image, losses, value, dtype)
    rec_x = [k / signal for k in range(image + 1)]

    def sweep(
        name: SweepName, x: list[float], ys: dict[str, list[float]], marks: tuple[tuple[str, int], ...]
    ) -> Sweep:
        return Sweep(
            name=name,
            x=tuple(x),
            mse=tuple(ys["mse"]),
            mae=tuple(ys["mae"]),
            acb_mse=tuple(ys["acb_mse"]),
            marks=marks,
        )

    for name, ys in (("signal_size", size), ("recovery", rec), ("gradient", grads)):
        if not all(math.isfinite(v) for series in ys.values() for v in series):
            raise InputError(
                f"the {name} sweep overflows to a non-finite number with --value {value:g}, "
                f"--hit-weight {hit_weight:g}, --nonhit-weight {nonhit_weight:g}: choose smaller ones"
            )

    return Curves(
        signal_size=sweep("signal_size", size_x, size, _marks(size_x)),
        recovery=sweep("recovery", rec_x, rec, _marks(rec_x, (("exact recovery", signal),))),
        gradient=sweep("gradient", size_x, grads, _marks(size_x)),
        hit_weight=float(hit_weight),
        nonhit_weight=float(nonhit_weight),
        value=value,
        recovery_share=float(recovery),
        pixels=pixels,
        recovery_pixels=image,
        recovery_hits=signal,
    )
