"""Option checks: each takes the option's name and value and returns the checked value.

Every check raises :class:`ValueError` with a message that names the option and the value
it was given.  The library's loss raises those as they are; the options objects of the
commands (``EvalOptions``, ``CurvesOptions``, ``DemoOptions``, ``SyntheticConfig``) are
built inside :func:`as_input_error`, which turns them into the command line's one-line
:class:`~acbmse_cli.errors.InputError`.

No torch here: the command line imports this module before it knows whether a command
needs torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from acbmse_cli.errors import InputError

__all__ = [
    "FLOAT32_MAX",
    "as_input_error",
    "check_choice",
    "check_integer",
    "check_list",
    "check_real",
    "check_weight",
]

_T = TypeVar("_T")

#: The largest float32: weights must stay in range so that the loss never overflows its dtype.
FLOAT32_MAX = 3.4028234663852886e38


def _is_finite(value: float) -> bool:
    # comparisons, which torch.compile traces on symbolic floats (math.isfinite it cannot)
    return value == value and abs(value) != math.inf


def _as_float(option: str, value: object, what: str = "a real number") -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{option} must be {what}, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{option} must be {what}, got {value!r}") from None


def check_real(
    option: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """A finite real number, within ``[minimum, maximum]`` and above ``above`` where given."""
    fvalue = _as_float(option, value)
    if not _is_finite(fvalue):
        rule = "finite and non-negative" if minimum == 0 and maximum is None else "finite"
        raise ValueError(f"{option} must be {rule}, got {value!r}")
    if above is not None and not fvalue > above:
        raise ValueError(f"{option} must be greater than {above:g}, got {value!r}")
    if minimum is not None and maximum is not None and not minimum <= fvalue <= maximum:
        raise ValueError(f"{option} must lie in [{minimum:g}, {maximum:g}], got {value!r}")
    if minimum is not None and fvalue < minimum:
        rule = "non-negative" if minimum == 0 else f"at least {minimum:g}"
        raise ValueError(f"{option} must be finite and {rule}, got {value!r}")
    if maximum is not None and fvalue > maximum:
        raise ValueError(f"{option} must be at most {maximum:g}, got {value!r}")
    return fvalue


def check_weight(option: str, value: object) -> float:
    """A class weight: a finite, non-negative real number within the float32 range."""
    fvalue = _as_float(option, value)
    if not _is_finite(fvalue) or fvalue < 0:
        raise ValueError(f"{option} must be finite and non-negative, got {value!r}")
    if fvalue > FLOAT32_MAX:
        raise ValueError(f"{option} must be at most {FLOAT32_MAX:.4g} (the float32 range), got {value!r}")
    return fvalue


def check_integer(option: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]`` (a bool is not one)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{option} must be an integer of at least {minimum}, got {value!r}")
    ivalue = int(value.__index__())
    if ivalue < minimum:
        raise ValueError(f"{option} must be an integer of at least {minimum}, got {value!r}")
    if maximum is not None and ivalue > maximum:
        raise ValueError(f"{option} must be at most {maximum}, got {value!r}")
    return ivalue


def check_choice(option: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_list(
    option: str, value: object, check: Callable[[str, object], _T], *, integers: bool = False
) -> tuple[_T, ...]:
    """A comma-separated list (``"1,3,10"``), or one value, each item through ``check``; no item twice.

    Items of a text are read as integers where ``integers`` is set, else as real numbers.
    """
    what = "whole numbers" if integers else "numbers"
    items: list[object]
    if isinstance(value, str):
        items = list(value.split(","))
    elif isinstance(value, tuple):  # already a list's items (click 8.0 parses a default once more)
        items = list(value)
    else:
        items = [value]
    checked: list[_T] = []
    for item in items:
        if isinstance(item, str):
            try:
                item = int(item) if integers else float(item)
            except ValueError:
                raise ValueError(
                    f"{option} must be a comma-separated list of {what}, got {value!r}"
                ) from None
        checked.append(check(option, item))
    for i, item in enumerate(checked):
        if item in checked[:i]:
            raise ValueError(f"{option} names {item!r} twice, in {value!r}")
    return tuple(checked)


@contextlib.contextmanager
def as_input_error() -> Iterator[None]:
    """Re-raise the checks' :class:`ValueError` as the command line's :class:`InputError`."""
    try:
        yield
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from None
