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

The settings of a run are one :class:`CurvesOptions`, checked once on creation;
:func:`run_curves` measures them.  This module depends on torch and the
project's loss only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from acbmse_cli._checks import FLOAT32_MAX, as_input_error, check_integer, check_real, check_weight
from acbmse_cli._loss_names import LOSS_NAMES
from acbmse_cli._provenance import run_record
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
    "CurvesOptions",
    "Sweep",
    "compute_curves",
    "kept_pixels",
    "recovery_image_size",
    "run_curves",
]

SweepName = Literal["signal_size", "recovery", "gradient"]
SWEEP_NAMES: tuple[SweepName, ...] = ("signal_size", "recovery", "gradient")

#: The recovery sweep's signal is one in this many pixels of its image.
SIGNAL_SHARE = 6
#: Largest ``--pixels``: the recovery sweep holds about P^2 values.
MAX_PIXELS = 10_000
#: Range of ``--value``: the squared errors (up to value**2 times the image size) stay normal floats
#: that matplotlib can place on a log axis without overflow or underflow warnings.
MIN_VALUE = 1e-100
MAX_VALUE = 1e100
#: Largest weight: the project's loss takes weights in the float32 range.
MAX_WEIGHT = FLOAT32_MAX
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
    device: str = "cpu"

    def sweeps(self) -> tuple[Sweep, Sweep, Sweep]:
        return (self.signal_size, self.recovery, self.gradient)

    def as_dict(self) -> dict[str, dict[str, list[float]]]:
        """``{"signal_size": {"x": [...], "mse": [...], "mae": [...], "acb_mse": [...]}, ...}``."""
        return {s.name: s.as_dict() for s in self.sweeps()}

    def run_record(self) -> dict[str, Any]:
        """The version and the settings that made these sweeps."""
        return run_record(
            {
                "hit_weight": self.hit_weight,
                "nonhit_weight": self.nonhit_weight,
                "value": self.value,
                "recovery": self.recovery_share,
                "pixels": self.pixels,
                "recovery_pixels": self.recovery_pixels,
                "device": self.device,
            }
        )

    def to_json(self) -> str:
        """The sweeps (:meth:`as_dict`) and ``"run"``, how they were made."""
        return json.dumps({**self.as_dict(), "run": self.run_record()})

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


@dataclass(frozen=True)
class CurvesOptions:
    """The settings of the three sweeps; checked on creation (:class:`InputError` names the option).

    Args:
        hit_weight: A, the ACB-MSE weight of the hit class.
        nonhit_weight: B, the weight of the non-hit class.
        value: the ToF value of a hit pixel (the rest are 0), in [MIN_VALUE, MAX_VALUE].
        recovery: share of the hit pixels kept in the signal-size and gradient sweeps, in [0, 1].
        pixels: image size of the signal-size and gradient sweeps, 2 to MAX_PIXELS; the recovery
            sweep uses the nearest multiple of 6.
    """

    hit_weight: float = 1.0
    nonhit_weight: float = 1.0
    value: float = 100.0
    recovery: float = 0.5
    pixels: int = 100

    def __post_init__(self) -> None:
        with as_input_error():
            checked = {
                "hit_weight": check_weight("--hit-weight", self.hit_weight),
                "nonhit_weight": check_weight("--nonhit-weight", self.nonhit_weight),
                "value": check_real("--value", self.value, minimum=MIN_VALUE, maximum=MAX_VALUE),
                "recovery": check_real("--recovery", self.recovery, minimum=0.0, maximum=1.0),
                "pixels": check_integer("--pixels", self.pixels, minimum=2, maximum=MAX_PIXELS),
            }
        for name, checked_value in checked.items():
            object.__setattr__(self, name, checked_value)


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


_Measure = Callable[[Tensor, Tensor, CurvesOptions], dict[str, Tensor]]


def _losses(prediction: Tensor, target: Tensor, options: CurvesOptions) -> dict[str, Tensor]:
    """Each row's MSE, MAE (torch's losses, one call per row via vmap) and ACB-MSE (balanced per row)."""
    return {
        "mse": vmap(F.mse_loss)(prediction, target),
        "mae": vmap(F.l1_loss)(prediction, target),
        "acb_mse": acb_mse_loss(
            prediction,
            target,
            hit_weight=options.hit_weight,
            nonhit_weight=options.nonhit_weight,
            per_sample=True,
            reduction="none",
        ),
    }


