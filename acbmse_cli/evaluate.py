"""Per-class error statistics of stored predictions: the library behind ``acbmse eval``.

:func:`evaluate_files` streams a prediction file and a target file (and
optionally a labels file) chunk by chunk and adds up, per class, the
statistics of :func:`acbmse_cli.loss.class_stats`: counts and float64 sums that
merge by addition, whatever the chunk size or the number of processes.  The
report (MSE, MAE, ACB-MSE and the rest) is computed from those sums at the end,
with :func:`acbmse_cli.loss.balanced_loss`: there is no second copy of the
formula here.

Under ``torchrun`` (an initialised ``torch.distributed`` process group of
several processes) the ranks split the samples between them and the sums are
all-reduced, so every rank returns the result of the whole files.

Nothing here prints: progress goes to an optional callback and the result is
a plain data object that :mod:`acbmse_cli.report` renders.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acbmse_cli.arrays import ArraySource, chunk_ranges, open_array
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    import torch

    from acbmse_cli.loss import ClassStats

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "NAN_POLICIES",
    "ClassResult",
    "DetectionResult",
    "EvalResult",
    "SampleResult",
    "evaluate_files",
    "finish_distributed",
    "init_distributed",
    "parse_names",
    "parse_numbers",
]

DEFAULT_CHUNK_ELEMENTS = 3 << 16
"""Elements per chunk: big enough that per-call overhead vanishes, small enough for the CPU caches."""

NAN_POLICIES = ("raise", "omit")
DEFAULT_TOP = 10
DEFAULT_CLASS_NAMES = ("non-hit", "hit")

Progress = Callable[[int, int], None]
"""Called after each chunk with (elements done, elements in all) of this process."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassResult:
    """One class's line of the report; the statistics are ``None`` for an empty class."""

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
    """One of the worst samples (dim 0): its index, ACB-MSE and per-class MSE (``None``: no elements)."""

    index: int
    acb_mse: float
    class_mse: tuple[float | None, ...]


