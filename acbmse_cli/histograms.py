"""Histogram statistics of predictions: hit finding at every threshold of a grid, denoising, plots.

Every statistic here is a :class:`~acbmse_cli.stats.Summable` of int64 bin counts, so chunks of
a file, files of a folder and ranks of a distributed job merge by addition.  The bin edges are
fixed before any data is read (a threshold grid, or the bounds of a figure), so counts are exact:

- :class:`DetectionStats`: the true hits, the non-hits, and the noise hits (elements that are hits
  of the network's input but not of the target), each counted by how many grid thresholds lie
  below their prediction.  The number of elements with "prediction > t" at every grid threshold
  ``t`` follows by a suffix sum: the counts at ``t`` are exactly those of a detector with the
  single threshold ``t``.
- :class:`ErrorStats`: the error ``prediction - target`` of each class on a symmetric
  logarithmic scale, and the prediction against the true value on the true hits (2-D).

:func:`detection_curve` turns detection counts into recall, precision, F1, average precision
and the best-F1 operating point; it is the one place those are computed.

This module depends on torch only (and on the compiled CPU pass of :mod:`acbmse_cli._native_pass`
where it was built).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from acbmse_cli import _native_pass
from acbmse_cli.stats import SUM, Summable, hit_mask, threshold_in

__all__ = [
    "DEFAULT_GRID_POINTS",
    "ERROR_DECADES",
    "DetectionCurve",
    "DetectionStats",
    "ErrorStats",
    "ThresholdGrid",
    "calibration_bounds",
    "count_below",
    "default_grid",
    "detection_adder",
    "detection_curve",
    "detection_stats",
    "error_bin_edges",
    "error_stats",
]

DEFAULT_GRID_POINTS = 201
"""Thresholds of the default grid: from the hit threshold to the largest hit value of the target."""


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class ThresholdGrid:
    """Detection thresholds in increasing order; ``linear`` when they are evenly spaced.

    Build one with :meth:`parse` (``"START:STOP:N"`` or ``"t1,t2,..."``) or :meth:`linspace`.
    """

    values: tuple[float, ...]
    linear: bool = False

    @classmethod
    def linspace(cls, start: float, stop: float, n: int) -> ThresholdGrid:
        """``n`` evenly spaced thresholds from ``start`` to ``stop``, both included."""
        if n < 2:
            raise ValueError(f"--thresholds needs N >= 2 thresholds, got {n}")
        if not (math.isfinite(start) and math.isfinite(stop)) or not start < stop:
            raise ValueError(f"--thresholds START:STOP needs finite START < STOP, got {start!r}:{stop!r}")
        step = (stop - start) / (n - 1)
        values = (*(start + k * step for k in range(n - 1)), stop)
        return cls(values, linear=True)

    @classmethod
    def parse(cls, text: str) -> ThresholdGrid:
        """``"START:STOP:N"`` (N evenly spaced, both ends included) or ``"t1,t2,..."`` (increasing).

        Raises:
            ValueError: naming ``--thresholds`` and what is wrong.
        """
        text = text.strip()
        if not text:
            raise ValueError("--thresholds must be START:STOP:N or t1,t2,...; got an empty value")
        if ":" in text:
            return cls._parse_range(text)
        try:
            values = tuple(float(t) for t in text.split(","))
        except ValueError:
            raise ValueError(f"--thresholds must be START:STOP:N or t1,t2,...; got {text!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"--thresholds must be finite numbers, got {text!r}")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"--thresholds must be strictly increasing, got {text!r}")
        return cls(values)

    @classmethod
    def _parse_range(cls, text: str) -> ThresholdGrid:
        parts = text.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            start, stop, n = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(
                f"--thresholds START:STOP:N needs two numbers and a count, got {text!r}"
            ) from None
        return cls.linspace(start, stop, n)

    def __len__(self) -> int:
        return len(self.values)

    def describe(self) -> str:
        """The grid as ``--thresholds`` would take it back."""
        if self.linear:
            return f"{self.values[0]!r}:{self.values[-1]!r}:{len(self.values)}"
        return ",".join(repr(v) for v in self.values)


def default_grid(hit_threshold: float, largest_hit: float | None) -> ThresholdGrid:
    """From the hit threshold to the target's largest hit value, the span rounded up to a round
    number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) so that the thresholds read
    well; one unit above the hit threshold when the target has no hit above it."""
    span = largest_hit - hit_threshold if largest_hit is not None else 0.0
    if not (span > 0 and math.isfinite(span)):
        span = 1.0
    return ThresholdGrid.linspace(hit_threshold, hit_threshold + _round_up(span), DEFAULT_GRID_POINTS)


def _round_up(value: float) -> float:
    """The smallest round number at least ``value`` (> 0)."""
    exponent = math.floor(math.log10(value))
    steps = ("1", "1.2", "1.5", "2", "2.5", "3", "4", "5", "6", "8")
    rounds = [float(f"{step}e{exponent}") for step in steps]
    return next((r for r in rounds if r >= value), float(f"1e{exponent + 1}"))


def count_below(values: Tensor, grid: ThresholdGrid) -> Tensor:
    """For every value, how many thresholds ``t`` of the grid have ``value > t``: an integer
    tensor (int32 or int64), exact.

    NaN is above no threshold.  An evenly spaced grid is binned by arithmetic and corrected by
    one comparison; any other grid, or one too fine for the values' precision, by binary search.
    Half-precision values are binned in float32 (which holds them exactly), integers in float64.
    """
    values = _binned(values)
    edges = _edges_in(values.dtype, grid, values.device)
    if _by_arithmetic(values.dtype, grid):
        return _count_below_linear(values, edges, grid)
    below = torch.searchsorted(edges, values)
    return torch.where(torch.isnan(values), 0, below) if values.numel() else below


def _binned(values: Tensor) -> Tensor:
    """The values in the dtype they are binned in: half precision in float32 (which holds it
    exactly), integers in float64, float32 and float64 as they are."""
    if not values.is_floating_point():
        return values.to(torch.float64)
    if torch.finfo(values.dtype).bits < 32:
        return values.to(torch.float32)
    return values


def _linear_guess(grid: ThresholdGrid, margin: float) -> tuple[float, float]:
    """``(1 / step, offset)`` of the guess ``floor(v / step + offset)`` of an evenly spaced grid,
    taken ``margin`` bins below the count (``-margin``: above it)."""
    n = len(grid)
    start = grid.values[0]
    inverse_step = (n - 1) / (grid.values[-1] - start)
    return inverse_step, 1.0 - margin - start * inverse_step


@functools.lru_cache(maxsize=32)
def _two_guesses(dtype: torch.dtype, grid: ThresholdGrid) -> tuple[float, float, float]:
    """``(1 / step, low, high)``: the offsets of the compiled binning's two guesses, the narrowest
    margin below and above the count that still exceeds their rounding error in ``dtype``.

    The guess ``v * (1 / step) + offset`` rounds three times and each threshold once, all
    relative to the largest magnitude ``top`` or to the guess itself (at most ``G + 2``): in
    bins, at most ``eps * (2.5 * top / step + G / 2 + 5)``; the margin takes four times the
    sum of the terms, and never more than the margin of the one-sided guess (which
    :func:`_arithmetic_is_exact` keeps above the error)."""
    top = max(abs(grid.values[0]), abs(grid.values[-1]))
    step = (grid.values[-1] - grid.values[0]) / (len(grid) - 1)
    margin = min(_GUESS_MARGIN, 4 * torch.finfo(dtype).eps * (top / step + len(grid) + 2))
    inverse_step, low = _linear_guess(grid, margin)
    return inverse_step, low, _linear_guess(grid, -margin)[1]


@functools.lru_cache(maxsize=32)
def _edges_in(dtype: torch.dtype, grid: ThresholdGrid, device: torch.device) -> Tensor:
    """The thresholds rounded down into ``dtype``, then ``+inf``: for a value ``v`` of ``dtype``,
    ``v > t`` exactly when ``v > edge``."""
    edges = [threshold_in(dtype, t) for t in grid.values]
    return torch.tensor([*edges, math.inf], dtype=dtype, device=device)[: len(edges) + (grid.linear)]


#: How far below a bin boundary the arithmetic guess is taken, in bins: more than its rounding error.
_GUESS_MARGIN = 0.125


def _by_arithmetic(dtype: torch.dtype, grid: ThresholdGrid) -> bool:
    """Whether values of ``dtype`` are binned on ``grid`` by the arithmetic guess (else by search)."""
    return grid.linear and _arithmetic_is_exact(dtype, grid)


def _arithmetic_is_exact(dtype: torch.dtype, grid: ThresholdGrid) -> bool:
    """Whether the grid step is wide against the dtype's spacing: the rounding error of the guess
    ``(v - start) / step`` (a few ulp of the largest magnitude, in bins) stays under the margin."""
    top = max(abs(grid.values[0]), abs(grid.values[-1]))
    step = (grid.values[-1] - grid.values[0]) / (len(grid) - 1)
    return step > 64 * top * torch.finfo(dtype).eps


def _count_below_linear(values: Tensor, edges: Tensor, grid: ThresholdGrid) -> Tensor:
    """``floor((v - start) / step + 1 - margin)`` is the count or one less (never more): one
    comparison with the next threshold (``edges[count]``, ``+inf`` past the last) settles it."""
    n = len(grid)
    inverse_step, offset = _linear_guess(grid, _GUESS_MARGIN)
    guess = torch.mul(values, inverse_step).add_(offset).floor_().nan_to_num_(0.0).clamp_(0, n)
    below = guess.to(torch.int32)  # int32 halves the bytes of every pass that follows
    below += values > edges.index_select(0, below)
    return below


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetectionStats(Summable):
    """Bin counts ``(G + 1,)`` over a grid of ``G`` thresholds: bin ``j`` holds the elements whose
    prediction is above exactly ``j`` thresholds.  ``noise`` (the hits of the network's input
    that are not hits of the target) is filled when the input is known."""

    hits: Tensor = field(metadata=SUM)
    nonhits: Tensor = field(metadata=SUM)
    noise: Tensor | None = field(default=None, metadata=SUM)

    if TYPE_CHECKING:

        def __add__(self, other: DetectionStats) -> DetectionStats: ...
        def to(self, device: torch.device | str) -> DetectionStats: ...
        def all_reduce(self) -> DetectionStats: ...

    @classmethod
    def zeros(cls, grid: ThresholdGrid, *, noise: bool, device: Any = "cpu") -> DetectionStats:
        """Counts of no data."""

        def zero() -> Tensor:
            return torch.zeros(len(grid) + 1, dtype=torch.int64, device=device)

        return cls(zero(), zero(), zero() if noise else None)


def detection_stats(
    input: Tensor,
    target: Tensor,
    grid: ThresholdGrid,
    *,
    hit_threshold: float = 0.0,
    noisy: Tensor | None = None,
) -> DetectionStats:
    """The bin counts of ``input`` (the predictions) for the true hits (``|target| >
    hit_threshold``), the non-hits and, given ``noisy`` (the network's input), the noise hits
    (``|noisy| > hit_threshold`` where the target is a non-hit)."""
    if _native_pass.applies(input, target, noisy):  # every bin in one pass over the elements
        stats = DetectionStats.zeros(grid, noise=noisy is not None)
        detection_adder(stats, input, target, grid, hit_threshold=hit_threshold, noisy=noisy)()
        return stats
    x, truth = input.reshape(-1), hit_mask(target.reshape(-1), hit_threshold)
    bins = len(grid) + 1
    key = count_below(x, grid).add_(truth, alpha=bins)  # the hits' bins after the non-hits'
    by_class = torch.bincount(key, minlength=2 * bins).reshape(2, bins)
    noise = None
    if noisy is not None:  # noise hits are non-hits: their key is their bin; the others go to a spare bin
        is_noise = hit_mask(noisy.reshape(-1), hit_threshold) & ~truth
        noise = torch.bincount(torch.where(is_noise, key, bins), minlength=bins + 1)[:bins]
    return DetectionStats(by_class[1], by_class[0], noise)


def detection_adder(
    into: DetectionStats,
    input: Tensor,
    target: Tensor,
    grid: ThresholdGrid,
    *,
    hit_threshold: float = 0.0,
    noisy: Tensor | None = None,
) -> Callable[[], None]:
    """:func:`detection_stats` of CPU tensors added into ``into`` by the compiled pass when the
    returned function is called (without the GIL: made for a second thread; see
    :func:`acbmse_cli._native_pass.bins_adder`).  Only where ``_native_pass.applies``."""
    values = _binned(input.detach())
    linear = _by_arithmetic(values.dtype, grid)
    edges = _edges_in(values.dtype, grid, values.device)[: len(grid) + linear]
    return _native_pass.bins_adder(
        values, target.detach(), edges, linear=_two_guesses(values.dtype, grid) if linear else None,
        hit_threshold=hit_threshold, noisy=None if noisy is None else noisy.detach(), mask=None,
        into=(into.hits, into.nonhits, into.noise),
    )  # fmt: skip


@dataclass(frozen=True)
class DetectionCurve:
    """Hit finding at every threshold of a grid, from :class:`DetectionStats`.

    ``precision`` is ``None`` where nothing is detected; recall and F1 where they have no cases.
    ``noise_removed`` (the fraction of noise hits whose prediction is at or below the threshold)
    is ``None`` without the network's input, or where there is no noise hit.
    """

    threshold: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    recall: tuple[float | None, ...]
    precision: tuple[float | None, ...]
    f1: tuple[float | None, ...]
    signal_hits: int
    noise_hits: int | None
    noise_removed: tuple[float | None, ...] | None

    @property
    def average_precision(self) -> float | None:
        """``sum_k (R_k - R_{k-1}) P_k`` over the thresholds in decreasing order, ``R_0 = 0``."""
        if self.signal_hits == 0:
            return None
        total, previous = 0.0, 0.0
        for r, p in zip(reversed(self.recall), reversed(self.precision), strict=True):
            assert r is not None
            if r > previous:
                assert p is not None  # a recall above 0 means something is detected
                total += (r - previous) * p
            previous = r
        return total

    def best_f1(self) -> dict[str, float | None] | None:
        """The threshold of highest F1 (the lowest one on ties), with its F1, recall and precision."""
        scored = [(f, k) for k, f in enumerate(self.f1) if f is not None]
        if not scored:
            return None
        best = max(f for f, _ in scored)
        k = min(k for f, k in scored if f == best)
        return {
            "threshold": self.threshold[k],
            "f1": self.f1[k],
            "recall": self.recall[k],
            "precision": self.precision[k],
        }

    def recall_at_precision(self, precision: float) -> float | None:
        """The highest recall of a grid threshold whose precision is at least ``precision``."""
        pairs = zip(self.recall, self.precision, strict=True)
        return max((r for r, p in pairs if r is not None and p is not None and p >= precision), default=None)


def detection_curve(stats: DetectionStats, grid: ThresholdGrid) -> DetectionCurve:
    """The counts and ratios at every grid threshold ``t``: "prediction > t" against the true hits."""
    detected_hits = _above_each(stats.hits)
    detected_non = _above_each(stats.nonhits)
    signal = int(stats.hits.sum())
    tp, fp = detected_hits, detected_non
    fn = [signal - t for t in tp]
    noise_hits = None if stats.noise is None else int(stats.noise.sum())
    removed = None
    if stats.noise is not None and noise_hits is not None:
        kept = _above_each(stats.noise)
        removed = tuple((noise_hits - k) / noise_hits if noise_hits else None for k in kept)
    return DetectionCurve(
        threshold=grid.values,
        tp=tuple(tp),
        fp=tuple(fp),
        fn=tuple(fn),
        recall=tuple(_ratio(t, t + f) for t, f in zip(tp, fn, strict=True)),
        precision=tuple(_ratio(t, t + f) for t, f in zip(tp, fp, strict=True)),
        f1=tuple(_ratio(2 * t, 2 * t + p + n) for t, p, n in zip(tp, fp, fn, strict=True)),
        signal_hits=signal,
        noise_hits=noise_hits,
        noise_removed=removed,
    )


def _above_each(bins: Tensor) -> list[int]:
    """From bin counts ``(G + 1,)``: how many elements are above threshold ``k``, for each ``k``
    (the elements in bins ``k + 1`` and up)."""
    suffix = torch.flip(torch.cumsum(torch.flip(bins.cpu(), [0]), 0), [0])
    return [int(v) for v in suffix[1:]]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


# --------------------------------------------------------------------------- errors, for figures

ERROR_DECADES = (-3, 9)
"""The symmetric log scale of :class:`ErrorStats`: ``|error|`` from 1e-3 to 1e9 in bins of a
twentieth of a decade, one bin each side for anything larger, one in the middle for smaller."""
_PER_DECADE = 20
CALIBRATION_BINS = 100


def error_bin_edges() -> list[float]:
    """The edges of :class:`ErrorStats`' error bins, in increasing order (``-inf`` and ``inf`` at
    the ends): the same for every file, so histograms of different runs compare bin by bin."""
    low, high = ERROR_DECADES
    steps = (high - low) * _PER_DECADE
    magnitudes = [10.0 ** (low + k / _PER_DECADE) for k in range(steps + 1)]
    return [-math.inf, *(-m for m in reversed(magnitudes)), *magnitudes, math.inf]


@dataclass(frozen=True)
class ErrorStats(Summable):
    """Counts for figures: ``errors`` ``(K, B)`` the error of each class in the bins of
    :func:`error_bin_edges`; ``calibration`` ``(C, C)`` the true hits by (true value, prediction),
    over ``bounds`` split in :data:`CALIBRATION_BINS` (values outside go to the edge bins)."""

    errors: Tensor = field(metadata=SUM)
    calibration: Tensor = field(metadata=SUM)

    if TYPE_CHECKING:

        def __add__(self, other: ErrorStats) -> ErrorStats: ...
        def to(self, device: torch.device | str) -> ErrorStats: ...
        def all_reduce(self) -> ErrorStats: ...

    @classmethod
    def zeros(cls, num_classes: int, device: Any = "cpu") -> ErrorStats:
        bins = len(error_bin_edges()) - 1
        return cls(
            torch.zeros(num_classes, bins, dtype=torch.int64, device=device),
            torch.zeros(CALIBRATION_BINS, CALIBRATION_BINS, dtype=torch.int64, device=device),
        )


def error_stats(
    input: Tensor,
    target: Tensor,
    classes: Tensor,
    num_classes: int,
    bounds: tuple[float, float],
    *,
    hit: Tensor | None,
) -> ErrorStats:
    """:class:`ErrorStats` of one chunk; ``classes`` the int64 class of each element, ``hit``
    the true hits (``None``: no calibration counts, as with labelled classes)."""
    x, y = input.reshape(-1).to(torch.float64), target.reshape(-1).to(torch.float64)
    error = x - y
    low, high = ERROR_DECADES
    side = (high - low) * _PER_DECADE + 1  # bins on each side of the middle one
    level = torch.log10(error.abs()).sub_(low).mul_(_PER_DECADE).floor_().clamp_(-1, side - 1).add_(1)
    level = torch.nan_to_num(level, nan=0.0).to(torch.int64)  # 0: |error| below 1e-3 (or zero)
    middle = side
    index = torch.where(error < 0, middle - level, middle + level)
    bins = 2 * side + 1
    errors = torch.bincount(classes.reshape(-1) * bins + index, minlength=num_classes * bins)
    calibration = torch.zeros(CALIBRATION_BINS * CALIBRATION_BINS, dtype=torch.int64, device=x.device)
    if hit is not None:
        h = hit.reshape(-1)
        cells = _calibration_cell(y[h], bounds) * CALIBRATION_BINS + _calibration_cell(x[h], bounds)
        calibration = torch.bincount(cells, minlength=CALIBRATION_BINS**2)
    return ErrorStats(
        errors.reshape(num_classes, bins), calibration.reshape(CALIBRATION_BINS, CALIBRATION_BINS)
    )


def _calibration_cell(values: Tensor, bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    scaled = (values - low) * (CALIBRATION_BINS / (high - low))
    return torch.nan_to_num(scaled, nan=0.0).floor_().clamp_(0, CALIBRATION_BINS - 1).to(torch.int64)


def calibration_bounds(
    hit_threshold: float, smallest_hit: float | None, largest_hit: float | None
) -> tuple[float, float]:
    """The value range of the calibration figure: from the hit threshold (or the smallest hit, if
    lower) to the largest hit, so that a hit predicted as a non-hit lands in view, not at the edge;
    one unit above the hit threshold without hits."""
    if smallest_hit is None or largest_hit is None:
        return (hit_threshold, hit_threshold + 1.0)
    low = min(hit_threshold, smallest_hit)
    return (low, largest_hit) if largest_hit > low else (low, low + 1.0)
