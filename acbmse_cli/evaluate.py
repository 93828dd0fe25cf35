"""Per-class error statistics of stored predictions: the library behind ``acbmse eval``.

:func:`evaluate` streams a prediction file and a target file (and optionally a labels
file) chunk by chunk and adds up, per class, the statistics of
:func:`acbmse_cli.loss.class_stats`: counts and float64 sums that merge by addition,
whatever the chunk size or the number of processes.  The report (MSE, MAE, ACB-MSE and
the rest) is computed from those sums at the end, with
:func:`acbmse_cli.loss.balanced_loss`: there is no second copy of the formula here.
Every option that shapes the computation is one field of :class:`EvalOptions`, checked
when it is built.

Under ``torchrun`` (an initialised ``torch.distributed`` process group of several
processes) the ranks split the samples between them and the sums are all-reduced, so
every rank returns the result of the whole files.

Nothing here prints: progress goes to an optional callback and the result is a plain
data object that :mod:`acbmse_cli.report` renders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from acbmse_cli import _distributed, _native_pass
from acbmse_cli._checks import as_input_error, check_real, check_weight
from acbmse_cli._folders import FileGroup, FolderSet, are_folders, match_folders, share_by_size
from acbmse_cli._provenance import run_record
from acbmse_cli.arrays import ArraySource, chunk_ranges, open_array
from acbmse_cli.errors import InputError
from acbmse_cli.histograms import (
    DetectionCurve,
    DetectionStats,
    ErrorStats,
    ThresholdGrid,
    calibration_bounds,
    default_grid,
    detection_adder,
    detection_curve,
    detection_stats,
    error_stats,
)
from acbmse_cli.loss import balanced_loss, class_stats
from acbmse_cli.stats import ClassStats, hit_mask

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "NAN_POLICIES",
    "ClassResult",
    "ClassSpec",
    "DetectionResult",
    "EvalComparison",
    "EvalOptions",
    "EvalResult",
    "FileProgress",
    "SampleResult",
    "evaluate",
    "evaluate_files",
    "evaluate_many",
    "finish_distributed",
    "init_distributed",
    "parse_names",
    "parse_numbers",
]

DEFAULT_CHUNK_ELEMENTS = 3 << 16
"""Elements per chunk: big enough that per-call overhead vanishes, small enough for the CPU caches
that torch's passes over a chunk share."""

_NATIVE_CHUNK_ELEMENTS = 3 << 18
"""Elements per chunk where the compiled pass reads a chunk once (a CPU device): four times the
torch chunk, so that the per-chunk calls (reads, the side thread's hand-overs) cost less."""

NAN_POLICIES = ("raise", "omit")
DEFAULT_TOP = 10
DEFAULT_CLASS_NAMES = ("non-hit", "hit")

Progress = Callable[[int, int], None]
"""Called after each chunk with (elements done, elements in all) of this process."""

FileProgress = Callable[[int, int, int, int], None]
"""With folders, called after each chunk with (files done, files, bytes done, bytes) of this process."""

init_distributed = _distributed.init_from_env
finish_distributed = _distributed.finish


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassResult:
    """One class's line of the report; the statistics are ``None`` for an empty class.

    The fields, in this order, are the keys of the class's entry in the JSON document.
    """

    name: str
    count: int
    fraction: float | None
    mse: float | None
    rmse: float | None
    mae: float | None
    max_abs_error: float | None
    mean_target: float | None
    mean_pred: float | None
    weight: float
    contribution: float


@dataclass(frozen=True)
class SampleResult:
    """One of the worst samples (dim 0): its index, ACB-MSE and per-class MSE (``None``: no elements);
    with folders, the name of its file, and ``index`` within that file."""

    index: int
    acb_mse: float
    class_mse: tuple[float | None, ...]
    file: str | None = None


@dataclass(frozen=True)
class DetectionResult:
    """The detector "prediction > threshold" against the true hits; a ratio with no cases is ``None``.

    The fields, in this order, are the keys of ``detection`` in the JSON document.
    """

    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    recall: float | None
    precision: float | None
    f1: float | None


@dataclass(frozen=True)
class DenoisingResult:
    """Signal retained and noise removed by "prediction > threshold"; the keys of ``denoising``.

    The signal hits are the target's hits; the noise hits the elements that are hits of the
    network's input (``|input| > hit_threshold``) but not of the target.  ``signal_retained`` is
    the fraction of signal hits detected (the recall), ``noise_removed`` the fraction of noise
    hits not detected; ``None`` where there are none.
    """

    threshold: float
    signal_hits: int
    signal_retained: float | None
    noise_hits: int
    noise_removed: float | None


@dataclass(frozen=True)
class EvalResult:
    """Everything ``acbmse eval`` reports; :meth:`to_dict` is its JSON document."""

    pred: str
    target: str
    elements: int
    classes: tuple[ClassResult, ...]
    mse: float | None
    mae: float | None
    acb_mse: float
    max_abs_error: float | None = None
    mean_target: float | None = None
    mean_pred: float | None = None
    omitted: int | None = None
    detection: DetectionResult | None = None
    masked: int | None = None
    worst_samples: tuple[SampleResult, ...] | None = None
    run: dict[str, Any] | None = None
    denoising: DenoisingResult | None = None
    detection_curve: DetectionCurve | None = None
    figure_stats: ErrorStats | None = field(default=None, repr=False, compare=False)
    figure_bounds: tuple[float, float] | None = field(default=None, repr=False, compare=False)
    """The value range of ``figure_stats.calibration`` (both axes); ``None`` where there are no
    calibration counts (labelled classes, or no figure statistics)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: ``pred``, ``target``, ``elements``, ``classes``, ``mse``, ``mae`` and
        ``acb_mse``; then ``omitted``, ``masked`` (the elements that ``--mask`` left out),
        ``detection`` and ``worst_samples`` when those options were given; and ``run``, the version
        and the options that made it."""
        doc: dict[str, Any] = {
            "pred": self.pred,
            "target": self.target,
            "elements": self.elements,
            "classes": [asdict(c) for c in self.classes],
            "mse": self.mse,
            "mae": self.mae,
            "acb_mse": self.acb_mse,
        }
        if self.omitted is not None:
            doc["omitted"] = self.omitted
        if self.masked is not None:
            doc["masked"] = self.masked
        if self.detection is not None:
            doc["detection"] = asdict(self.detection)
        if self.worst_samples is not None:
            doc["worst_samples"] = [
                {
                    **({} if s.file is None else {"file": s.file}),
                    "index": s.index,
                    "acb_mse": s.acb_mse,
                    "class_mse": {c.name: m for c, m in zip(self.classes, s.class_mse, strict=True)},
                }
                for s in self.worst_samples
            ]
        if self.denoising is not None:
            doc["denoising"] = asdict(self.denoising)
        if self.detection_curve is not None:
            doc["detection_curve"] = _curve_doc(self.detection_curve)
            if self.detection_curve.noise_removed is not None:
                doc["denoising_curve"] = _denoising_curve_doc(self.detection_curve)
        if self.run is not None:
            doc["run"] = self.run
        return doc


def _curve_doc(curve: DetectionCurve) -> dict[str, Any]:
    return {
        "threshold": list(curve.threshold),
        "tp": list(curve.tp),
        "fp": list(curve.fp),
        "fn": list(curve.fn),
        "recall": list(curve.recall),
        "precision": list(curve.precision),
        "f1": list(curve.f1),
        "average_precision": curve.average_precision,
        "best_f1": curve.best_f1(),
    }


def _denoising_curve_doc(curve: DetectionCurve) -> dict[str, Any]:
    assert curve.noise_removed is not None
    return {
        "threshold": list(curve.threshold),
        "signal_hits": curve.signal_hits,
        "signal_retained": list(curve.recall),
        "noise_hits": curve.noise_hits,
        "noise_removed": list(curve.noise_removed),
    }