@dataclass(frozen=True)
class DetectionResult:
    """The detector "prediction > threshold" against the true hits; a ratio with no cases is ``None``."""

    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    recall: float | None
    precision: float | None
    f1: float | None


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
    worst_samples: tuple[SampleResult, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: the issue's schema, plus ``omitted``, ``detection``
        and ``worst_samples`` when those options were asked for."""
        doc: dict[str, Any] = {
            "pred": self.pred,
            "target": self.target,
            "elements": self.elements,
            "classes": [
                {
                    "name": c.name,
                    "count": c.count,
                    "fraction": c.fraction,
                    "mse": c.mse,
                    "rmse": c.rmse,
                    "mae": c.mae,
                    "max_abs_error": c.max_abs_error,
                    "mean_target": c.mean_target,
                    "mean_pred": c.mean_pred,
                    "weight": c.weight,
                    "contribution": c.contribution,
                }
                for c in self.classes
            ],
            "mse": self.mse,
            "mae": self.mae,
            "acb_mse": self.acb_mse,
        }
        if self.omitted is not None:
            doc["omitted"] = self.omitted
        if self.detection is not None:
            d = self.detection
            doc["detection"] = {
                "threshold": d.threshold,
                "true_positives": d.true_positives,
                "false_positives": d.false_positives,
                "false_negatives": d.false_negatives,
                "recall": d.recall,
                "precision": d.precision,
                "f1": d.f1,
            }
        if self.worst_samples is not None:
            doc["worst_samples"] = [
                {
                    "index": s.index,
                    "acb_mse": s.acb_mse,
                    "class_mse": {c.name: m for c, m in zip(self.classes, s.class_mse, strict=True)},
                }
                for s in self.worst_samples
            ]
        return doc


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


def _check_real(option: str, value: float, *, negative: bool = False) -> float:
    if not math.isfinite(value) or (value < 0 and not negative):
        rule = "a finite number" if negative else "finite and non-negative"
        raise InputError(f"{option} must be {rule}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _Classes:
    names: tuple[str, ...]
    weights: tuple[float, ...]  # in label order
    hit_threshold: float
    labelled: bool


def _resolve_classes(
    hit_threshold: float | None,
    hit_weight: float | None,
    nonhit_weight: float | None,
    labelled: bool,
    class_weights: Sequence[float] | None,
    class_names: Sequence[str] | None,
    detect_threshold: float | None,
) -> _Classes:
    if labelled:
        if class_weights is None:
            raise InputError("--labels needs --class-weights: one weight per class, e.g. 0.2,1,3")
        for option, value in (
            ("--hit-threshold", hit_threshold),
            ("--hit-weight", hit_weight),
            ("--nonhit-weight", nonhit_weight),
            ("--detect-threshold", detect_threshold),
        ):
            if value is not None:
                raise InputError(
                    f"{option} has no meaning with --labels: the classes come from the labels file"
                )
        if not class_weights:
            raise InputError("--class-weights must name at least one weight")
        weights = tuple(_check_real("--class-weights", w) for w in class_weights)
        default_names = tuple(f"class {c}" for c in range(len(weights)))
        threshold = 0.0
    else:
        if class_weights is not None:
            raise InputError(
                "--class-weights needs --labels; for hits and non-hits use --hit-weight/--nonhit-weight"
            )
        threshold = _check_real("--hit-threshold", 0.0 if hit_threshold is None else hit_threshold)
        weights = (
            _check_real("--nonhit-weight", 1.0 if nonhit_weight is None else nonhit_weight),
            _check_real("--hit-weight", 1.0 if hit_weight is None else hit_weight),
        )
        default_names = DEFAULT_CLASS_NAMES
    if class_names is None:
        names = default_names
    else:
        names = tuple(class_names)
        if len(names) != len(weights):
            raise InputError(f"--class-names must give {len(weights)} names, one per class, got {len(names)}")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise InputError(f"--class-names must be distinct and non-empty, got {','.join(names)!r}")
    return _Classes(names, weights, threshold, labelled)


# --------------------------------------------------------------------------- accumulation


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
        import torch

        return cls(
            k,
            torch.empty(0, dtype=torch.float64),
            torch.empty(0, dtype=torch.int64),
            torch.empty(0, num_classes, dtype=torch.int64),
            torch.empty(0, num_classes, dtype=torch.float64),
        )

    def offer(self, loss: torch.Tensor, index: torch.Tensor, count: torch.Tensor, sse: torch.Tensor) -> None:
        import torch

        loss, index = torch.cat([self.loss, loss.cpu()]), torch.cat([self.index, index.cpu()])
        count, sse = torch.cat([self.count, count.cpu()]), torch.cat([self.sse, sse.cpu()])
        by_index = torch.argsort(index, stable=True)
        by_loss = torch.sort(loss[by_index], descending=True, stable=True).indices
        keep = by_index[by_loss][: self.k]
        self.loss, self.index, self.count, self.sse = loss[keep], index[keep], count[keep], sse[keep]


@dataclass
class _Partial:
    """What one process adds up over its chunks: merges by addition (max for max |error|)."""

    stats: ClassStats
    detection: torch.Tensor | None
    nonfinite: list[int]  # [count in pred, count in target]
    first_bad: list[int]  # first flat index of a non-finite value in pred, target (size: none)
    omitted: int
    top: _TopK | None
    row_stats: ClassStats | None = None  # the sample being read in parts
    errors: list[str] = field(default_factory=list)


def _zero_stats(num_classes: int, device: torch.device) -> ClassStats:
    import torch

    from acbmse_cli.loss import ClassStats

    def zeros(dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(1, num_classes, dtype=dtype, device=device)

    return ClassStats(
        count=zeros(torch.int64),
        sse=zeros(torch.float64),
        sae=zeros(torch.float64),
        max_abs_error=zeros(torch.float64),
        sum_target=zeros(torch.float64),
        sum_input=zeros(torch.float64),
    )


def _replace_rows(stats: ClassStats, rows: list[int], parts: list[ClassStats]) -> ClassStats:
    from dataclasses import fields

    from acbmse_cli.loss import ClassStats

    values = {}
    for f in fields(stats):
        tensor = getattr(stats, f.name)
        if tensor is not None:
            tensor = tensor.clone()
            for row, part in zip(rows, parts, strict=True):
                tensor[row] = getattr(part, f.name)[0]
        values[f.name] = tensor
    return ClassStats(**values)


@dataclass
class _ChunkResult:
    """What one chunk adds to the sums, before :meth:`_Evaluator.fold` adds it."""

    start: int
    stop: int
    rows: bool  # whole samples (stats per sample) or not (stats pooled)
    stats: ClassStats
    nonfinite: tuple[int, int] = (0, 0)
    first_bad: tuple[int, int] | None = None
    omitted: int = 0
    detection: torch.Tensor | None = None


class _Evaluator:
    """Streams the files of one process's share and adds up the statistics.

    :meth:`compute` turns a chunk into a :class:`_ChunkResult` (the chunk's
    statistics, its non-finite values); :meth:`fold` adds the results up in
    chunk order, and keeps the running per-sample ranking.
    """

    def __init__(
        self,
        pred: ArraySource,
        target: ArraySource,
        labels: ArraySource | None,
        classes: _Classes,
        *,
        per_sample: bool,
        top: int,
        detect_threshold: float | None,
        nan_policy: str,
        device: torch.device,
    ) -> None:
        import torch

        self.pred, self.target, self.labels = pred, target, labels
        self.classes = classes
        self.num_classes = len(classes.weights)
        self.per_sample = per_sample
        self.detect_threshold = detect_threshold
        self.omit = nan_policy == "omit"
        self.device = device
        self.shape = target.shape
        self.row_size = math.prod(self.shape[1:]) if self.shape else 1
        # Integers and bools are finite: only floating-point files need the check.
        self.check_finite = any(s.dtype.startswith(("float", "bfloat")) for s in (pred, target))
        self.partial = _Partial(
            stats=_zero_stats(self.num_classes, device),
            detection=torch.zeros(1, 3, dtype=torch.int64, device=device)
            if detect_threshold is not None
            else None,
            nonfinite=[0, 0],
            first_bad=[pred.size, target.size],
            omitted=0,
            top=_TopK.empty(top, self.num_classes) if per_sample else None,
        )

    # ---- reading (in order: some sources are streams)

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = self.pred.read(start, stop).to(self.device)
        y = self.target.read(start, stop).to(self.device)
        lab = self.labels.read(start, stop).to(self.device) if self.labels is not None else None
        return x, y, lab

    # ---- one chunk

    def _class_stats(
        self, x: torch.Tensor, y: torch.Tensor, lab: torch.Tensor | None, per_sample: bool, start: int
    ) -> ClassStats:
        import torch

        from acbmse_cli.loss import class_stats

        try:
            return class_stats(
                x,
                y,
                hit_threshold=self.classes.hit_threshold,
                labels=lab,
                num_classes=self.num_classes if lab is not None else None,
                per_sample=per_sample,
                dtype=torch.float64,
                extended=True,
            )
        except ValueError as exc:
            if lab is None:
                raise
            raise self._label_error(lab, start) from exc

    def _label_error(self, lab: torch.Tensor, start: int) -> InputError:
        import torch

        assert self.labels is not None
        bad = ((lab < 0) | (lab >= self.num_classes)).reshape(-1)
        offset = int(torch.argmax(bad.to(torch.uint8)))
        value = int(lab.reshape(-1)[offset])
        return InputError(
            f"{self.labels.name}: label {value} at index {self._index(start + offset)} is outside "
            f"0..{self.num_classes - 1} (--class-weights names {self.num_classes} classes)"
        )

    def _index(self, flat: int) -> tuple[int, ...] | int:
        import numpy as np

        if not self.shape:
            return ()
        if len(self.shape) == 1:
            return flat
        return tuple(int(i) for i in np.unravel_index(flat, self.shape))

    def compute(
        self, start: int, stop: int, x: torch.Tensor, y: torch.Tensor, lab: torch.Tensor | None
    ) -> _ChunkResult:
        """The statistics of elements ``[start, stop)`` (whose values are ``x``, ``y``, ``lab``)."""
        import torch

        from acbmse_cli.loss import detection_counts

        if lab is not None and lab.device.type != "cpu":  # class_stats range-checks labels on the CPU only
            low, high = (int(v) for v in torch.aminmax(lab))
            if low < 0 or high >= self.num_classes:
                raise self._label_error(lab, start)
        rows = self.per_sample and start % self.row_size == 0 and (stop - start) % self.row_size == 0
        if rows:  # whole samples: one group each
            n_rows = (stop - start) // self.row_size
            x, y = x.reshape(n_rows, -1), y.reshape(n_rows, -1)
            lab = lab.reshape(n_rows, -1) if lab is not None else None
        result = _ChunkResult(start, stop, rows, self._class_stats(x, y, lab, rows, start))
        if self.check_finite:
            # A NaN or Inf in either file makes its class's sum of targets or of predictions
            # non-finite: the sums show whether the chunk needs a closer look, at no cost.
            stats = result.stats
            assert stats.sum_input is not None and stats.sum_target is not None
            if not math.isfinite(float(stats.sum_input.sum() + stats.sum_target.sum())):
                fx, fy = torch.isfinite(x), torch.isfinite(y)
                keep = fx & fy
                if not bool(keep.all()):  # else finite values whose sums overflowed: nothing to leave out
                    bad_x, bad_y = ~fx.reshape(-1), ~fy.reshape(-1)
                    result.nonfinite = (int(bad_x.sum()), int(bad_y.sum()))
                    result.first_bad = (
                        start + int(torch.argmax(bad_x.to(torch.uint8)))
                        if result.nonfinite[0]
                        else self.pred.size,
                        start + int(torch.argmax(bad_y.to(torch.uint8)))
                        if result.nonfinite[1]
                        else self.target.size,
                    )
                    result.omitted = int((~keep).sum())
                    if not self.omit:
                        return result  # the run ends in an error; only the counts matter now
                    result.stats = self._omit(x, y, lab, keep, result.stats, rows, start)
                    x, y = x[keep], y[keep]
        if self.detect_threshold is not None:
            result.detection = detection_counts(
                x.reshape(-1),
                y.reshape(-1),
                hit_threshold=self.classes.hit_threshold,
                detect_threshold=self.detect_threshold,
            )
        return result

    def _omit(
        self, x: torch.Tensor, y: torch.Tensor, lab: torch.Tensor | None, keep: torch.Tensor,
        stats: ClassStats, rows: bool, start: int,
    ) -> ClassStats:  # fmt: skip
        """The chunk's statistics without the elements where ``keep`` is False."""
        if not rows:
            return self._class_stats(x[keep], y[keep], None if lab is None else lab[keep], False, start)
        bad_rows = [int(r) for r in (~keep.all(dim=1)).nonzero().reshape(-1)]
        parts = [
            self._class_stats(
                x[r][keep[r]], y[r][keep[r]], None if lab is None else lab[r][keep[r]], False, start
            )
            for r in bad_rows
        ]
        return _replace_rows(stats, bad_rows, parts)

    # ---- adding up, in chunk order

    def fold(self, result: _ChunkResult) -> None:
        partial = self.partial
        if result.first_bad is not None:
            for i in (0, 1):
                partial.nonfinite[i] += result.nonfinite[i]
                partial.first_bad[i] = min(partial.first_bad[i], result.first_bad[i])
            partial.omitted += result.omitted
        if partial.nonfinite != [0, 0] and not self.omit:
            return  # the run ends in an error: only the non-finite values are still counted
        if result.detection is not None:
            assert partial.detection is not None
            partial.detection += result.detection
        stats = result.stats
        if not self.per_sample:
            partial.stats = partial.stats + stats
        elif result.rows:
            partial.stats = partial.stats + stats.pooled()
            self._offer(result.start // self.row_size, stats)
        else:  # part of one sample: add it up until the sample is complete
            partial.stats = partial.stats + stats
            partial.row_stats = stats if partial.row_stats is None else partial.row_stats + stats
            if result.stop % self.row_size == 0:
                self._offer(result.start // self.row_size, partial.row_stats)
                partial.row_stats = None

    def _offer(self, first_row: int, stats: ClassStats) -> None:
        import torch

        from acbmse_cli.loss import balanced_loss

        assert self.partial.top is not None
        losses = balanced_loss(stats, self.classes.weights)
        index = torch.arange(first_row, first_row + losses.shape[0], dtype=torch.int64)
        self.partial.top.offer(losses, index, stats.count, stats.sse)

    # ---- the loop

    def run(self, ranges: Iterable[tuple[int, int]], progress: Callable[[int], None]) -> None:
        """Read, compute and fold every range, on one CPU thread (or the GPU)."""
        import torch

        threads = torch.get_num_threads()
        # One thread: the steps of a chunk are too short for torch's thread team, whose
        # barriers stall every step whenever another process holds one of the cores.
        # More cores: more processes, under torchrun.
        torch.set_num_threads(1)
        try:
            with _recycled_temporaries():
                for start, stop in ranges:
                    self.fold(self.compute(start, stop, *self.read(start, stop)))
                    progress(stop - start)
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


# --------------------------------------------------------------------------- distributed


def init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group (gloo) when ``WORLD_SIZE`` > 1; (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def finish_distributed() -> None:
    """Leave the process group, if one is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _merge_ranks(partial: _Partial) -> _Partial:
    """All-reduce the partial sums of every rank: each rank gets the whole result."""
    import torch
    import torch.distributed as dist

    from acbmse_cli.loss import ClassStats

    stats = partial.stats.to("cpu")
    assert stats.sae is not None and stats.sum_target is not None and stats.sum_input is not None
    assert stats.max_abs_error is not None
    counts = torch.cat(
        [
            stats.count.reshape(-1),
            (
                partial.detection.cpu()
                if partial.detection is not None
                else torch.zeros(1, 3, dtype=torch.int64)
            ).reshape(-1),
            torch.tensor([*partial.nonfinite, partial.omitted], dtype=torch.int64),
        ]
    )
    sums = torch.stack([stats.sse, stats.sae, stats.sum_target, stats.sum_input])
    maxima = stats.max_abs_error.clone()
    first_bad = torch.tensor(partial.first_bad, dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
    dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
    k = stats.count.shape[1]
    merged = _Partial(
        stats=ClassStats(
            count=counts[:k].reshape(1, k),
            sse=sums[0],
            sae=sums[1],
            max_abs_error=maxima,
            sum_target=sums[2],
            sum_input=sums[3],
        ),
        detection=counts[k : k + 3].reshape(1, 3) if partial.detection is not None else None,
        nonfinite=[int(counts[k + 3]), int(counts[k + 4])],
        first_bad=[int(v) for v in first_bad],
        omitted=int(counts[k + 5]),
        top=partial.top,
    )
    if partial.top is not None:
        gathered: list[Any] = [None] * dist.get_world_size()
        t = partial.top
        dist.all_gather_object(gathered, (t.loss, t.index, t.count, t.sse))
        top = _TopK.empty(t.k, k)
        for loss, index, count, sse in gathered:
            top.offer(loss, index, count, sse)
        merged.top = top
    return merged


def _agree_on_errors(error: str | None) -> str | None:
    """The first rank's error, if any rank had one, on every rank (so that none waits for the others)."""
    import torch.distributed as dist

    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


# --------------------------------------------------------------------------- the entry point


def _open(path: str | os.PathLike[str], key: str | None, key_option: str, role: str) -> ArraySource:
    return open_array(path, key=key, key_option=key_option, role="labels" if role == "labels" else "values")


def evaluate_files(
    pred: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    pred_key: str | None = None,
    target_key: str | None = None,
    labels: str | os.PathLike[str] | None = None,
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
    """Per-class error statistics of a prediction file against a target file.

    The files are read in chunks of ``chunk_elements`` elements, never whole,
    and the statistics are summed in float64.  Options mirror ``acbmse eval``
    (``None`` means the default; giving an option that does not apply is an
    error): the default classes are non-hit (``|target| <= hit_threshold``)
    and hit, weighted ``nonhit_weight`` and ``hit_weight``; or ``labels``, a
    file of integer classes with one of ``class_weights`` each.

    Args:
        pred, target: ``.npy``, ``.npz`` or ``.pt`` files of the same shape.
        pred_key, target_key: the array of an ``.npz`` (or the entry of a dict in a ``.pt``).
        labels: a file of integer labels in ``[0, K)``, the target's shape.
        per_sample: also find the ``top`` (default 10) samples (dim 0) with the worst ACB-MSE.
        detect_threshold: also count "prediction > threshold" against the true hits.
        nan_policy: ``"raise"``: NaN or Inf in either file is an error that says how many
            and where the first is; ``"omit"``: leave those elements out (``omitted`` says how many).
        device: where the arithmetic runs (``"auto"``, ``"cpu"``, ``"cuda:1"``...).
        chunk_elements: elements per chunk (default :data:`DEFAULT_CHUNK_ELEMENTS`).
        progress: called after each chunk with (elements done, elements in all).

    Raises:
        InputError: a bad file or option, or NaN/Inf under ``nan_policy="raise"``.
    """
    import torch

    from acbmse_cli.devices import resolve_device

    if nan_policy not in NAN_POLICIES:
        raise InputError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
    classes = _resolve_classes(
        hit_threshold,
        hit_weight,
        nonhit_weight,
        labels is not None,
        class_weights,
        class_names,
        detect_threshold,
    )
    if detect_threshold is not None:
        _check_real("--detect-threshold", detect_threshold, negative=True)
    if top is not None and not per_sample:
        raise InputError("--top needs --per-sample")
    if top is not None and top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    chunk = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    if chunk < 1:
        raise InputError(f"--chunk-elements must be at least 1, got {chunk}")
    dev = resolve_device(device) if isinstance(device, str) else device
    rank, world = _world()
    if str(dev) == "cuda" and world > 1:  # no index given: one GPU per local rank
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())

    sources: list[ArraySource] = []
    try:
        p = _open(pred, pred_key, "--pred-key", "values")
        sources.append(p)
        t = _open(target, target_key, "--target-key", "values")
        sources.append(t)
        if p.shape != t.shape:
            raise InputError(
                f"{p.name} has shape {p.shape} but {t.name} has shape {t.shape}: they must match"
            )
        lab = None
        if labels is not None:
            lab = _open(labels, None, "", "labels")
            sources.append(lab)
            if lab.shape != t.shape:
                raise InputError(
                    f"{lab.name}: labels have shape {lab.shape} but {t.name} has shape {t.shape}"
                )
        if per_sample and not t.shape:
            raise InputError(
                f"--per-sample needs a batch dimension (dim 0), but {t.name} is a 0-dimensional array"
            )
        evaluator = _Evaluator(
            p, t, lab, classes,
            per_sample=per_sample,
            top=DEFAULT_TOP if top is None else top,
            detect_threshold=detect_threshold,
            nan_policy=nan_policy,
            device=dev,
        )  # fmt: skip
        rows = t.shape[0] if t.shape else 1
        first, last = rows * rank // world, rows * (rank + 1) // world
        total = (last - first) * evaluator.row_size
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        error: str | None = None
        try:
            with torch.inference_mode():
                evaluator.run(chunk_ranges(t.shape, chunk, (first, last)), advance)
        except InputError as exc:
            if world == 1:
                raise
            error = str(exc)
        partial = evaluator.partial
        if world > 1:
            error = _agree_on_errors(error)
            if error is not None:
                raise InputError(error)
            partial = _merge_ranks(partial)
        return _summarize(partial, classes, p, t, str(pred), str(target), nan_policy, detect_threshold)
    finally:
        for source in sources:
            source.close()


def _summarize(
    partial: _Partial,
    classes: _Classes,
    p: ArraySource,
    t: ArraySource,
    pred_path: str,
    target_path: str,
    nan_policy: str,
    detect_threshold: float | None,
) -> EvalResult:
    import numpy as np

    from acbmse_cli.loss import ClassStats, balanced_loss

    if nan_policy == "raise" and partial.nonfinite != [0, 0]:
        parts = []
        for source, n, first in zip((p, t), partial.nonfinite, partial.first_bad, strict=True):
            if n:
                where = tuple(int(i) for i in np.unravel_index(first, source.shape)) if source.shape else ()
                parts.append(
                    f"{source.name}: {n} NaN/Inf value{'s' if n > 1 else ''}, "
                    f"the first at index {_fmt_index(where)}"
                )
        raise InputError("; ".join(parts) + " (--nan-policy omit leaves them out)")

    stats = partial.stats.to("cpu")
    assert stats.sae is not None and stats.max_abs_error is not None
    assert stats.sum_target is not None and stats.sum_input is not None
    count = [int(n) for n in stats.count[0]]
    elements = sum(count)
    if elements == 0:  # a score of 0 here would pass any gate on a file of nothing but NaN
        raise InputError(
            f"{pred_path} vs {target_path}: every element ({partial.omitted:,}) was NaN/Inf in one file "
            "or the other and was omitted (--nan-policy omit): nothing left to score"
        )
    acb = float(balanced_loss(stats, classes.weights)[0])
    results = []
    for c, (name, weight) in enumerate(zip(classes.names, classes.weights, strict=True)):
        n = count[c]
        # the formula on this class alone (zero weights on the others would turn an
        # infinite SSE there into NaN here: 0 * inf)
        alone = ClassStats(count=stats.count[:, c : c + 1], sse=stats.sse[:, c : c + 1])
        contribution = float(balanced_loss(alone, [weight])[0])
        if n == 0:
            results.append(
                ClassResult(
                    name, 0, 0.0 if elements else None, None, None, None, None, None, None, weight, 0.0
                )
            )
            continue
        mse = float(stats.sse[0, c]) / n
        results.append(
            ClassResult(
                name=name,
                count=n,
                fraction=n / elements,
                mse=mse,
                rmse=math.sqrt(mse),
                mae=float(stats.sae[0, c]) / n,
                max_abs_error=float(stats.max_abs_error[0, c]),
                mean_target=float(stats.sum_target[0, c]) / n,
                mean_pred=float(stats.sum_input[0, c]) / n,
                weight=weight,
                contribution=contribution,
            )
        )

    def overall(total: float) -> float | None:
        return total / elements if elements else None

    detection = None
    if detect_threshold is not None and partial.detection is not None:
        tp, fp, fn = (int(v) for v in partial.detection.cpu().reshape(-1))
        detection = DetectionResult(
            threshold=float(detect_threshold),
            true_positives=tp,
            false_positives=fp,
            false_negatives=fn,
            recall=tp / (tp + fn) if tp + fn else None,
            precision=tp / (tp + fp) if tp + fp else None,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        )
    worst = None
    if partial.top is not None:
        top = partial.top
        worst = tuple(
            SampleResult(
                index=int(top.index[i]),
                acb_mse=float(top.loss[i]),
                class_mse=tuple(
                    float(top.sse[i, c]) / int(top.count[i, c]) if int(top.count[i, c]) else None
                    for c in range(len(classes.weights))
                ),
            )
            for i in range(top.index.shape[0])
        )
    return EvalResult(
        pred=pred_path,
        target=target_path,
        elements=elements,
        classes=tuple(results),
        mse=overall(float(stats.sse.sum())),
        mae=overall(float(stats.sae.sum())),
        acb_mse=acb,
        max_abs_error=float(stats.max_abs_error.max()) if elements else None,
        mean_target=overall(float(stats.sum_target.sum())),
        mean_pred=overall(float(stats.sum_input.sum())),
        omitted=partial.omitted if nan_policy == "omit" else None,
        detection=detection,
        worst_samples=worst,
    )


def _fmt_index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, index)) + ("," if len(index) == 1 else "") + ")"