def _gradient_mass(prediction: Tensor, target: Tensor, options: CurvesOptions) -> dict[str, Tensor]:
    """Each row's sum over its hit pixels of ``|d loss / d prediction|``, per loss."""
    prediction = prediction.detach().requires_grad_()
    on_signal = hit_mask(target)
    out: dict[str, Tensor] = {}
    for name, per_row in _losses(prediction, target, options).items():
        # Rows are independent, so the gradient of the sum holds each row's own gradient.
        (grad,) = torch.autograd.grad(per_row.sum(), prediction)
        out[name] = torch.where(on_signal, grad.abs(), 0.0).sum(dim=1)
    return out


def _measure(
    target_counts: Tensor,
    kept_counts: Tensor,
    pixels: int,
    measure: _Measure,
    options: CurvesOptions,
    dtype: torch.dtype,
) -> dict[str, list[float]]:
    """Build the target/prediction rows chunk by chunk and collect ``measure`` of each row."""
    out: dict[str, list[float]] = {name: [] for name in LOSS_NAMES}
    for rows in _chunks(int(target_counts.shape[0]), pixels):
        target = _first(target_counts[rows], pixels, options.value, dtype)
        prediction = _first(kept_counts[rows], pixels, options.value, dtype)
        for name, values in measure(prediction, target, options).items():
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
    """:func:`run_curves` of the :class:`CurvesOptions` with these settings, on ``device``.

    Raises:
        InputError: an option is out of range, or a sweep overflows.
    """
    options = CurvesOptions(
        hit_weight=hit_weight, nonhit_weight=nonhit_weight, value=value, recovery=recovery, pixels=pixels
    )
    return run_curves(options, device=device)


def run_curves(options: CurvesOptions, *, device: torch.device | str = "cpu") -> Curves:
    """Run the three sweeps (see the module docstring) and return their numbers.

    Args:
        options: the sweeps' settings.
        device: where the arithmetic runs (float64, or float32 where float64 is missing: MPS).

    Raises:
        InputError: a sweep overflows to a non-finite number (too large a value or weight).
    """
    device = torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    size_x, size, grads = _signal_size_sweeps(options, device, dtype)
    rec_x, rec = _recovery_sweep(options, device, dtype)
    for name, ys in (("signal_size", size), ("recovery", rec), ("gradient", grads)):
        _check_finite(name, ys, options)
    image, signal = recovery_image_size(options.pixels)
    return Curves(
        signal_size=_sweep("signal_size", size_x, size, _marks(size_x)),
        recovery=_sweep("recovery", rec_x, rec, _marks(rec_x, (("exact recovery", signal),))),
        gradient=_sweep("gradient", size_x, grads, _marks(size_x)),
        hit_weight=options.hit_weight,
        nonhit_weight=options.nonhit_weight,
        value=options.value,
        recovery_share=options.recovery,
        pixels=options.pixels,
        recovery_pixels=image,
        recovery_hits=signal,
        device=str(device),
    )


def _signal_size_sweeps(
    options: CurvesOptions, device: torch.device, dtype: torch.dtype
) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """x, losses and gradient masses of the signal-size and gradient sweeps.

    The signal has 2, 4, ... hit pixels, ending at the whole image.
    """
    pixels = options.pixels
    hit_counts = list(range(2, pixels + 1, 2))
    if hit_counts[-1] != pixels:
        hit_counts.append(pixels)
    hits = torch.tensor(hit_counts, device=device)
    kept = torch.tensor([kept_pixels(options.recovery, h) for h in hit_counts], device=device)
    x = [100.0 * h / pixels for h in hit_counts]
    losses = _measure(hits, kept, pixels, _losses, options, dtype)
    grads = _measure(hits, kept, pixels, _gradient_mass, options, dtype)
    return x, losses, grads


def _recovery_sweep(
    options: CurvesOptions, device: torch.device, dtype: torch.dtype
) -> tuple[list[float], dict[str, list[float]]]:
    """x and losses of the recovery sweep: a signal of a sixth of the image, 0 ... all pixels returned."""
    image, signal = recovery_image_size(options.pixels)
    returned = torch.arange(image + 1, device=device)
    losses = _measure(torch.full_like(returned, signal), returned, image, _losses, options, dtype)
    return [k / signal for k in range(image + 1)], losses


def _sweep(
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


def _check_finite(name: str, ys: dict[str, list[float]], options: CurvesOptions) -> None:
    if not all(math.isfinite(v) for series in ys.values() for v in series):
        raise InputError(
            f"the {name} sweep overflows to a non-finite number with --value {options.value:g}, "
            f"--hit-weight {options.hit_weight:g}, --nonhit-weight {options.nonhit_weight:g}: "
            "choose smaller ones"
        )
