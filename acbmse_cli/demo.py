"""The training demo: one small denoising autoencoder trained with MSE, MAE and ACB-MSE, side by side.

:func:`run_demo` trains the same convolutional autoencoder (same initial weights, same batches in the same
order, same optimiser and learning rate, same number of steps) once per loss on synthetic detector frames
(:mod:`acbmse_cli.synthetic`), then evaluates every model on one held-out set.  The result is plain data;
:func:`save_outputs` stores it (:func:`acbmse_cli.report.render_demo_table` renders it).

**Metrics on the held-out set.**  The truth is the target's hit class (``|target| > 0``).  A pixel of a
model's output counts as a *detected hit* when its value is above the detection threshold, which is half
the smallest hit value of the data (``tof_min / 2``: 10 by default, hits lie in [20, 100]).  From the
counts of :func:`acbmse_cli.loss.detection_counts`: recall ``tp / (tp + fn)``, precision ``tp / (tp + fp)``
and F1 ``2 tp / (2 tp + fp + fn)``, pooled over all held-out frames (``None`` where the denominator is 0,
e.g. precision of a model that detects nothing; errors are ``None`` where they are not finite, as after a
diverged run).  A *blank* output is a frame with no pixel above the
detection threshold; ``blank_fraction`` is the share of held-out frames whose output is blank.  The
per-class errors come from :func:`acbmse_cli.loss.class_stats` in float64, pooled over the held-out set,
the same statistics ``acbmse eval`` reports: ``mse_hit`` and ``mse_nonhit`` (the mean squared error over
the target's hits and non-hits), ``mse`` (over all pixels) and ``acb_mse`` (:func:`balanced_loss` of those
statistics with the run's hit and non-hit weights).

**Over every threshold, and denoising.** The same held-out outputs go through
:func:`acbmse_cli.histograms.detection_stats` and :func:`~acbmse_cli.histograms.detection_curve`, the code
of ``acbmse eval --detect-curve --input``, so the demo's figures equal that command's on the ``--save-data``
files. The grid is eval's default (:func:`detection_grid`): 201 thresholds from the hit threshold 0 to the
held-out target's largest hit value rounded up; it is the ``thresholds`` of the run record. Over it:
``average_precision`` (the step-wise sum ``sum_k (R_k - R_{k-1}) P_k``, thresholds decreasing) and
``best_f1`` (``threshold``, ``f1``, ``recall``, ``precision`` at the grid threshold of highest F1, the
lowest on ties). At the detection threshold: ``signal_retained``, the share of the ``signal_hits`` (the
target's hits) above it (the recall), and ``noise_removed``, the share of the ``noise_hits`` (hits of the
network's input that are not hits of the target) at or below it.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from acbmse_cli._checks import as_input_error, check_integer, check_real, check_weight
from acbmse_cli._files import OutputDir, Writer, as_output_dir, check_destinations, write_files
from acbmse_cli._loss_names import LOSS_COLORS, LOSS_LABELS, LOSS_NAMES
from acbmse_cli._provenance import run_record
from acbmse_cli.errors import InputError
from acbmse_cli.histograms import (
    DetectionCurve,
    ThresholdGrid,
    default_grid,
    detection_curve,
    detection_stats,
)
from acbmse_cli.loss import acb_mse_loss, balanced_loss, class_stats, detection_counts
from acbmse_cli.stats import hit_mask
from acbmse_cli.synthetic import CROSS, LINE, SyntheticConfig, SyntheticPairs, generate_pairs

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LOSS_LABELS",
    "LOSS_NAMES",
    "DemoAutoencoder",
    "DemoOptions",
    "DemoResult",
    "LossRun",
    "Metric",
    "check_outputs",
    "default_threads",
    "detection_grid",
    "heldout_metrics",
    "heldout_scores",
    "parse_frame_size",
    "parse_losses",
    "run_demo",
    "save_data",
    "save_figure",
    "save_outputs",
]

# Where --save-data puts things (inside the directory given).
INPUT_FILE = "input.npy"
TARGET_FILE = "target.npy"
PREDICTION_FILE = "pred_{loss}.npy"
FIGURE_FILE = "demo.png"

# Seeds are passed to torch.manual_seed, which takes a signed 64-bit integer.
MAX_SEED = 2**63

#: The hit class of the held-out target: ``|target| > HIT_THRESHOLD`` (the data's hits lie in
#: ``[tof_min, tof_max]``, everything else is 0).
HIT_THRESHOLD = 0.0

#: One held-out metric: a count, a ratio, ``best_f1``'s operating point, or ``None`` where undefined.
Metric = float | int | dict[str, float | None] | None

# Called after every training step as progress(loss_name, step, steps, loss_value).
ProgressCallback = Callable[[str, int, int, float], None]


# --------------------------------------------------------------------------- options


def parse_losses(text: str) -> tuple[str, ...]:
    """``"mse,acb_mse"`` -> ``("mse", "acb_mse")``, in the order given; :class:`InputError` if bad."""
    names = [part.strip().lower().replace("-", "_") for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise InputError(f"--losses must be a comma-separated list of {', '.join(LOSS_NAMES)}, got {text!r}")
    unknown = [name for name in names if name not in LOSS_NAMES]
    if unknown:
        raise InputError(f"--losses: unknown loss {unknown[0]!r}; choose from {', '.join(LOSS_NAMES)}")
    if len(set(names)) != len(names):
        raise InputError(f"--losses names a loss twice: {text!r}")
    return tuple(names)


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"88x128"`` -> ``(88, 128)`` (height, width); :class:`InputError` if bad."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--frame-size must be HEIGHTxWIDTH, e.g. 88x128, got {text!r}") from None
    if height < 8 or width < 8:
        raise InputError(f"--frame-size must be at least 8x8, got {text!r}")
    return height, width


@dataclass(frozen=True)
class DemoOptions:
    """Everything a demo run depends on; validated on creation (:class:`InputError` names the option).

    Args:
        steps: optimiser steps per loss.
        batch_size: frames per step.
        seed: seeds the data (training batches and held-out set) and the initial weights.
        losses: which losses to train, from :data:`LOSS_NAMES`.
        hit_weight: A, the ACB-MSE weight of the hit class.
        nonhit_weight: B, the ACB-MSE weight of the non-hit class.
        eval_frames: size of the held-out set.
        height: frame height in pixels, a multiple of 8.
        width: frame width in pixels, a multiple of 8.
        channels: feature channels of the autoencoder's first layer (the next ones have twice as many).
        latent: size of the autoencoder's dense code.
        learning_rate: Adam's learning rate.
        threads: torch CPU threads while training; ``None``: half the CPUs this process may use, at
            least 1 and at most 4 (see :func:`default_threads`).
        signal_hits: the typical number of signal hits per frame (the synthetic data's
            :attr:`~acbmse_cli.synthetic.SyntheticConfig.signal_hits`); ``None``: the patterns' natural
            size, about 200 hits at 88 x 128.
    """

    steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    losses: tuple[str, ...] = LOSS_NAMES
    hit_weight: float = 1.0
    nonhit_weight: float = 1.0
    eval_frames: int = 200
    height: int = 88
    width: int = 128
    channels: int = 8
    latent: int = 64
    learning_rate: float = 2e-3
    threads: int | None = None
    signal_hits: int | None = None

    def __post_init__(self) -> None:
        with as_input_error():
            self._check_counts()
            self._check_losses()
            self._check_frame()

    def _check_counts(self) -> None:
        """The counts and sizes of the run, and the learning rate."""
        check_integer("--steps", self.steps)
        check_integer("--batch-size", self.batch_size)
        check_integer("--seed", self.seed, minimum=0, maximum=MAX_SEED - 1)
        check_integer("--eval-frames", self.eval_frames)
        check_integer("channels", self.channels)
        check_integer("latent", self.latent)
        if self.threads is not None:
            check_integer("--threads", self.threads)
        check_real("learning_rate", self.learning_rate, above=0.0)

    def _check_losses(self) -> None:
        """The losses to train and the ACB-MSE weights."""
        if (
            not isinstance(self.losses, tuple)
            or not self.losses
            or not all(isinstance(name, str) for name in self.losses)
        ):
            raise ValueError(f"--losses must name at least one loss, got {self.losses!r}")
        parse_losses(",".join(self.losses))
        hit = check_weight("--hit-weight", self.hit_weight)
        nonhit = check_weight("--nonhit-weight", self.nonhit_weight)
        if hit == 0 and nonhit == 0:
            raise ValueError(
                "--hit-weight and --nonhit-weight are both 0: the ACB-MSE loss would always be 0"
            )

    def _check_frame(self) -> None:
        """The frame size: the data's own check, then the autoencoder's."""
        self.data_config()  # checks the frame size
        if self.height % 8 or self.width % 8:
            raise ValueError(
                "the frame size must be a multiple of 8 in each direction (the autoencoder halves it 3 "
                f"times), got {self.height}x{self.width}"
            )

    def data_config(self) -> SyntheticConfig:
        """The synthetic data's settings for this run's frame size."""
        return SyntheticConfig(height=self.height, width=self.width, signal_hits=self.signal_hits)

    @property
    def detect_threshold(self) -> float:
        """Output values above this count as detected hits: half the smallest hit value."""
        return self.data_config().tof_min / 2


# --------------------------------------------------------------------------- the model


class DemoAutoencoder(nn.Module):
    """A small convolutional denoising autoencoder with a dense bottleneck and no skip connections.

    Three stride-2 convolutions take a frame down 8 times in each direction (88 x 128 -> 11 x 16); a dense
    layer squeezes that into a code of ``latent`` numbers and another expands it back; three transposed
    convolutions return to the frame's size.  With no path around the code, the network must encode where
    the pattern is, how large, and its values: the setting in which MSE and MAE tend to settle on blank
    frames.  Values are divided by ``value_scale`` on the way in and multiplied by it on the
    way out, so the network works near unit scale while its inputs and outputs are in the data's units.
    The output is linear (it may be negative).

    Args:
        channels: feature channels of the first convolution; the others have ``2 * channels``.
        latent: size of the dense code.
        frame: (height, width) of the frames, multiples of 8.
        value_scale: the data's unit of scale.

    Shape:
        - Input: :math:`(N, 1, H, W)`; Output: the same.
    """

    def __init__(
        self,
        channels: int = 8,
        latent: int = 64,
        frame: tuple[int, int] = (88, 128),
        value_scale: float = 100.0,
    ) -> None:
        super().__init__()
        c = channels
        self.value_scale = float(value_scale)
        self.code_shape = (2 * c, frame[0] // 8, frame[1] // 8)
        flat = 2 * c * (frame[0] // 8) * (frame[1] // 8)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, latent),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, flat),
            nn.ReLU(),
            nn.Unflatten(1, self.code_shape),
            nn.ConvTranspose2d(2 * c, 2 * c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a batch ``(N, 1, H, W)``."""
        out: Tensor = self.decoder(self.encoder(x / self.value_scale))
        return out * self.value_scale


