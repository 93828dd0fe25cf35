"""Synthetic sparse detector frames for the training demo: a clean signal pattern plus noise hits.

Each frame is ``height x width`` pixels (the detector's 88 x 128 = 11,264 by default).  A pixel holds 0
(no hit) or a time-of-flight-like value in ``[tof_min, tof_max]``.  The **target** is one clean signal
pattern, about 200 hits at the default size:

- a *cross* (two perpendicular arms through a centre, axis-aligned), or
- a *line* at a random angle,

two pixels thick, scaled by a random factor and shifted to a random place in the frame.  Along each arm or
line the value drifts linearly from one end to the other (a base value, a random gradient and a little
jitter), like arrival times across a detector plane.

``signal_hits`` sets the typical number of signal hits per frame instead (the signal's density): the
patterns keep their shapes, and their thickness and length change together, ``thickness x length`` in
proportion to ``signal_hits``.  The thickness is ``2 x signal_hits / natural`` rounded to a whole number of
pixels (at least 1), ``natural`` being the patterns' size of the default (about 200 hits at 88 x 128), and
the length takes the rest of the factor: 50 hits are one-pixel-thick patterns of half the length, 800 hits
eight-pixel-thick ones of the natural length.

The **input** is the target plus noise hits: a Poisson number of pixels (about 30 at the default size,
proportional to the frame's area) chosen among the pixels the signal leaves empty, each with a value drawn
uniformly from ``[tof_min, tof_max]``.  So the input's hits are the signal's hits and the noise hits, the
two sets are disjoint, and wherever the target has a hit the input holds the same value.

Everything comes from a :class:`numpy.random.Generator` passed in (or made from a seed); no global random
state is read or changed, so the same seed gives the same frames on every machine.

Example::

    >>> from acbmse_cli.synthetic import generate_pairs
    >>> pairs = generate_pairs(4, seed=0)
    >>> pairs.input.shape, pairs.target.dtype
    ((4, 1, 88, 128), dtype('float32'))
    >>> bool(((pairs.target != 0) <= (pairs.input != 0)).all())   # signal hits are input hits
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from acbmse_cli._checks import as_input_error, check_integer, check_real

__all__ = ["CROSS", "LINE", "SyntheticConfig", "SyntheticPairs", "generate_pairs"]

CROSS = 0
LINE = 1

# Pattern sizes at scale 1, as fractions of the frame: chosen so that a pattern has about 200 hits on an
# 88 x 128 frame (a two-pixel-thick cross with arms of 0.45 W and 0.5 H; a line of 0.78 W).
_CROSS_ARM_W = 0.45
_CROSS_ARM_H = 0.50
_LINE_LENGTH_W = 0.78
_REFERENCE_AREA = 88 * 128
#: The default thickness of a pattern, in pixels.
_THICKNESS = 2
#: The settings of :class:`SyntheticConfig` that are finite, non-negative real numbers.
_REAL_SETTINGS = ("tof_min", "tof_max", "scale_min", "scale_max", "noise_hits", "tof_gradient", "tof_jitter")


@dataclass(frozen=True)
class SyntheticConfig:
    """How the synthetic frames are made.

    Args:
        height: frame height in pixels (at least 8).
        width: frame width in pixels (at least 8).
        tof_min: the smallest hit value; every hit, signal or noise, is at least this.
        tof_max: the largest hit value.
        scale_min: smallest random scale of a pattern (1 = about 200 hits at 88 x 128).
        scale_max: largest random scale of a pattern.
        noise_hits: mean number of noise hits per frame at 88 x 128; scaled by the frame's area.
        tof_gradient: the largest change of value along an arm or line, from its centre to an end.
        tof_jitter: standard deviation of the per-pixel jitter of the signal's values.
        cross_fraction: the share of frames that hold a cross (the rest hold a line).
        signal_hits: the typical number of signal hits per frame (thickness and length of the patterns
            set to match, see the module docstring), from 10 to an eighth of the frame's pixels;
            ``None``: the patterns' natural size (:attr:`natural_hits`).
    """

    height: int = 88
    width: int = 128
    tof_min: float = 20.0
    tof_max: float = 100.0
    scale_min: float = 0.7
    scale_max: float = 1.3
    noise_hits: float = 30.0
    tof_gradient: float = 10.0
    tof_jitter: float = 1.0
    cross_fraction: float = 0.5
    signal_hits: int | None = None

    def __post_init__(self) -> None:
        with as_input_error():
            for name in ("height", "width"):
                check_integer(f"frame {name}", getattr(self, name), minimum=8)
            for name in _REAL_SETTINGS:
                check_real(name, getattr(self, name), minimum=0.0)
            check_real("cross_fraction", self.cross_fraction, minimum=0.0, maximum=1.0)
            if not 0 < self.tof_min < self.tof_max:
                raise ValueError(f"need 0 < tof_min < tof_max, got {self.tof_min!r} and {self.tof_max!r}")
            if not 0 < self.scale_min <= self.scale_max:
                raise ValueError(
                    f"need 0 < scale_min <= scale_max, got {self.scale_min!r} and {self.scale_max!r}"
                )
            if self.signal_hits is not None:
                check_integer(
                    "--signal-hits", self.signal_hits, minimum=10, maximum=self.height * self.width // 8
                )

    @property
    def natural_hits(self) -> float:
        """The typical signal hits of a frame at the patterns' natural size (scale 1): a two-pixel-thick
        cross or line, in the proportion ``cross_fraction``; 201 at 88 x 128."""
        cross = _THICKNESS * (_CROSS_ARM_H * self.height + _CROSS_ARM_W * self.width)
        line = _THICKNESS * _LINE_LENGTH_W * self.width
        return self.cross_fraction * cross + (1 - self.cross_fraction) * line

    def pattern_shape(self) -> tuple[int, float]:
        """The patterns' thickness in pixels and their length relative to the natural one."""
        if self.signal_hits is None:
            return _THICKNESS, 1.0
        factor = _THICKNESS * self.signal_hits / self.natural_hits
        thickness = max(1, round(factor))
        return thickness, factor / thickness