@dataclass(frozen=True)
class EvalComparison:
    """Several predictions against one target: one :class:`EvalResult` per prediction, in order."""

    target: str
    reports: tuple[EvalResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """``{"target": PATH, "reports": [<each prediction's document>]}``."""
        return {"target": self.target, "reports": [r.to_dict() for r in self.reports]}


# --------------------------------------------------------------------------- options


def parse_numbers(text: str, option: str) -> tuple[float, ...]:
    """``"0.2,1,3"`` -> ``(0.2, 1.0, 3.0)``; :class:`InputError` naming ``option`` otherwise."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = tuple(float(t) for t in items)
    except ValueError:
        raise InputError(f"{option} must be numbers separated by commas, got {text!r}") from None
    return values


def parse_names(text: str, option: str) -> tuple[str, ...]:
    """``"bg,track,shower"`` -> ``("bg", "track", "shower")``."""
    return tuple(t.strip() for t in text.split(","))


@dataclass(frozen=True)
class ClassSpec:
    """The classes of an evaluation: names and weights in label order, and the hit threshold.

    Without labels there are two classes, non-hit (``|target| <= hit_threshold``) and hit;
    with labels (``labelled``) class ``c`` is the elements labelled ``c``.
    """

    names: tuple[str, ...]
    weights: tuple[float, ...]
    hit_threshold: float
    labelled: bool

    @property
    def num_classes(self) -> int:
        return len(self.weights)


@dataclass(frozen=True)
class EvalOptions:
    """Every option of ``acbmse eval`` that shapes the computation, checked once, when built.

    ``None`` means the default, and an option that does not apply is an error: the default
    classes are non-hit (``|target| <= hit_threshold``, default 0) and hit, weighted
    ``nonhit_weight`` and ``hit_weight`` (default 1); with ``labels``, a file of integer
    classes, each class ``c`` has the weight ``class_weights[c]``.

    Attributes:
        pred_key, target_key: the array of an ``.npz`` (or the entry of a dict in a ``.pt``).
        labels: a file of integer labels in ``[0, K)``, the target's shape.
        labels_key: the array of a labels ``.npz`` (or the entry of a dict in a ``.pt``).
        class_names: one name per class, in label order.
        per_sample: also find the ``top`` (default 10) samples (dim 0) with the worst ACB-MSE.
        detect_threshold: also count "prediction > threshold" against the true hits.
        detect_curve: also count them at every threshold of ``thresholds`` (a
            :class:`~acbmse_cli.histograms.ThresholdGrid` or its text ``"START:STOP:N"`` /
            ``"t1,t2,..."``; default: 201 from the hit threshold to the target's largest hit).
        input, input_key: the network's input (the noisy frames, the target's shape): with
            detection, also the noise removed (:class:`DenoisingResult`).
        figure_stats: also count the histograms of the figures (:class:`~acbmse_cli.histograms.ErrorStats`).
        mask, mask_key: a file of the target's shape (and its array); the elements where it is 0
            (False) are left out of everything, as if they were not there (dead pixels, regions
            of no interest).
        skip_unmatched: with folders, leave out the files whose name is not in every folder
            (rather than an error).
        nan_policy: ``"raise"``: NaN or Inf in either file is an error that says how many
            and where the first is; ``"omit"``: leave those elements out.
        device: where the arithmetic runs (``"auto"``, ``"cpu"``, ``"cuda:1"``...).
        chunk_elements: elements per chunk (default :data:`DEFAULT_CHUNK_ELEMENTS`).
        classes: the checked classes (set when built).
        torch_device: the device that ``device`` names (set when built).

    Raises:
        InputError: a bad option, or options that do not go together.
    """

    pred_key: str | None = None
    target_key: str | None = None
    labels: str | os.PathLike[str] | None = None
    labels_key: str | None = None
    hit_threshold: float | None = None
    hit_weight: float | None = None
    nonhit_weight: float | None = None
    class_weights: Sequence[float] | None = None
    class_names: Sequence[str] | None = None
    per_sample: bool = False
    top: int | None = None
    detect_threshold: float | None = None
    nan_policy: str = "raise"
    device: str | torch.device = "cpu"
    chunk_elements: int | None = None
    detect_curve: bool = False
    thresholds: ThresholdGrid | str | None = None
    input: str | os.PathLike[str] | None = None
    input_key: str | None = None
    figure_stats: bool = False
    mask: str | os.PathLike[str] | None = None
    mask_key: str | None = None
    skip_unmatched: bool = False
    classes: ClassSpec = field(init=False, repr=False, compare=False)
    torch_device: torch.device = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("class_weights", "class_names"):  # tuples: the options hash and compare by value
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        with as_input_error():
            classes = _labelled_classes(self) if self.labels is not None else _hit_classes(self)
            _check_outputs(self)
            _check_detection(self)
            if isinstance(self.thresholds, str):
                object.__setattr__(self, "thresholds", ThresholdGrid.parse(self.thresholds))
            device = _eval_device(self.device)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "torch_device", device)

    def run_record(self) -> dict[str, Any]:
        """The version and every option that shaped the numbers (not how the work was chunked)."""
        classes = self.classes
        if classes.labelled:
            class_options: dict[str, Any] = {
                "labels": self.labels,
                "labels_key": self.labels_key,
                "class_weights": classes.weights,
            }
        else:
            class_options = {
                "hit_threshold": classes.hit_threshold,
                "hit_weight": classes.weights[1],
                "nonhit_weight": classes.weights[0],
            }
        record = run_record(
            {
                "pred_key": self.pred_key,
                "target_key": self.target_key,
                **class_options,
                "class_names": classes.names,
                "per_sample": self.per_sample,
                "top": self.top_samples if self.per_sample else None,
                "detect_threshold": self.detect_threshold,
                "nan_policy": self.nan_policy,
                "device": self.torch_device,
            }
        )
        if self.detect_curve:
            record["detect_curve"] = True
            record["thresholds"] = None if self.grid is None else self.grid.describe()
        if self.input is not None:
            record["input"] = os.fspath(self.input)
            record["input_key"] = self.input_key
        if self.mask is not None:
            record["mask"] = os.fspath(self.mask)
            record["mask_key"] = self.mask_key
        return record

    @property
    def grid(self) -> ThresholdGrid | None:
        """The thresholds given for the curve (``None``: the default grid, found from the target)."""
        assert not isinstance(self.thresholds, str)
        return self.thresholds

    @property
    def top_samples(self) -> int:
        """How many worst samples ``per_sample`` lists."""
        return DEFAULT_TOP if self.top is None else self.top

    @property
    def chunk(self) -> int:
        """Elements per chunk of torch's passes (the GPU, or the CPU without the compiled pass)."""
        return DEFAULT_CHUNK_ELEMENTS if self.chunk_elements is None else self.chunk_elements

    def chunk_on(self, device: torch.device) -> int:
        """Elements per chunk of a pass on ``device``."""
        if self.chunk_elements is None and device.type == "cpu" and _native_pass.ENABLED:
            return _NATIVE_CHUNK_ELEMENTS
        return self.chunk

    @property
    def omit(self) -> bool:
        """Whether NaN and Inf elements are left out (rather than an error)."""
        return self.nan_policy == "omit"


def _labelled_classes(options: EvalOptions) -> ClassSpec:
    if options.class_weights is None:
        raise ValueError("--labels needs --class-weights: one weight per class, e.g. 0.2,1,3")
    for option, value in (
        ("--hit-threshold", options.hit_threshold),
        ("--hit-weight", options.hit_weight),
        ("--nonhit-weight", options.nonhit_weight),
        ("--detect-threshold", options.detect_threshold),
        ("--detect-curve", options.detect_curve or None),
        ("--input", options.input),
    ):
        if value is not None:
            raise ValueError(f"{option} has no meaning with --labels: the classes come from the labels file")
    if not options.class_weights:
        raise ValueError("--class-weights must name at least one weight")
    weights = tuple(check_weight("--class-weights", w) for w in options.class_weights)
    names = _class_names(options.class_names, tuple(f"class {c}" for c in range(len(weights))))
    return ClassSpec(names, weights, hit_threshold=0.0, labelled=True)


def _hit_classes(options: EvalOptions) -> ClassSpec:
    if options.labels_key is not None:
        raise ValueError("--labels-key needs --labels: it picks the array of a labels .npz or .pt")
    if options.class_weights is not None:
        raise ValueError(
            "--class-weights needs --labels; for hits and non-hits use --hit-weight/--nonhit-weight"
        )
    threshold = _check_threshold("--hit-threshold", _or(options.hit_threshold, 0.0), signed=False)
    weights = (
        check_weight("--nonhit-weight", _or(options.nonhit_weight, 1.0)),
        check_weight("--hit-weight", _or(options.hit_weight, 1.0)),
    )
    names = _class_names(options.class_names, DEFAULT_CLASS_NAMES)
    return ClassSpec(names, weights, hit_threshold=threshold, labelled=False)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _class_names(given: Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if given is None:
        return default
    names = tuple(given)
    if len(names) != len(default):
        raise ValueError(f"--class-names must give {len(default)} names, one per class, got {len(names)}")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"--class-names must be distinct and non-empty, got {','.join(names)!r}")
    return names


def _check_outputs(options: EvalOptions) -> None:
    """The options of what is reported besides the classes, and how the files are read."""
    if options.top is not None:
        if not options.per_sample:
            raise ValueError("--top needs --per-sample")
        _check_count("--top", options.top)
    if options.detect_threshold is not None:
        _check_threshold("--detect-threshold", options.detect_threshold, signed=True)
    if options.nan_policy not in NAN_POLICIES:
        raise ValueError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {options.nan_policy!r}")
    if options.chunk_elements is not None:
        _check_count("--chunk-elements", options.chunk_elements)


def _check_detection(options: EvalOptions) -> None:
    """Options of hit finding that need another."""
    if options.thresholds is not None and not options.detect_curve:
        raise ValueError("--thresholds needs --detect-curve")
    detecting = options.detect_threshold is not None or options.detect_curve
    if options.input is not None and not detecting:
        raise ValueError(
            "--input needs --detect-threshold or --detect-curve: noise removed is a detection figure"
        )
    if options.input_key is not None and options.input is None:
        raise ValueError("--input-key needs --input")
    if options.mask_key is not None and options.mask is None:
        raise ValueError("--mask-key needs --mask")


def _check_threshold(option: str, value: object, *, signed: bool) -> float:
    """A finite threshold; non-negative unless ``signed``."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        rule = "a finite number" if signed else "finite and non-negative"
        raise ValueError(f"{option} must be {rule}, got {value!r}")
    return check_real(option, value, minimum=None if signed else 0.0)


def _check_count(option: str, value: object) -> int:
    """A whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{option} must be at least 1, got {value!r}")
    return int(value)


def _eval_device(device: str | torch.device) -> torch.device:
    from acbmse_cli.devices import resolve_device

    mps = device.strip().lower() == "mps" if isinstance(device, str) else device.type == "mps"
    if mps:
        raise ValueError("--device mps cannot sum in float64, which eval needs: use cpu or cuda")
    return resolve_device(device) if isinstance(device, str) else device


def _rank_device(device: torch.device, rank: int, world: int) -> torch.device:
    """The device of this rank: a CUDA device without an index means one GPU per local rank."""
    if str(device) == "cuda" and world > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return device


# --------------------------------------------------------------------------- statistics of a chunk


def _chunk_class_stats(
    x: torch.Tensor,
    y: torch.Tensor,
    lab: torch.Tensor | None,
    classes: ClassSpec,
    *,
    per_sample: bool,
    keep: torch.Tensor | None = None,
) -> ClassStats:
    """:func:`acbmse_cli.loss.class_stats`, extended and in float64, as a :class:`ClassStats`."""
    return class_stats(
        x,
        y,
        hit_threshold=classes.hit_threshold,
        labels=lab,
        num_classes=classes.num_classes if lab is not None else None,
        per_sample=per_sample,
        dtype=torch.float64,
        extended=True,
        mask=keep,
    )


def _extended(stats: ClassStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The extended fields: ``sae``, ``max_abs_error``, ``sum_target``, ``sum_input``."""
    sae, max_abs, sum_target, sum_input = stats.sae, stats.max_abs_error, stats.sum_target, stats.sum_input
    assert sae is not None and max_abs is not None and sum_target is not None and sum_input is not None
    return sae, max_abs, sum_target, sum_input


@dataclass(frozen=True)
class _NonFinite:
    """NaN and Inf values in some elements: how many in pred and target, the first flat index of
    each (the array's size where there is none), and how many elements have one or the other."""

    counts: tuple[int, int]
    first: tuple[int, int]
    omitted: int


@dataclass
class _ChunkResult:
    """What one chunk adds to the sums."""

    start: int
    stop: int
    rows: bool  # whole samples (stats per sample) or not (stats pooled)
    stats: ClassStats
    nonfinite: _NonFinite | None = None
    detection: DetectionStats | None = None  # at --detect-threshold
    curve: DetectionStats | None = None  # at every threshold of the curve's grid
    figures: ErrorStats | None = None
    masked: int = 0  # elements that the mask left out
    # the detection and figure counts, still being worked out on the side thread
    counting: Future[_Counts] | None = None


@dataclass(frozen=True)
class _Counts:
    """The histogram counts of one chunk: detection, curve and figure statistics (``None``: not asked)."""

    detection: DetectionStats | None = None
    curve: DetectionStats | None = None
    figures: ErrorStats | None = None


@dataclass(frozen=True)
class _Plan:
    """What is counted besides the classes, decided before the pass: the detection threshold as a
    grid of one, the curve's grid, and the value range of the calibration figure."""

    fixed: ThresholdGrid | None = None
    curve: ThresholdGrid | None = None
    bounds: tuple[float, float] | None = None


@dataclass
class _Chunk:
    """The values of one chunk: prediction, target, labels, the network's input, and the mask
    (True: keep; ``None``: keep everything)."""

    x: torch.Tensor
    y: torch.Tensor
    lab: torch.Tensor | None
    noisy: torch.Tensor | None
    keep: torch.Tensor | None = None

    def rows(self, n_rows: int) -> _Chunk:
        """The same values as ``(n_rows, -1)`` views."""
        return self._map(lambda v: v.reshape(n_rows, -1))

    def kept(self, keep: torch.Tensor) -> _Chunk:
        """The elements where ``keep`` is True (all of them kept)."""
        kept = self._map(lambda v: v[keep])
        kept.keep = None
        return kept

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Chunk:
        def opt(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else fn(v)

        return _Chunk(fn(self.x), fn(self.y), opt(self.lab), opt(self.noisy), opt(self.keep))


class _ChunkComputer:
    """Turns the values of one chunk into its :class:`_ChunkResult`: the statistics of its classes
    (per sample where the chunk holds whole samples), its NaN and Inf values, its detection counts."""

    def __init__(self, options: EvalOptions, inputs: _Inputs, plan: _Plan, pred: ArraySource) -> None:
        self.classes = options.classes
        self.per_sample = options.per_sample
        self.omit = options.omit
        self.plan = plan
        self.inputs = inputs
        self.pred = pred
        self.row_size = inputs.row_size
        # Integers and bools are finite: only floating-point files need the check.
        self.check_finite = any(s.dtype.startswith(("float", "bfloat")) for s in (pred, inputs.target))
        self.side: ThreadPoolExecutor | None = None  # where the histograms are counted, if not here
        self.into: _Totals | None = None  # the totals that the compiled pass adds to, on the side

    @property
    def counts_histograms(self) -> bool:
        """Whether a chunk has histograms to count (detection, curve or figures)."""
        plan = self.plan
        return plan.fixed is not None or plan.curve is not None or plan.bounds is not None

    def compute(self, start: int, stop: int, chunk: _Chunk) -> _ChunkResult:
        """The statistics of elements ``[start, stop)``, whose values are ``chunk``."""
        if chunk.lab is not None and chunk.lab.device.type != "cpu":  # class_stats checks on the CPU only
            self._check_label_range(chunk.lab if chunk.keep is None else chunk.lab[chunk.keep], start)
        rows = self.per_sample and start % self.row_size == 0 and (stop - start) % self.row_size == 0
        if rows:  # whole samples: one group each
            chunk = chunk.rows((stop - start) // self.row_size)
        x, y, lab, mask = chunk.x, chunk.y, chunk.lab, chunk.keep
        stats = self._class_stats(x, y, lab, start, per_sample=rows, keep=mask)
        result = _ChunkResult(start, stop, rows, stats, masked=0 if mask is None else int((~mask).sum()))
        # A NaN or Inf in either file makes its class's sum of targets or of predictions
        # non-finite: the sums show whether the chunk needs a closer look, at no cost.
        if self.check_finite and not _sums_are_finite(result.stats):
            found = self._find_nonfinite(x, y, start, mask)
            if found is not None:  # else finite values whose sums overflowed: nothing to leave out
                keep, result.nonfinite = found
                if not self.omit:
                    return result  # the run ends in an error; only the counts matter now
                result.stats = self._omit(x, y, lab, keep, result.stats, start, rows=rows)
                chunk = chunk.kept(keep)
        if chunk.keep is not None:
            chunk = chunk.kept(chunk.keep)
        self._count_detection(result, chunk)
        return result

    def _count_detection(self, result: _ChunkResult, chunk: _Chunk) -> None:
        if not self.counts_histograms:
            return
        if self.side is not None:
            adders = self._adders(chunk)
            if adders is None:
                result.counting = self.side.submit(self._counts, chunk)
            else:
                result.counting = self.side.submit(_run_adders, adders)
            return
        counts = self._counts(chunk)
        result.detection, result.curve, result.figures = counts.detection, counts.curve, counts.figures

    def _adders(self, chunk: _Chunk) -> list[Callable[[], None]] | None:
        """The chunk's detection counts as calls of the compiled pass that add them into the totals,
        made ready here so that the side thread holds the GIL for next to no time (which the
        reading and the class sums on this thread then wait for); ``None`` where they cannot be
        (figures, or the pass does not apply)."""
        plan, into, threshold = self.plan, self.into, self.classes.hit_threshold
        if into is None or plan.bounds is not None or not _native_pass.applies(chunk.x, chunk.y, chunk.noisy):
            return None
        pairs = ((plan.fixed, into.detection), (plan.curve, into.curve))
        return [
            detection_adder(stats, chunk.x, chunk.y, grid, hit_threshold=threshold, noisy=chunk.noisy)
            for grid, stats in pairs
            if grid is not None and stats is not None
        ]

    def _counts(self, chunk: _Chunk) -> _Counts:
        plan, threshold = self.plan, self.classes.hit_threshold
        with torch.inference_mode():  # also on the side thread, where the mode is not inherited
            fixed, curve = (
                None
                if grid is None
                else detection_stats(chunk.x, chunk.y, grid, hit_threshold=threshold, noisy=chunk.noisy)
                for grid in (plan.fixed, plan.curve)
            )
            figures = None
            if plan.bounds is not None:
                if chunk.lab is None:
                    hit = hit_mask(chunk.y, threshold)
                    classes, num = hit.to(torch.int64), 2
                else:
                    hit, classes, num = None, chunk.lab.to(torch.int64), self.classes.num_classes
                figures = error_stats(chunk.x, chunk.y, classes, num, plan.bounds, hit=hit)
        return _Counts(fixed, curve, figures)

    def _class_stats(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lab: torch.Tensor | None,
        start: int,
        *,
        per_sample: bool,
        keep: torch.Tensor | None = None,
    ) -> ClassStats:
        try:
            return _chunk_class_stats(x, y, lab, self.classes, per_sample=per_sample, keep=keep)
        except ValueError as exc:
            if lab is None:
                raise
            # the first label out of range that the mask keeps (0 is in range)
            raise self._label_error(lab if keep is None else torch.where(keep, lab, 0), start) from exc

    def _find_nonfinite(
        self, x: torch.Tensor, y: torch.Tensor, start: int, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, _NonFinite] | None:
        """Where both values are finite and the mask keeps them (``keep``), and the NaN and Inf
        values that it keeps; None if there are none."""
        finite_x, finite_y = torch.isfinite(x), torch.isfinite(y)
        if mask is not None:  # a NaN that the mask leaves out is not there
            finite_x, finite_y = finite_x | ~mask, finite_y | ~mask
        keep = finite_x & finite_y
        if bool(keep.all()):
            return None
        if mask is not None:
            keep &= mask
        bad_x, bad_y = ~finite_x.reshape(-1), ~finite_y.reshape(-1)
        counts = (int(bad_x.sum()), int(bad_y.sum()))
        first = (
            start + int(torch.argmax(bad_x.to(torch.uint8))) if counts[0] else self.pred.size,
            start + int(torch.argmax(bad_y.to(torch.uint8))) if counts[1] else self.inputs.target.size,
        )
        return keep, _NonFinite(counts, first, omitted=int((~(finite_x & finite_y)).sum()))

    def _omit(
        self, x: torch.Tensor, y: torch.Tensor, lab: torch.Tensor | None, keep: torch.Tensor,
        stats: ClassStats, start: int, *, rows: bool,
    ) -> ClassStats:  # fmt: skip
        """The chunk's statistics without the elements where ``keep`` is False."""
        if not rows:
            return self._class_stats(
                x[keep], y[keep], None if lab is None else lab[keep], start, per_sample=False
            )
        bad_rows = [int(r) for r in (~keep.all(dim=1)).nonzero().reshape(-1)]
        parts = [
            self._class_stats(
                x[r][keep[r]],
                y[r][keep[r]],
                None if lab is None else lab[r][keep[r]],
                start,
                per_sample=False,
            )
            for r in bad_rows
        ]
        return stats.replace_rows(bad_rows, parts)

    def _check_label_range(self, lab: torch.Tensor, start: int) -> None:
        low, high = (int(v) for v in torch.aminmax(lab))
        if low < 0 or high >= self.classes.num_classes:
            raise self._label_error(lab, start)

    def _label_error(self, lab: torch.Tensor, start: int) -> InputError:
        labels = self.inputs.labels
        assert labels is not None
        num_classes = self.classes.num_classes
        bad = ((lab < 0) | (lab >= num_classes)).reshape(-1)
        offset = int(torch.argmax(bad.to(torch.uint8)))
        value = int(lab.reshape(-1)[offset])
        return InputError(
            f"{labels.name}: label {value} at index {_label_index(labels.shape, start + offset)} is outside "
            f"0..{num_classes - 1} (--class-weights names {num_classes} classes)"
        )


def _sums_are_finite(stats: ClassStats) -> bool:
    """Whether the sums of targets and of predictions are finite (one read-back)."""
    _, _, sum_target, sum_input = _extended(stats)
    return math.isfinite(float(sum_input.sum() + sum_target.sum()))


def _label_index(shape: tuple[int, ...], flat: int) -> tuple[int, ...] | int:
    if not shape:
        return ()
    if len(shape) == 1:
        return flat
    return tuple(int(i) for i in np.unravel_index(flat, shape))


# --------------------------------------------------------------------------- adding up


@dataclass
class _TopK:
    """The K samples with the largest ACB-MSE so far, ties broken by the lower index."""

    k: int
    loss: torch.Tensor
    index: torch.Tensor
    count: torch.Tensor
    sse: torch.Tensor

    @classmethod
    def empty(cls, k: int, num_classes: int) -> _TopK:
        return cls(
            k,
            torch.empty(0, dtype=torch.float64),
            torch.empty(0, dtype=torch.int64),
            torch.empty(0, num_classes, dtype=torch.int64),
            torch.empty(0, num_classes, dtype=torch.float64),
        )

    def offer(self, loss: torch.Tensor, index: torch.Tensor, count: torch.Tensor, sse: torch.Tensor) -> None:
        loss, index = torch.cat([self.loss, loss.cpu()]), torch.cat([self.index, index.cpu()])
        count, sse = torch.cat([self.count, count.cpu()]), torch.cat([self.sse, sse.cpu()])
        by_index = torch.argsort(index, stable=True)
        by_loss = torch.sort(loss[by_index], descending=True, stable=True).indices
        keep = by_index[by_loss][: self.k]
        self.loss, self.index, self.count, self.sse = loss[keep], index[keep], count[keep], sse[keep]

    def gathered(self) -> _TopK:
        """The K worst of all ranks, on every rank."""
        parts = _distributed.gather_objects((self.loss, self.index, self.count, self.sse))
        top = _TopK.empty(self.k, self.count.shape[1])
        for loss, index, count, sse in parts:
            top.offer(loss, index, count, sse)
        return top


@dataclass
class _Totals:
    """What one process adds up over its chunks."""

    stats: ClassStats
    detection: DetectionStats | None
    top: _TopK | None
    first_bad: tuple[int, int]  # first flat index of a NaN/Inf value in pred, in target (size: none)
    nonfinite: tuple[int, int] = (0, 0)  # how many in pred, in target
    omitted: int = 0
    curve: DetectionStats | None = None
    figures: ErrorStats | None = None
    masked: int = 0

    @classmethod
    def zeros(
        cls, options: EvalOptions, plan: _Plan, device: torch.device, *, first_bad: tuple[int, int]
    ) -> _Totals:
        """Nothing added up yet."""
        num_classes, noise = options.classes.num_classes, options.input is not None
        return cls(
            stats=ClassStats.zeros(num_classes, device=device),
            detection=None
            if plan.fixed is None
            else DetectionStats.zeros(plan.fixed, noise=noise, device=device),
            top=_TopK.empty(options.top_samples, num_classes) if options.per_sample else None,
            first_bad=first_bad,
            curve=None
            if plan.curve is None
            else DetectionStats.zeros(plan.curve, noise=noise, device=device),
            figures=None if plan.bounds is None else ErrorStats.zeros(num_classes, device=device),
        )

    def add_nonfinite(self, found: _NonFinite) -> None:
        self.nonfinite = (self.nonfinite[0] + found.counts[0], self.nonfinite[1] + found.counts[1])
        self.first_bad = (min(self.first_bad[0], found.first[0]), min(self.first_bad[1], found.first[1]))
        self.omitted += found.omitted

    def all_reduce(self) -> _Totals:
        """The totals of all ranks, on every rank."""
        counts = _distributed.all_reduce(
            torch.tensor([*self.nonfinite, self.omitted, self.masked], dtype=torch.int64)
        )
        first_bad = _distributed.all_reduce(torch.tensor(self.first_bad, dtype=torch.int64), "min")
        return _Totals(
            stats=self.stats.to("cpu").all_reduce(),
            detection=None if self.detection is None else self.detection.to("cpu").all_reduce(),
            top=None if self.top is None else self.top.gathered(),
            curve=None if self.curve is None else self.curve.to("cpu").all_reduce(),
            figures=None if self.figures is None else self.figures.to("cpu").all_reduce(),
            nonfinite=(int(counts[0]), int(counts[1])),
            first_bad=(int(first_bad[0]), int(first_bad[1])),
            omitted=int(counts[2]),
            masked=int(counts[3]),
        )


class _Accumulator:
    """Adds up the chunks' results in chunk order, and keeps the running per-sample ranking."""

    def __init__(self, options: EvalOptions, inputs: _Inputs, plan: _Plan, pred: ArraySource) -> None:
        self.weights = options.classes.weights
        self.per_sample = options.per_sample
        self.omit = options.omit
        self.row_size = inputs.row_size
        self.noise, self.device = options.input is not None, inputs.device
        self.totals = _Totals.zeros(options, plan, inputs.device, first_bad=(pred.size, inputs.target.size))
        self.row_stats: ClassStats | None = None  # the sample being read in parts
        self.counting: Future[_Counts] | None = None  # the last chunk's counts, on the side thread

    def fold(self, result: _ChunkResult) -> None:
        totals = self.totals
        totals.masked += result.masked
        if result.nonfinite is not None:
            totals.add_nonfinite(result.nonfinite)
        if totals.nonfinite != (0, 0) and not self.omit:
            if result.counting is not None:  # not wanted any more: the side thread skips it
                result.counting.cancel()
            return  # the run ends in an error: only the non-finite values are still counted
        # one chunk's counts in flight at a time: the side thread works while the next chunk is read
        self.settle()
        self.counting = result.counting
        self._add_counts(_Counts(result.detection, result.curve, result.figures))
        if not self.per_sample:
            totals.stats = totals.stats + result.stats
        elif result.rows:
            totals.stats = totals.stats + result.stats.pooled()
            self._offer(result.start // self.row_size, result.stats)
        else:
            self._fold_part_of_sample(result)

    def restart_curve(self, plan: _Plan) -> None:
        """Drop the curve's counts so far: the chunks to come are counted on ``plan``'s grid."""
        self.settle()
        assert plan.curve is not None
        self.totals.curve = DetectionStats.zeros(plan.curve, noise=self.noise, device=self.device)

    def settle(self) -> None:
        """Add the counts still being worked out on the side thread."""
        if self.counting is not None:
            counting, self.counting = self.counting, None
            self._add_counts(counting.result())

    def _add_counts(self, counts: _Counts) -> None:
        totals = self.totals
        for name in ("detection", "curve", "figures"):
            part = getattr(counts, name)
            if part is not None:  # in place: the side thread may be adding into the same tensors
                getattr(totals, name).add_(part)

    def _fold_part_of_sample(self, result: _ChunkResult) -> None:
        """Part of one sample: added up until the sample is complete, then ranked."""
        stats = result.stats
        self.totals.stats = self.totals.stats + stats
        self.row_stats = stats if self.row_stats is None else self.row_stats + stats
        if result.stop % self.row_size == 0:
            self._offer(result.start // self.row_size, self.row_stats)
            self.row_stats = None

    def _offer(self, first_row: int, stats: ClassStats) -> None:
        assert self.totals.top is not None
        losses = balanced_loss(stats, self.weights)
        index = torch.arange(first_row, first_row + losses.shape[0], dtype=torch.int64)
        self.totals.top.offer(losses, index, stats.count, stats.sse)


# --------------------------------------------------------------------------- reading


@dataclass
class _Inputs:
    """The open files of one evaluation, read in the same element ranges onto ``device``."""

    preds: tuple[ArraySource, ...]
    target: ArraySource
    labels: ArraySource | None
    noisy: ArraySource | None
    device: torch.device
    mask: ArraySource | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.target.shape

    @property
    def row_size(self) -> int:
        """Elements per sample (dim 0)."""
        return math.prod(self.shape[1:]) if self.shape else 1

    def read_shared(
        self, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Elements ``[start, stop)`` of the target, the labels and the network's input, read once
        for every prediction (some sources are streams: each is read in order)."""
        y = self.target.read(start, stop).to(self.device)
        lab = self.labels.read(start, stop).to(self.device) if self.labels is not None else None
        noisy = self.noisy.read(start, stop).to(self.device) if self.noisy is not None else None
        return y, lab, noisy

    def read_mask(self, start: int, stop: int) -> torch.Tensor | None:
        """Elements ``[start, stop)`` of the mask as booleans, True where nonzero (kept)."""
        return None if self.mask is None else self.mask.read(start, stop).to(self.device) != 0

    def verify(self) -> None:
        """Complete each file's checksum over the bytes the reads left out (see ArraySource.verify)."""
        for source in (*self.preds, self.target, self.labels, self.noisy, self.mask):
            if source is not None:
                source.verify()


@contextlib.contextmanager
def _open_inputs(
    preds: Sequence[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    options: EvalOptions,
    device: torch.device,
) -> Iterator[_Inputs]:
    """The files, checked against each other and the options; closed on leaving."""
    with contextlib.ExitStack() as files:
        t = files.enter_context(open_array(target, key=options.target_key, key_option="--target-key"))
        ps = []
        for pred in preds:
            p = files.enter_context(open_array(pred, key=options.pred_key, key_option="--pred-key"))
            if p.shape != t.shape:
                raise InputError(
                    f"{p.name} has shape {p.shape} but {t.name} has shape {t.shape}: they must match"
                )
            ps.append(p)
        lab = _open_like(files, t, options.labels, options.labels_key, "--labels-key", role="labels")
        noisy = _open_like(files, t, options.input, options.input_key, "--input-key", role="values")
        mask = _open_like(files, t, options.mask, options.mask_key, "--mask-key", role="values")
        if options.per_sample and not t.shape:
            raise InputError(
                f"--per-sample needs a batch dimension (dim 0), but {t.name} is a 0-dimensional array"
            )
        yield _Inputs(tuple(ps), t, lab, noisy, device, mask=mask)


def _open_like(
    files: contextlib.ExitStack,
    target: ArraySource,
    path: str | os.PathLike[str] | None,
    key: str | None,
    key_option: str,
    *,
    role: Any,
) -> ArraySource | None:
    """A file that goes with the target (labels, the network's input), checked to have its shape."""
    if path is None:
        return None
    source = files.enter_context(open_array(path, key=key, key_option=key_option, role=role))
    if source.shape != target.shape:
        what = {"--labels-key": "labels have", "--mask-key": "the mask has"}.get(key_option, "the input has")
        raise InputError(
            f"{source.name}: {what} shape {source.shape} but {target.name} has shape {target.shape}"
        )
    return source


def _stream(
    inputs: _Inputs,
    computers: Sequence[_ChunkComputer],
    accumulators: Sequence[_Accumulator],
    ranges: Iterable[tuple[int, int]],
    progress: Callable[[int], None],
    watch: _GridWatch | None = None,
) -> None:
    """Read, compute and fold every range, on one CPU thread (or the GPU); the histograms of
    detection and figures on a second thread where the machine has a core for it; ``watch``
    widens the curve's grid where a chunk of the target needs it, before the chunk is counted."""
    with _chunk_loop(), _side_thread(inputs, computers) as side:
        for computer, accumulator in zip(computers, accumulators, strict=True):
            computer.side, computer.into = side, accumulator.totals
        for start, stop in ranges:
            y, lab, noisy = inputs.read_shared(start, stop)
            keep = inputs.read_mask(start, stop)
            if watch is not None:
                watch.see(start, y, keep, computers, accumulators)
            for pred, computer, accumulator in zip(inputs.preds, computers, accumulators, strict=True):
                x = pred.read(start, stop).to(inputs.device)
                accumulator.fold(computer.compute(start, stop, _Chunk(x, y, lab, noisy, keep)))
            progress(stop - start)
        for accumulator in accumulators:
            accumulator.settle()


def _run_adders(adders: Sequence[Callable[[], None]]) -> _Counts:
    """Run the compiled counts of a chunk (on the side thread); they are in the totals already."""
    for add in adders:
        add()
    return _Counts()


def _idle_cores() -> int:
    """The cores this process may run on, less one per other process of the job (torchrun)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores - _distributed.world()[1]


@contextlib.contextmanager
def _side_thread(inputs: _Inputs, computers: Sequence[_ChunkComputer]) -> Iterator[ThreadPoolExecutor | None]:
    """A second thread for the histograms of CPU chunks, where a core is free for it and the
    compiled pass counts them (it releases the GIL; torch's own passes would mostly wait on it).

    Reading and the class sums stay on the calling thread; the histograms of a chunk are
    counted on the side while the next chunk is read.  Integer counts: the sums do not depend
    on which thread adds what.  ``None`` where the chunks are counted on the calling thread.
    """
    wanted = any(c.counts_histograms for c in computers) and inputs.device.type == "cpu"
    if not (wanted and _native_pass.ENABLED and _idle_cores() >= 1):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1, initializer=torch.set_num_threads, initargs=(1,)) as side:
        yield side


@contextlib.contextmanager
def _chunk_loop() -> Iterator[None]:
    """How every pass over the chunks runs: one torch thread, recycled temporaries, no autograd.

    One thread: the steps of a chunk are too short for torch's thread team, whose barriers
    stall every step whenever another process holds one of the cores (a pass over the target
    took 2.9 s with two threads against 0.02 s with one, on a machine where another process
    was busy).  More cores: more processes, under torchrun.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _recycled_temporaries(), torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _recycled_temporaries() -> Iterator[None]:
    """Let glibc's malloc reuse the chunks' temporaries instead of mapping fresh pages each time.

    Each chunk allocates a few buffers of some MB.  By default glibc serves blocks that size
    with mmap and unmaps them when freed, and trims the heap above 128 kB: every chunk then
    pays a page fault per 4 kB it touches (a third of the run time here).  Raising both
    thresholds keeps the freed buffers for the next chunk; the defaults come back afterwards.
    """
    import ctypes
    import ctypes.util

    mallopt = None
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    if mallopt is None:
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    try:
        yield
    finally:
        mallopt(m_mmap_threshold, 128 << 10)
        mallopt(m_trim_threshold, 128 << 10)


class _Counter:
    """Counts the elements done and reports (done, total) to a progress callback."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, elements: int) -> None:
        self.done += elements
        if self.progress is not None:
            self.progress(self.done, self.total)


def _rank_rows(inputs: _Inputs) -> tuple[int, int]:
    """The samples (dim 0) of this rank: ``[first, last)``."""
    rank, world = _distributed.world()
    rows = inputs.shape[0] if inputs.shape else 1
    return rows * rank // world, rows * (rank + 1) // world


def _plan_and_accumulate(
    inputs: _Inputs, options: EvalOptions, progress: Progress | None
) -> tuple[_Plan, list[_Totals]]:
    """The plan of the pass, and :func:`_accumulate` under it.  Where the plan needs only the end of
    the curve's default grid, a :class:`_GridWatch` finds it during the pass, not before."""
    if not _GridWatch.applies(options):
        plan = _plan(inputs, options)
        return plan, _accumulate(inputs, options, plan, progress)
    watch = _GridWatch(inputs, options)
    totals = _accumulate(inputs, options, watch.plan, progress, watch)
    return watch.plan, totals


def _accumulate(
    inputs: _Inputs,
    options: EvalOptions,
    plan: _Plan,
    progress: Progress | None,
    watch: _GridWatch | None = None,
) -> list[_Totals]:
    """This rank's share of the samples added up, one total per prediction; under torchrun, all
    the ranks' totals merged."""
    first, last = _rank_rows(inputs)
    accumulators = [_Accumulator(options, inputs, plan, p) for p in inputs.preds]
    computers = [_ChunkComputer(options, inputs, plan, p) for p in inputs.preds]
    ranges = list(chunk_ranges(inputs.shape, _chunk_elements(options, inputs), (first, last)))
    counter = _Counter(progress, (last - first) * inputs.row_size)

    def work() -> None:
        _stream(inputs, computers, accumulators, ranges, counter, watch)
        inputs.verify()  # before any result: a checksum that fails makes the whole run an error

    _on_every_rank(work)
    totals = [a.totals for a in accumulators]
    if watch is not None:
        watch.settle(inputs, totals, ranges)
    if _distributed.world()[1] == 1:
        return totals
    return [t.all_reduce() for t in totals]


class _GridWatch:
    """The curve's default grid, found during the pass instead of in a pass over the target first.

    The grid ends at the target's largest hit, rounded up to a round number.  The first chunk of
    every rank gives a guess; the chunks of the pass widen it, and the counts on the narrower
    grid start again from the next chunk.  At the end the ranks agree on the grid, and the chunks
    that were counted on another grid are counted again (:meth:`settle`).  The result is the same
    as with the grid known in advance; where the first chunk holds a hit in the round band of the
    largest one (targets of a bounded range) each chunk is read once.  A chunk's largest hit is
    found on the side thread where there is one (the reading thread is the one that sets the
    pace), so it widens the grid of a later chunk: that costs a few more chunks counted again.
    """

    @staticmethod
    def applies(options: EvalOptions) -> bool:
        """Whether the largest hit is all the plan needs of the target (no figure bounds)."""
        return options.detect_curve and options.grid is None and not options.figure_stats

    def __init__(self, inputs: _Inputs, options: EvalOptions) -> None:
        self.options = options
        self.low, self.high = math.inf, -math.inf  # of this rank's hits so far
        first, last = _rank_rows(inputs)
        self.counted_from = first * inputs.row_size  # where the counts on the current grid begin
        head = next(iter(chunk_ranges(inputs.shape, _chunk_elements(options, inputs), (first, last))), None)
        if head is not None:
            _on_every_rank(lambda: self._widen(inputs.target.read(*head), inputs.read_mask(*head)))
        low, high = self._merged()  # every rank starts on the same grid
        if low is not None and high is not None:
            self.low, self.high = low, high
        self.plan = _plan_with(options, lambda: (low, high))
        self.largest = self.high  # the largest hit of the current grid
        self.pending: list[Future[tuple[float, float]]] = []  # chunks' extremes, on the side thread

    def _widen(self, y: torch.Tensor, keep: torch.Tensor | None) -> None:
        low, high = _chunk_extremes(y, keep, self.options)
        self.low, self.high = min(self.low, low), max(self.high, high)

    def _merged(self, *, local: bool = False) -> tuple[float | None, float | None]:
        return _merged_extremes(torch.tensor([self.low, self.high], dtype=torch.float64), local=local)

    def see(
        self,
        start: int,
        y: torch.Tensor,
        keep: torch.Tensor | None,
        computers: Sequence[_ChunkComputer],
        accumulators: Sequence[_Accumulator],
    ) -> None:
        """Widen the grid to the hits of the chunks seen so far, from the chunk at ``start`` on."""
        side = computers[0].side if computers else None
        if side is None:
            self._widen(y, keep)
        else:
            self._collect(wait=False)
            self.pending.append(side.submit(_chunk_extremes, y, keep, self.options))
        if not self.high > self.largest:
            return
        self.largest = self.high
        plan = _plan_with(self.options, lambda: self._merged(local=True))
        if plan == self.plan:
            return
        self.plan, self.counted_from = plan, start
        for computer in computers:
            computer.plan = plan
        for accumulator in accumulators:
            accumulator.restart_curve(plan)

    def _collect(self, *, wait: bool) -> None:
        """Widen the extremes by the chunks whose extremes the side thread has found (all: ``wait``)."""
        done = [f for f in self.pending if wait or f.done()]
        for found in done:
            low, high = found.result()
            self.low, self.high = min(self.low, low), max(self.high, high)
        self.pending = [f for f in self.pending if f not in done]

    def settle(self, inputs: _Inputs, totals: Sequence[_Totals], ranges: Sequence[tuple[int, int]]) -> None:
        """Agree on the grid of all ranks, and count again the chunks counted on another one."""
        self._collect(wait=True)
        final = _plan_with(self.options, self._merged)
        redo = [r for r in ranges if final != self.plan or r[0] < self.counted_from]
        if any(t.nonfinite != (0, 0) for t in totals) and not self.options.omit:
            redo = []  # the run ends in an error
        again = _Plan(curve=final.curve)
        accumulators = [_Accumulator(self.options, inputs, again, p) for p in inputs.preds]
        computers = [_ChunkComputer(self.options, inputs, again, p) for p in inputs.preds]
        if redo or _distributed.world()[1] > 1:  # every rank takes part in the agreement on errors
            _on_every_rank(lambda: _stream(inputs, computers, accumulators, redo, lambda _: None))
        for total, accumulator in zip(totals, accumulators, strict=True):
            if final != self.plan:
                total.curve = accumulator.totals.curve
            elif redo:
                assert total.curve is not None and accumulator.totals.curve is not None
                total.curve = total.curve + accumulator.totals.curve
        self.plan = final


def _on_every_rank(work: Callable[[], None]) -> None:
    """Run ``work``; under torchrun an input error on any rank is raised on every rank."""
    if _distributed.world()[1] == 1:
        work()
        return
    error: str | None = None
    try:
        work()
    except InputError as exc:
        error = str(exc)
    error = _agree_on_errors(error)
    if error is not None:
        raise InputError(error)


def _plan(inputs: _Inputs, options: EvalOptions) -> _Plan:
    """The grids and bounds of the pass; the default grid and the figure's bounds come from the
    range of the target's hit values, found in a pass over the target alone (where no
    :class:`_GridWatch` finds it during the pass)."""
    return _plan_with(options, lambda: _hit_range(inputs, options))


def _plan_with(options: EvalOptions, hit_range: Callable[[], tuple[float | None, float | None]]) -> _Plan:
    """:func:`_plan`, the target's hit range found by ``hit_range`` where it is needed."""
    fixed = None if options.detect_threshold is None else ThresholdGrid((float(options.detect_threshold),))
    curve = options.grid if options.detect_curve else None
    needs_range = (options.detect_curve and curve is None) or (
        options.figure_stats and not options.classes.labelled
    )
    low, high = hit_range() if needs_range else (None, None)
    if options.detect_curve and curve is None:
        curve = default_grid(options.classes.hit_threshold, high)
    bounds = calibration_bounds(options.classes.hit_threshold, low, high) if options.figure_stats else None
    return _Plan(fixed, curve, bounds)


def _hit_range(inputs: _Inputs, options: EvalOptions) -> tuple[float | None, float | None]:
    """The smallest and largest finite target value among the hits (``None`` without hits)."""
    rows = _rank_rows(inputs)
    extremes = _no_extremes()
    _on_every_rank(lambda: _scan_hit_range(inputs, options, rows, extremes))
    return _merged_extremes(extremes)


def _no_extremes() -> torch.Tensor:
    return torch.tensor([math.inf, -math.inf], dtype=torch.float64)


def _scan_hit_range(
    inputs: _Inputs, options: EvalOptions, rows: tuple[int, int], extremes: torch.Tensor
) -> None:
    """Widen ``extremes`` (min, max) to the finite target values among the hits of samples ``rows``.

    The smallest is looked for only where the figures need it (``figure_stats``); otherwise it is
    taken to be the largest, and only the largest (the default grid's end) is exact.
    """
    low, high = float(extremes[0]), float(extremes[1])
    with _chunk_loop():
        for start, stop in chunk_ranges(inputs.shape, options.chunk_on(inputs.device), rows):
            found = _chunk_extremes(inputs.target.read(start, stop), inputs.read_mask(start, stop), options)
            low, high = min(low, found[0]), max(high, found[1])
    extremes[0], extremes[1] = low, high


def _chunk_extremes(y: torch.Tensor, keep: torch.Tensor | None, options: EvalOptions) -> tuple[float, float]:
    """The smallest and largest finite hits of ``y`` where ``keep``, as :func:`_scan_hit_range` takes them."""
    threshold = options.classes.hit_threshold
    found = None if keep is not None or options.figure_stats else _largest_hit(y, threshold)
    return _hit_extremes(y, threshold, keep) if found is None else found


def _largest_hit(y: torch.Tensor, threshold: float) -> tuple[float, float] | None:
    """The largest value of ``y`` twice, where it is finite and a hit (then the largest hit); else
    ``None``: one reduction, against the passes of :func:`_hit_extremes`."""
    if not y.numel() or not y.is_floating_point():
        return None
    top = float(y.amax())
    return (top, top) if math.isfinite(top) and top > threshold else None


def _hit_extremes(y: torch.Tensor, threshold: float, keep: torch.Tensor | None) -> tuple[float, float]:
    """The smallest and largest finite hit values of ``y`` (``inf``, ``-inf`` without any)."""
    hits = hit_mask(y, threshold)
    if keep is not None:
        hits &= keep.to(hits.device)
    values = y[hits]
    values = values[torch.isfinite(values)].to(torch.float64)
    if not values.numel():
        return math.inf, -math.inf
    low, high = torch.aminmax(values)
    return float(low), float(high)


def _merged_extremes(extremes: torch.Tensor, *, local: bool = False) -> tuple[float | None, float | None]:
    """The extremes of all ranks, or of this one with ``local`` (``None`` without hits)."""
    if not local and _distributed.world()[1] > 1:
        extremes = torch.cat(
            [_distributed.all_reduce(extremes[:1], "min"), _distributed.all_reduce(extremes[1:], "max")]
        )
    low, high = float(extremes[0]), float(extremes[1])
    return (low, high) if math.isfinite(low) else (None, None)


def _chunk_elements(options: EvalOptions, inputs: _Inputs) -> int:
    """Elements per chunk, fewer with ``per_sample`` and many classes: a chunk of whole samples holds
    ``(samples, K)`` statistics, kept to about the size of a torch chunk whatever K is."""
    chunk = options.chunk_on(inputs.device)
    if not options.per_sample:
        return chunk
    samples = max(1, options.chunk // options.classes.num_classes)
    return min(chunk, samples * max(inputs.row_size, 1))


def _agree_on_errors(error: str | None) -> str | None:
    """The first rank's error, if any rank had one, on every rank (so that none waits for the others)."""
    errors = _distributed.gather_objects(error)
    return next((e for e in errors if e is not None), None)


# --------------------------------------------------------------------------- the entry points


def evaluate(
    pred: str | os.PathLike[str],
    target: str | os.PathLike[str],
    options: EvalOptions,
    *,
    progress: Progress | None = None,
) -> EvalResult:
    """Per-class error statistics of a prediction file against a target file.

    The files (``.npy``, ``.npz`` or ``.pt``, of the same shape) are read in chunks of
    ``options.chunk`` elements, never whole, and the statistics are summed in float64.

    Args:
        pred, target: the files.
        options: the classes and everything else that shapes the computation.
        progress: called after each chunk with (elements done, elements in all).

    Raises:
        InputError: a bad file, or NaN/Inf under ``nan_policy="raise"``.
    """
    return evaluate_many([pred], target, options, progress=progress).reports[0]


def evaluate_many(
    preds: Sequence[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    options: EvalOptions,
    *,
    progress: Progress | None = None,
    file_progress: FileProgress | None = None,
) -> EvalComparison:
    """:func:`evaluate` of several predictions against one target, in one pass: each chunk of
    the target (and of the labels and the network's input) is read once for all of them.  Each
    report equals what :func:`evaluate` gives for its prediction alone.

    The paths may also be folders, all of them (the predictions, the target and the labels,
    input and mask files where given): then the files of the same name in every folder are
    evaluated as one data set, their statistics summed as if the arrays of the files, in
    file-name order, were concatenated along dim 0 (files of different names may have
    different shapes).  A name missing from a folder is an error, or is left out with
    ``options.skip_unmatched``; the worst samples name their file; under torchrun the ranks
    share the files, whole; ``file_progress`` is called after each chunk with (files done,
    files, bytes done, bytes) of this process.

    Raises:
        InputError: a bad file, or NaN/Inf under ``nan_policy="raise"``.
    """
    if not preds:
        raise InputError("eval needs at least one prediction file")
    if are_folders(_group_paths(preds, target, options)):
        return _evaluate_folders(preds, target, options, progress, file_progress)
    if options.skip_unmatched:
        raise InputError("--skip-unmatched needs folders: it leaves out the files not in every folder")
    rank, world = _distributed.world()
    device = _rank_device(options.torch_device, rank, world)
    with _open_inputs(preds, target, options, device) as inputs:
        plan, totals = _plan_and_accumulate(inputs, options, progress)
        if not options.omit:
            for t, source in zip(totals, inputs.preds, strict=True):
                _raise_on_nonfinite(t, (source, inputs.target))
        reports = tuple(
            _summarize(t, options, plan, pred=str(path), target=str(target))
            for t, path in zip(totals, preds, strict=True)
        )
    return EvalComparison(str(target), reports)


def evaluate_files(
    pred: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    pred_key: str | None = None,
    target_key: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    labels_key: str | None = None,
    hit_threshold: float | None = None,
    hit_weight: float | None = None,
    nonhit_weight: float | None = None,
    class_weights: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    per_sample: bool = False,
    top: int | None = None,
    detect_threshold: float | None = None,
    nan_policy: str = "raise",
    device: str | torch.device = "cpu",
    chunk_elements: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """:func:`evaluate` with the options of :class:`EvalOptions` as keywords.

    Raises:
        InputError: a bad file or option, or NaN/Inf under ``nan_policy="raise"``.
    """
    options = EvalOptions(
        pred_key=pred_key,
        target_key=target_key,
        labels=labels,
        labels_key=labels_key,
        hit_threshold=hit_threshold,
        hit_weight=hit_weight,
        nonhit_weight=nonhit_weight,
        class_weights=class_weights,
        class_names=class_names,
        per_sample=per_sample,
        top=top,
        detect_threshold=detect_threshold,
        nan_policy=nan_policy,
        device=device,
        chunk_elements=chunk_elements,
    )
    return evaluate(pred, target, options, progress=progress)


# --------------------------------------------------------------------------- the report


def _summarize(totals: _Totals, options: EvalOptions, plan: _Plan, *, pred: str, target: str) -> EvalResult:
    stats = totals.stats.to("cpu")
    sae, max_abs, sum_target, sum_input = _extended(stats)
    elements = int(stats.count.sum())
    if elements == 0 and totals.masked:
        raise InputError(
            f"{pred} vs {target}: nothing left to score: --mask left out {totals.masked:,} elements "
            f"and NaN/Inf values {totals.omitted:,} more"
        )
    if elements == 0:  # a score of 0 here would pass any gate on a file of nothing but NaN
        raise InputError(
            f"{pred} vs {target}: every element ({totals.omitted:,}) was NaN/Inf in one file "
            "or the other and was omitted (--nan-policy omit): nothing left to score"
        )
    classes = options.classes
    return EvalResult(
        pred=pred,
        target=target,
        elements=elements,
        classes=tuple(_class_result(stats, c, classes, elements) for c in range(classes.num_classes)),
        mse=float(stats.sse.sum()) / elements,
        mae=float(sae.sum()) / elements,
        acb_mse=float(balanced_loss(stats, classes.weights)[0]),
        max_abs_error=float(max_abs.max()),
        mean_target=float(sum_target.sum()) / elements,
        mean_pred=float(sum_input.sum()) / elements,
        omitted=totals.omitted if options.omit else None,
        masked=totals.masked if options.mask is not None else None,
        detection=_detection_result(totals.detection, plan.fixed),
        worst_samples=None if totals.top is None else _worst_samples(totals.top),
        run=_run_record(options, plan),
        denoising=_denoising_result(totals.detection, plan.fixed),
        detection_curve=None
        if totals.curve is None or plan.curve is None
        else detection_curve(totals.curve, plan.curve),
        figure_stats=totals.figures,
        figure_bounds=None if classes.labelled or totals.figures is None else plan.bounds,
    )


def _run_record(options: EvalOptions, plan: _Plan) -> dict[str, Any]:
    record = options.run_record()
    if plan.curve is not None:
        record["thresholds"] = plan.curve.describe()
    return record


def _raise_on_nonfinite(totals: _Totals, sources: tuple[ArraySource, ArraySource]) -> None:
    if totals.nonfinite == (0, 0):
        return
    parts = []
    for source, n, first in zip(sources, totals.nonfinite, totals.first_bad, strict=True):
        if n:
            where = tuple(int(i) for i in np.unravel_index(first, source.shape)) if source.shape else ()
            values = f"{n} NaN/Inf value{'s' if n > 1 else ''}"
            parts.append(f"{source.name}: {values}, the first at index {_fmt_index(where)}")
    raise InputError("; ".join(parts) + " (--nan-policy omit leaves them out)")


def _class_result(stats: ClassStats, c: int, classes: ClassSpec, elements: int) -> ClassResult:
    """Class ``c``'s line; its contribution is the formula on this class alone (zero weights on
    the others would turn an infinite SSE there into NaN here: 0 * inf)."""
    name, weight = classes.names[c], classes.weights[c]
    n = int(stats.count[0, c])
    if n == 0:
        return ClassResult(name, 0, 0.0, None, None, None, None, None, None, weight, 0.0)
    sae, max_abs, sum_target, sum_input = _extended(stats)
    mse = float(stats.sse[0, c]) / n
    return ClassResult(
        name=name,
        count=n,
        fraction=n / elements,
        mse=mse,
        rmse=math.sqrt(mse),
        mae=float(sae[0, c]) / n,
        max_abs_error=float(max_abs[0, c]),
        mean_target=float(sum_target[0, c]) / n,
        mean_pred=float(sum_input[0, c]) / n,
        weight=weight,
        contribution=float(balanced_loss(stats.select(slice(c, c + 1)), [weight])[0]),
    )


def _detection_result(stats: DetectionStats | None, grid: ThresholdGrid | None) -> DetectionResult | None:
    if stats is None or grid is None:
        return None
    curve = detection_curve(stats, grid)
    return DetectionResult(
        threshold=grid.values[0],
        true_positives=curve.tp[0],
        false_positives=curve.fp[0],
        false_negatives=curve.fn[0],
        recall=curve.recall[0],
        precision=curve.precision[0],
        f1=curve.f1[0],
    )


def _denoising_result(stats: DetectionStats | None, grid: ThresholdGrid | None) -> DenoisingResult | None:
    if stats is None or grid is None or stats.noise is None:
        return None
    curve = detection_curve(stats, grid)
    assert curve.noise_hits is not None and curve.noise_removed is not None
    return DenoisingResult(
        threshold=grid.values[0],
        signal_hits=curve.signal_hits,
        signal_retained=curve.recall[0],
        noise_hits=curve.noise_hits,
        noise_removed=curve.noise_removed[0],
    )


def _worst_samples(top: _TopK) -> tuple[SampleResult, ...]:
    def class_mse(i: int, c: int) -> float | None:
        n = int(top.count[i, c])
        return float(top.sse[i, c]) / n if n else None

    return tuple(
        SampleResult(
            index=int(top.index[i]),
            acb_mse=float(top.loss[i]),
            class_mse=tuple(class_mse(i, c) for c in range(top.count.shape[1])),
        )
        for i in range(top.index.shape[0])
    )


def _fmt_index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, index)) + ("," if len(index) == 1 else "") + ")"


# --------------------------------------------------------------------------- folders of per-frame files

_FILE_STRIDE = 1 << 40
"""With folders, a worst sample's index while ranking: its file's number times this, plus its index
in the file (ties then go to the earlier file, as in the concatenation)."""


def _group_paths(
    preds: Sequence[str | os.PathLike[str]], target: str | os.PathLike[str], options: EvalOptions
) -> list[str | os.PathLike[str]]:
    """The predictions, the target, then the labels, input and mask where given."""
    extra = (options.labels, options.input, options.mask)
    return [*preds, target, *(p for p in extra if p is not None)]


def _group_options(options: EvalOptions, group: FileGroup, n_preds: int) -> EvalOptions:
    """The options of one file group: its own labels, input and mask files."""
    extra = iter(group.paths[n_preds + 1 :])
    labels, noisy, mask = (
        None if getattr(options, n) is None else next(extra) for n in ("labels", "input", "mask")
    )
    if labels is None and noisy is None and mask is None:
        return options
    return dataclasses.replace(options, labels=labels, input=noisy, mask=mask)


def _all_rows(inputs: _Inputs) -> tuple[int, int]:
    return 0, inputs.shape[0] if inputs.shape else 1


def _evaluate_folders(
    preds: Sequence[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    options: EvalOptions,
    progress: Progress | None,
    file_progress: FileProgress | None,
) -> EvalComparison:
    """:func:`evaluate_many` of folders: each rank adds up its share of the file groups."""
    folders = match_folders(_group_paths(preds, target, options), skip_unmatched=options.skip_unmatched)
    rank, world = _distributed.world()
    device = _rank_device(options.torch_device, rank, world)
    share = [folders.groups[i] for i in share_by_size(folders.groups, world)[rank]]
    numbers = {g.name: i for i, g in enumerate(folders.groups)}
    job = _FolderJob(options, len(preds), device, share, numbers)
    plan = _plan_with(options, job.hit_range)
    counter = _FileCounter(progress, file_progress, len(share), sum(g.size for g in share))
    totals = job.totals(plan, counter)
    reports = tuple(
        _folder_report(_summarize(t, options, plan, pred=str(p), target=str(target)), folders, options)
        for t, p in zip(totals, preds, strict=True)
    )
    return EvalComparison(str(target), reports)


def _folder_report(report: EvalResult, folders: FolderSet, options: EvalOptions) -> EvalResult:
    """The report of folders: each worst sample's file and its index there; the files counted."""
    worst = report.worst_samples
    if worst is not None:
        worst = tuple(
            dataclasses.replace(
                s, index=s.index % _FILE_STRIDE, file=folders.groups[s.index // _FILE_STRIDE].name
            )
            for s in worst
        )
    run = {**(report.run or {}), "skip_unmatched": options.skip_unmatched}
    run.update(files=len(folders.groups), skipped=folders.skipped)
    return dataclasses.replace(report, worst_samples=worst, run=run)


class _FileCounter:
    """Counts the files and bytes done (a file's bytes in proportion to its elements done)."""

    def __init__(
        self, progress: Progress | None, file_progress: FileProgress | None, files: int, size: int
    ) -> None:
        self.progress, self.file_progress = progress, file_progress
        self.files, self.size = files, size
        self.files_done, self.bytes_done = 0, 0
        self.file_size, self.file_elements, self.elements_done = 0, 1, 0

    def start(self, size: int, elements: int) -> None:
        self.file_size, self.file_elements, self.elements_done = size, max(elements, 1), 0

    def __call__(self, elements: int) -> None:
        self.elements_done += elements
        self._report(self.bytes_done + self.file_size * self.elements_done // self.file_elements)

    def finish(self) -> None:
        self.files_done += 1
        self.bytes_done += self.file_size
        self._report(self.bytes_done)

    def _report(self, done: int) -> None:
        if self.file_progress is not None:
            self.file_progress(self.files_done, self.files, done, self.size)
        elif self.progress is not None:
            self.progress(done, self.size)


@dataclass
class _FolderJob:
    """One rank's share of the file groups of folders, and how to open and add up each."""

    options: EvalOptions
    n_preds: int
    device: torch.device
    share: list[FileGroup]
    numbers: dict[str, int]  # each group's place in the whole set

    @contextlib.contextmanager
    def open(self, group: FileGroup, *, preds: bool = True) -> Iterator[_Inputs]:
        paths = group.paths[: self.n_preds] if preds else ()
        options = _group_options(self.options, group, self.n_preds)
        with _open_inputs(paths, group.paths[self.n_preds], options, self.device) as inputs:
            yield inputs

    def hit_range(self) -> tuple[float | None, float | None]:
        """The range of the hit values of every target file of every rank."""
        extremes = _no_extremes()

        def scan() -> None:
            for group in self.share:
                with self.open(group, preds=False) as inputs:
                    _scan_hit_range(inputs, self.options, _all_rows(inputs), extremes)

        _on_every_rank(scan)
        return _merged_extremes(extremes)

    def totals(self, plan: _Plan, counter: _FileCounter) -> list[_Totals]:
        """Every group of this rank added up, one total per prediction; under torchrun, all the
        ranks' totals merged."""
        device = self.device
        sums = [_Totals.zeros(self.options, plan, device, first_bad=(0, 0)) for _ in range(self.n_preds)]

        def work() -> None:
            for group in self.share:
                for total, part in zip(sums, self._group_totals(group, plan, counter), strict=True):
                    _add_totals(total, part, self.numbers[group.name])

        _on_every_rank(work)
        if _distributed.world()[1] == 1:
            return sums
        return [t.all_reduce() for t in sums]

    def _group_totals(self, group: FileGroup, plan: _Plan, counter: _FileCounter) -> list[_Totals]:
        options = self.options
        with self.open(group) as inputs:
            accumulators = [_Accumulator(options, inputs, plan, p) for p in inputs.preds]
            computers = [_ChunkComputer(options, inputs, plan, p) for p in inputs.preds]
            rows = _all_rows(inputs)
            counter.start(group.size, (rows[1] - rows[0]) * inputs.row_size)
            ranges = chunk_ranges(inputs.shape, _chunk_elements(options, inputs), rows)
            _stream(inputs, computers, accumulators, ranges, counter)
            inputs.verify()
            if not options.omit:
                for accumulator, source in zip(accumulators, inputs.preds, strict=True):
                    _raise_on_nonfinite(accumulator.totals, (source, inputs.target))
        counter.finish()
        return [a.totals for a in accumulators]


def _add_totals(total: _Totals, part: _Totals, number: int) -> None:
    """Add the totals of file group ``number`` to ``total``."""
    total.stats = total.stats + part.stats
    for name in ("detection", "curve", "figures"):
        if getattr(part, name) is not None:
            setattr(total, name, getattr(total, name) + getattr(part, name))
    total.nonfinite = (total.nonfinite[0] + part.nonfinite[0], total.nonfinite[1] + part.nonfinite[1])
    total.omitted += part.omitted
    total.masked += part.masked
    if total.top is not None and part.top is not None:
        top = part.top
        total.top.offer(top.loss, top.index + number * _FILE_STRIDE, top.count, top.sse)