# --------------------------------------------------------------------------- training


@dataclass
class LossRun:
    """One loss's training run and its held-out results.

    Attributes:
        name: the loss (one of :data:`LOSS_NAMES`).
        curve: the training loss after every step.
        metrics: the held-out metrics (see the module docstring), plain numbers or ``None``
            (``best_f1`` a dict of them).
        predictions: the model's outputs on the held-out set, float32 ``(N, 1, H, W)``.
        detection: hit finding on the held-out set at every threshold of the run's grid.
    """

    name: str
    curve: list[float]
    metrics: dict[str, Metric]
    predictions: np.ndarray = field(repr=False)
    detection: DetectionCurve = field(repr=False)


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the options, the device, the held-out data, one run per loss and
    the threshold grid of every loss's detection curve."""

    options: DemoOptions
    device: str
    detect_threshold: float
    heldout: SyntheticPairs = field(repr=False)
    runs: dict[str, LossRun]
    grid: ThresholdGrid = field(repr=False)

    def metrics(self) -> dict[str, dict[str, Metric]]:
        """``{loss: {metric: value}}``, ready for ``json.dumps``."""
        return {name: dict(run.metrics) for name, run in self.runs.items()}

    def run_record(self) -> dict[str, Any]:
        """The version and every option that shaped the numbers."""
        o = self.options
        density = {} if o.signal_hits is None else {"signal_hits": o.signal_hits}
        return run_record(
            {
                "steps": o.steps,
                "batch_size": o.batch_size,
                "seed": o.seed,
                "losses": o.losses,
                "hit_weight": o.hit_weight,
                "nonhit_weight": o.nonhit_weight,
                **density,
                "eval_frames": o.eval_frames,
                "frame_size": f"{o.height}x{o.width}",
                "learning_rate": o.learning_rate,
                "detect_threshold": self.detect_threshold,
                "thresholds": self.grid.describe(),
                "device": self.device,
            }
        )

    def to_json(self) -> str:
        """``{loss: {metric: value}, ..., "run": {...}}``: the metrics and how they were made."""
        return json.dumps({**self.metrics(), "run": self.run_record()}, indent=2)