@dataclass(frozen=True)
class SyntheticPairs:
    """Frames made by :func:`generate_pairs`.

    Attributes:
        input: the noisy frames, float32, shape ``(N, 1, height, width)``.
        target: the clean signal, float32, same shape.
        pattern: which pattern each frame holds (:data:`CROSS` or :data:`LINE`), int64, shape ``(N,)``.
    """

    input: np.ndarray
    target: np.ndarray
    pattern: np.ndarray


def _segment_pixels(
    centre: np.ndarray, direction: np.ndarray, half_length: float, height: int, width: int, thickness: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of a segment ``thickness`` pixels thick, and each pixel's position along it in [-1, 1].

    Returns rows, columns (clipped to the frame, duplicates removed) and positions.
    """
    steps = max(2, math.ceil(4 * half_length) + 1)
    along = np.linspace(-half_length, half_length, steps)
    normal = np.array([-direction[1], direction[0]])
    points = [
        centre[None, :] + along[:, None] * direction[None, :] + offset * normal[None, :]
        for offset in np.arange(thickness) - (thickness - 1) / 2
    ]
    xy = np.floor(np.concatenate(points) + 0.5).astype(np.int64)
    position = np.concatenate([along] * thickness) / max(half_length, 1e-9)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < height) & (xy[:, 1] >= 0) & (xy[:, 1] < width)
    xy, position = xy[inside], position[inside]
    flat = xy[:, 0] * width + xy[:, 1]
    flat, first = np.unique(flat, return_index=True)
    return flat // width, flat % width, position[first]


def _place(half_extent: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random centre that keeps a pattern of the given half extent (row, col) inside the frame."""
    low = half_extent
    high = size - 1 - half_extent
    centre = np.empty(2)
    for axis in range(2):
        if high[axis] > low[axis]:
            centre[axis] = rng.uniform(low[axis], high[axis])
        else:
            centre[axis] = (size[axis] - 1) / 2
    return centre


def _signal_frame(frame: np.ndarray, pattern: int, config: SyntheticConfig, rng: np.random.Generator) -> None:
    """Draw one clean pattern into ``frame`` (2-D, zeros) in place."""
    height, width = config.height, config.width
    size = np.array([height, width], dtype=np.float64)
    thickness, length = config.pattern_shape()
    scale = length * rng.uniform(config.scale_min, config.scale_max)
    if pattern == CROSS:
        arm_rows = 0.5 * scale * _CROSS_ARM_H * height  # half the vertical arm
        arm_cols = 0.5 * scale * _CROSS_ARM_W * width  # half the horizontal arm
        centre = _place(np.array([arm_rows, arm_cols]), size, rng)
        segments = [(np.array([1.0, 0.0]), arm_rows), (np.array([0.0, 1.0]), arm_cols)]
    else:
        angle = rng.uniform(0.0, math.pi)
        direction = np.array([math.sin(angle), math.cos(angle)])
        half_length = 0.5 * scale * _LINE_LENGTH_W * width
        extent = np.abs(direction) * half_length
        centre = _place(extent, size, rng)
        segments = [(direction, half_length)]
    base = rng.uniform(config.tof_min + config.tof_gradient, config.tof_max - config.tof_gradient)
    for direction, half_length in segments:
        rows, cols, position = _segment_pixels(centre, direction, half_length, height, width, thickness)
        gradient = rng.uniform(-config.tof_gradient, config.tof_gradient)
        values = base + gradient * position + rng.normal(0.0, config.tof_jitter, size=rows.shape)
        # Where the arms of a cross meet, the later arm's value wins.
        frame[rows, cols] = np.clip(values, config.tof_min, config.tof_max)


def _noise(frame: np.ndarray, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """The frame plus noise hits on pixels the signal leaves empty."""
    noisy: np.ndarray = frame.copy()
    empty = np.flatnonzero(frame.reshape(-1) == 0)
    mean = config.noise_hits * frame.size / _REFERENCE_AREA
    count = min(int(rng.poisson(mean)), empty.size)
    chosen = rng.choice(empty, size=count, replace=False)
    noisy.reshape(-1)[chosen] = rng.uniform(config.tof_min, config.tof_max, size=count)
    return noisy


def generate_pairs(
    count: int,
    *,
    seed: int | np.random.SeedSequence | np.random.Generator | tuple[int, ...] | None = None,
    config: SyntheticConfig | None = None,
) -> SyntheticPairs:
    """``count`` noisy/clean frame pairs, reproducible from ``seed``.

    Args:
        count: number of frames (0 or more).
        seed: an int, a tuple of ints, a :class:`numpy.random.SeedSequence`, or a
            :class:`numpy.random.Generator` to draw from (it advances). ``None`` draws fresh entropy.
        config: how frames are made; default :class:`SyntheticConfig()` (88 x 128 frames).

    Returns:
        :class:`SyntheticPairs` with ``input`` and ``target`` of shape ``(count, 1, height, width)``.

    Raises:
        InputError: ``count`` is not a whole number of at least 0.
    """
    with as_input_error():
        count = check_integer("count", count, minimum=0)
    config = config if config is not None else SyntheticConfig()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = (count, 1, config.height, config.width)
    target = np.zeros(shape, dtype=np.float32)
    noisy = np.zeros(shape, dtype=np.float32)
    patterns = np.where(rng.random(count) < config.cross_fraction, CROSS, LINE).astype(np.int64)
    for i in range(count):
        frame = np.zeros((config.height, config.width), dtype=np.float64)
        _signal_frame(frame, int(patterns[i]), config, rng)
        target[i, 0] = frame
        noisy[i, 0] = _noise(frame, config, rng)
    return SyntheticPairs(input=noisy, target=target, pattern=patterns)