def _loss_function(name: str, options: DemoOptions) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "mse":
        return nn.functional.mse_loss
    if name == "mae":
        return nn.functional.l1_loss

    def acb(pred: Tensor, target: Tensor) -> Tensor:
        return acb_mse_loss(pred, target, hit_weight=options.hit_weight, nonhit_weight=options.nonhit_weight)

    return acb


def default_threads() -> int:
    """torch CPU threads for the demo: half the CPUs this process may use, at least 1, at most 4.

    The demo's convolutions are small, so more threads gain little (2 threads train about 20% faster than
    1 on a 2-core machine), while a thread pool as large as the machine stalls badly as soon as anything
    else runs there: every operation waits for its slowest thread, and a thread that lost its core waits
    a whole scheduler time slice.  Half the CPUs keeps that headroom.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        available = os.cpu_count() or 1
    return max(1, min(available // 2, 4))


@contextmanager
def _torch_threads(count: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (default: :func:`default_threads`), then restore."""
    if device.type != "cpu":
        yield
        return
    if count is None:
        count = default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _new_model(options: DemoOptions) -> DemoAutoencoder:
    return DemoAutoencoder(options.channels, options.latent, (options.height, options.width))


def _initial_model(options: DemoOptions) -> DemoAutoencoder:
    """The autoencoder with weights drawn from ``options.seed``; global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return _new_model(options)


def _training_batch(options: DemoOptions, step: int, config: SyntheticConfig) -> SyntheticPairs:
    """Training batch number ``step``: the same for every loss, independent of the held-out set."""
    return generate_pairs(options.batch_size, seed=(options.seed, 1, step), config=config)


#: Bytes that one training step takes per pixel of its batch (activations, their gradients,
#: the optimiser's work): about 55 measured at 88 x 128, doubled for room.
TRAIN_BYTES_PER_PIXEL = 110


def memory_needed(options: DemoOptions) -> int:
    """Bytes a run needs at its peak: one training step, and the held-out set with its predictions."""
    pixels = options.height * options.width
    heldout = options.eval_frames * pixels * 4 * (2 + len(options.losses))  # float32 input, target, outputs
    return options.batch_size * pixels * TRAIN_BYTES_PER_PIXEL + heldout


def available_memory(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None where it cannot be known."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(options: DemoOptions, device: torch.device) -> None:
    """Refuse, before any work, sizes whose run would not fit in the memory ``device`` has free."""
    need, free = memory_needed(options), available_memory(device)
    if free is None or need <= free:
        return
    raise InputError(
        f"--batch-size {options.batch_size} and --eval-frames {options.eval_frames} at "
        f"{options.height}x{options.width} need about {need / 2**30:.1f} GiB on {device}, but only "
        f"{free / 2**30:.1f} GiB is free: choose smaller sizes"
    )


def run_demo(
    options: DemoOptions,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Train one autoencoder per loss in ``options.losses`` and evaluate each on a held-out set.

    All models start from the same weights and see the same batches in the same order with the same
    optimiser (Adam) and learning rate.  The losses are trained side by side, one step of each per batch.
    On the CPU the result depends only on ``options`` (and the number of threads).

    Args:
        options: the run's settings.
        device: where to train.
        progress: called after every step as ``progress(loss, step, steps, loss_value)``.

    Returns:
        :class:`DemoResult`, plain data.
    """
    device = torch.device(device)
    check_memory(options, device)
    heldout = generate_pairs(options.eval_frames, seed=(options.seed, 2), config=options.data_config())
    grid = detection_grid(heldout.target)
    with _torch_threads(options.threads, device):
        models, curves = _train(options, device, progress)
        runs: dict[str, LossRun] = {}
        for name in options.losses:
            predictions = _predict(models[name], heldout.input, device, options.batch_size)
            metrics, detection = heldout_scores(
                predictions, heldout.target, options, noisy=heldout.input, grid=grid
            )
            metrics["final_train_loss"] = _finite(curves[name][-1])
            runs[name] = LossRun(name, curves[name], metrics, predictions, detection)
    return DemoResult(
        options=options,
        device=str(device),
        detect_threshold=options.detect_threshold,
        heldout=heldout,
        runs=runs,
        grid=grid,
    )


def _train(
    options: DemoOptions, device: torch.device, progress: ProgressCallback | None
) -> tuple[dict[str, DemoAutoencoder], dict[str, list[float]]]:
    """Train a copy of the initial model per loss, one step of each per batch; the models and curves."""
    config = options.data_config()
    initial = _initial_model(options)
    models: dict[str, DemoAutoencoder] = {}
    optimisers: dict[str, torch.optim.Optimizer] = {}
    loss_fns = {name: _loss_function(name, options) for name in options.losses}
    curves: dict[str, list[float]] = {name: [] for name in options.losses}
    for name in options.losses:
        model = copy.deepcopy(initial)  # the same initial weights for every loss
        models[name] = model.to(device).train()
        optimisers[name] = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    for step in range(options.steps):
        batch = _training_batch(options, step, config)
        x = torch.from_numpy(batch.input).to(device)
        y = torch.from_numpy(batch.target).to(device)
        for name in options.losses:
            optimisers[name].zero_grad(set_to_none=True)
            loss = loss_fns[name](models[name](x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimisers[name].step()
            value = float(loss.detach())
            curves[name].append(value)
            if progress is not None:
                progress(name, step + 1, options.steps, value)
    return models, curves


@torch.no_grad()
def _predict(model: nn.Module, frames: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    model.eval()
    chunk = max(batch_size, 64)
    outputs = [
        model(torch.from_numpy(frames[i : i + chunk]).to(device)).cpu().numpy()
        for i in range(0, len(frames), chunk)
    ]
    return np.concatenate(outputs).astype(np.float32, copy=False)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def detection_grid(target: np.ndarray) -> ThresholdGrid:
    """``acbmse eval``'s default grid for ``target``: from :data:`HIT_THRESHOLD` to its largest finite hit
    value, so that the curve covers every threshold at which a hit of the target could be told apart."""
    truth = torch.from_numpy(target)
    values = truth[hit_mask(truth, HIT_THRESHOLD)]
    values = values[torch.isfinite(values)]
    return default_grid(HIT_THRESHOLD, float(values.max()) if values.numel() else None)


def heldout_metrics(
    predictions: np.ndarray,
    target: np.ndarray,
    options: DemoOptions,
    *,
    noisy: np.ndarray | None = None,
    grid: ThresholdGrid | None = None,
) -> dict[str, Metric]:
    """The held-out metrics of one model's outputs (see the module docstring): those of
    :func:`heldout_scores`, without the curve."""
    metrics, _curve = heldout_scores(predictions, target, options, noisy=noisy, grid=grid)
    return metrics


def heldout_scores(
    predictions: np.ndarray,
    target: np.ndarray,
    options: DemoOptions,
    *,
    noisy: np.ndarray | None = None,
    grid: ThresholdGrid | None = None,
) -> tuple[dict[str, Metric], DetectionCurve]:
    """The held-out metrics of one model's outputs, and its detection curve over ``grid`` (default:
    :func:`detection_grid` of ``target``).  ``noisy`` is the network's input, which tells the noise hits;
    without it ``noise_hits`` and ``noise_removed`` are ``None``."""
    metrics: dict[str, Metric] = {**_fixed_threshold_metrics(predictions, target, options)}
    pred, truth = torch.from_numpy(predictions), torch.from_numpy(target)
    noise = None if noisy is None else torch.from_numpy(noisy)

    def curve_over(thresholds: ThresholdGrid) -> DetectionCurve:
        stats = detection_stats(pred, truth, thresholds, hit_threshold=HIT_THRESHOLD, noisy=noise)
        return detection_curve(stats, thresholds)

    curve = curve_over(detection_grid(target) if grid is None else grid)
    fixed = curve_over(ThresholdGrid((options.detect_threshold,)))
    metrics.update(
        average_precision=curve.average_precision,
        best_f1=curve.best_f1(),
        signal_hits=fixed.signal_hits,
        signal_retained=fixed.recall[0],
        noise_hits=fixed.noise_hits,
        noise_removed=None if fixed.noise_removed is None else fixed.noise_removed[0],
    )
    return metrics, curve


def _fixed_threshold_metrics(
    predictions: np.ndarray, target: np.ndarray, options: DemoOptions
) -> dict[str, float | int | None]:
    """The metrics at the detection threshold and the per-class errors."""
    pred = torch.from_numpy(predictions)
    truth = torch.from_numpy(target)
    counts = detection_counts(pred, truth, detect_threshold=options.detect_threshold, per_sample=True)
    tp, fp, fn = (int(v) for v in counts.sum(dim=0))
    blank_frames = int(((counts[:, 0] + counts[:, 1]) == 0).sum())
    stats = class_stats(pred, truth, dtype=torch.float64)
    count = stats.count[0].tolist()
    sse = stats.sse[0].tolist()
    acb = float(balanced_loss(stats, (options.nonhit_weight, options.hit_weight))[0])
    frames = int(predictions.shape[0])
    return {
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "blank_fraction": blank_frames / frames,
        "blank_frames": blank_frames,
        "frames": frames,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mse_hit": _ratio_f(sse[1], count[1]),
        "mse_nonhit": _ratio_f(sse[0], count[0]),
        "mse": _ratio_f(sse[0] + sse[1], count[0] + count[1]),
        "acb_mse": _finite(acb),
    }


def _ratio_f(numerator: float, denominator: int) -> float | None:
    return _finite(numerator / denominator) if denominator else None


def _finite(value: float) -> float | None:
    """``None`` for NaN or infinity (a diverged run), so that the JSON output stays valid."""
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- files


def save_data(result: DemoResult, directory: str | os.PathLike[str] | OutputDir) -> list[Path]:
    """Write the held-out set and every model's outputs as ``.npy`` files; return their paths.

    Files (float32, shape ``(N, 1, H, W)``): ``input.npy`` (the noisy frames), ``target.npy`` (the clean
    signal) and ``pred_<loss>.npy`` for each trained loss, so that ``acbmse eval DIR/pred_acb_mse.npy
    DIR/target.npy`` evaluates a model.  The files are written together or not at all.
    """
    return save_outputs(result, data_dir=directory)


def save_figure(result: DemoResult, directory: str | os.PathLike[str] | OutputDir) -> Path:
    """Write ``demo.png``: a few held-out frames (input, target, each loss's output), the training-loss
    curves and the held-out precision-recall curves."""
    (target,) = save_outputs(result, figure_dir=directory)
    return target


def save_outputs(
    result: DemoResult,
    *,
    data_dir: str | os.PathLike[str] | OutputDir | None = None,
    figure_dir: str | os.PathLike[str] | OutputDir | None = None,
) -> list[Path]:
    """Write the ``--save-data`` files into ``data_dir`` and the figure into ``figure_dir`` together.

    A folder given as a path is checked here (:class:`~acbmse_cli._files.OutputDir`); the files are then
    written all together or not at all (:func:`~acbmse_cli._files.write_files`): a destination that is a
    folder, or a failed write, replaces no file.  Returns the paths written, the data files first.
    """
    data = None if data_dir is None else as_output_dir(data_dir, option="--save-data")
    figure = None if figure_dir is None else as_output_dir(figure_dir, option="--out")
    writers: dict[Path, Writer] = {}
    if data is not None:
        writers.update(_data_writers(result, data.path))
    if figure is not None:
        writers[figure.path / FIGURE_FILE] = _figure_writer(result)
    return write_files(writers)


def check_outputs(
    options: DemoOptions, *, data_dir: OutputDir | None = None, figure_dir: OutputDir | None = None
) -> None:
    """Refuse, before any training, a destination that :func:`save_outputs` could not write (a folder
    where ``demo.png`` or one of the ``.npy`` files should go, a folder that cannot be written).

    Raises:
        InputError: naming the destination.
    """
    paths = [] if data_dir is None else [data_dir.path / name for name in _data_names(options.losses)]
    if figure_dir is not None:
        paths.append(figure_dir.path / FIGURE_FILE)
    check_destinations(paths)


def _data_names(losses: Sequence[str]) -> list[str]:
    """The ``--save-data`` file names, in the order they are written."""
    return [INPUT_FILE, TARGET_FILE, *(PREDICTION_FILE.format(loss=name) for name in losses)]


def _data_writers(result: DemoResult, directory: Path) -> dict[Path, Writer]:
    arrays = [result.heldout.input, result.heldout.target, *(run.predictions for run in result.runs.values())]
    names = _data_names(list(result.runs))
    return {directory / name: _npy_writer(array) for name, array in zip(names, arrays, strict=True)}


def _npy_writer(array: np.ndarray) -> Writer:
    def write(stream: BinaryIO) -> None:
        np.save(stream, array, allow_pickle=False)

    return write


def _figure_writer(result: DemoResult) -> Writer:
    """A writer that draws the figure of :func:`save_figure` and saves it as PNG."""

    def write(stream: BinaryIO) -> None:
        from acbmse_cli.plots import quiet_parser_deprecations

        with quiet_parser_deprecations():
            _draw_figure(result).savefig(stream, format="png", dpi=110)

    return write


def _figure_frames(pattern: np.ndarray, count: int) -> list[int]:
    """Indices of a few held-out frames to show: crosses and lines alternately, in order."""
    crosses = [int(i) for i in np.flatnonzero(pattern == CROSS)]
    lines = [int(i) for i in np.flatnonzero(pattern == LINE)]
    chosen: list[int] = []
    while len(chosen) < count and (crosses or lines):
        for group in (crosses, lines):
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return sorted(chosen)


def _draw_figure(result: DemoResult, *, frames: int = 3) -> Figure:
    """The figure of :func:`save_figure`: a row of panels per chosen frame; below, the training curves
    beside the held-out precision-recall curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = _figure_frames(result.heldout.pattern, frames)
    columns = 2 + len(result.runs)
    width = max(2.6 * columns, 10.0)  # room for the two panels of the last row with a single loss
    fig = Figure(figsize=(width, 1.9 * len(chosen) + 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(chosen) + 1, columns, height_ratios=[1.0] * len(chosen) + [2.1])
    vmax = result.options.data_config().tof_max
    image = None
    for row, index in enumerate(chosen):
        panels = [("input", result.heldout.input[index, 0]), ("target", result.heldout.target[index, 0])]
        panels += [(LOSS_LABELS[name], run.predictions[index, 0]) for name, run in result.runs.items()]
        for col, (title, frame) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            image = ax.imshow(
                np.clip(frame, 0, vmax), cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(f"frame {index}")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.6, label="value (ToF); output clipped to [0, max]")
    bottom = grid[len(chosen), :].subgridspec(1, 2, width_ratios=[3, 2])
    _plot_training_curves(fig.add_subplot(bottom[0, 0]), result)
    _plot_precision_recall(fig.add_subplot(bottom[0, 1]), result)
    return fig


def _plot_training_curves(ax: Axes, result: DemoResult) -> None:
    """Each loss's training curve relative to its first step, faint, and its running mean, thick."""
    for name, run in result.runs.items():
        curve = np.asarray(run.curve, dtype=np.float64)
        relative = curve / curve[0] if curve[0] > 0 else curve
        steps = np.arange(1, len(curve) + 1)
        ax.plot(steps, relative, color=LOSS_COLORS[name], alpha=0.25, linewidth=0.8)
        window = max(1, len(curve) // 40)
        smooth = np.convolve(relative, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color=LOSS_COLORS[name], label=LOSS_LABELS[name])
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss / first step's")
    ax.set_title("training loss, relative to the first step (thick: running mean)")
    ax.legend()


def _plot_precision_recall(ax: Axes, result: DemoResult) -> None:
    """Each loss's held-out precision against recall over the grid, its best-F1 point (star) and its
    point at the detection threshold (circle); AP in the legend."""
    for name, run in result.runs.items():
        curve, color = run.detection, LOSS_COLORS[name]
        points = [(r, p) for r, p in zip(curve.recall, curve.precision, strict=True) if p is not None]
        ap = curve.average_precision
        label = f"{LOSS_LABELS[name]}  AP {'n/a' if ap is None else f'{ap:.3f}'}"
        if points:
            recall, precision = zip(*points, strict=True)
            ax.plot(recall, precision, color=color, linewidth=1.6, label=label)
        else:  # nothing above any threshold: no curve to draw, but the loss keeps its legend entry
            ax.plot([], [], color=color, linewidth=1.6, label=label)
        _mark_operating_points(ax, run, color)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of true hits found)")
    ax.set_ylabel("precision (share of detections that are hits)")
    ax.set_title(
        f"held-out hit finding over {len(result.grid)} thresholds\n"
        f"★ best F1, ○ output > {result.detect_threshold:g}",
        fontsize="medium",
    )
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")


def _mark_operating_points(ax: Axes, run: LossRun, color: str) -> None:
    """A star at the best-F1 point of ``run``'s curve, a circle at its detection threshold."""
    best = run.detection.best_f1() or {}
    recall, precision = best.get("recall"), best.get("precision")
    if recall is not None and precision is not None:
        ax.plot(recall, precision, marker="*", markersize=12, color=color,
                markeredgecolor="black", markeredgewidth=0.6, linestyle="none")  # fmt: skip
    fixed_recall, fixed_precision = run.metrics["recall"], run.metrics["precision"]
    if isinstance(fixed_recall, float) and isinstance(fixed_precision, float):
        ax.plot(fixed_recall, fixed_precision, marker="o", markersize=6, markerfacecolor="none",
                markeredgecolor=color, markeredgewidth=1.4, linestyle="none")  # fmt: skip
