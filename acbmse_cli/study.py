"""The demo as a study: which weights, at which signal density, with the spread over seeds.

A :class:`StudyPlan` is a grid of configurations: for every signal density (``signal_hits``), every loss
of the demo, and for ACB-MSE every pair of weights (A from ``hit_weights``, B from ``nonhit_weights``).
Each configuration is trained with ``seeds`` seeds, ``seed, seed + 1, ...``; a seed draws the initial
weights and the data (training batches and held-out set), the same for every configuration of that seed
and density, as in one run of the demo.  Every training run is one :func:`~acbmse_cli.demo.run_demo` of a
single loss, scored by the demo's own held-out evaluation (the code of ``acbmse eval``), so each row of the
study holds the figures of that evaluation: ``average_precision``, ``best_f1``, ``signal_retained``,
``noise_removed``, ``mse_hit``, ``mse_nonhit``, ``blank_fraction``, ...  MSE and MAE do not read the
weights; their ``acb_mse`` is the balanced error with A = B = 1.

The runs are independent of each other and of the order they run in (each seeds everything it draws), so
:func:`run_study` may spread them over processes (``jobs``): a run in a worker process gives the same
bits as the same run in this one, for the same number of torch threads.  The result per configuration is
the list of its runs, and :func:`mean_and_sd` of their metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from acbmse_cli._checks import as_input_error, check_integer
from acbmse_cli._files import OutputDir, Writer, check_destinations, write_files
from acbmse_cli._loss_names import LOSS_COLORS, LOSS_LABELS
from acbmse_cli._provenance import run_record
from acbmse_cli._signals import Terminated
from acbmse_cli.demo import MAX_SEED, DemoOptions, Metric, available_memory, memory_needed, run_demo
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    from multiprocessing.queues import SimpleQueue
    from pathlib import Path

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "MAX_RUNS",
    "StudyConfig",
    "StudyInterrupted",
    "StudyPlan",
    "StudyResult",
    "StudyRun",
    "default_jobs",
    "estimate_seconds",
    "mean_and_sd",
    "parse_jobs",
    "run_study",
    "save_figure",
]

#: The most training runs one study may hold: beyond it a grid is refused as too large.
MAX_RUNS = 1000
FIGURE_FILE = "study.png"

#: ``progress(run, steps_done, finished)``: run ``run`` (an index of :meth:`StudyPlan.runs`) has trained
#: ``steps_done`` steps; ``finished`` once it has been scored too.
StudyProgress = Callable[[int, int, bool], None]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class StudyConfig:
    """One row of the study: a loss, its weights (``None`` for MSE and MAE) and the signal density
    (``None``: the patterns' natural size)."""

    loss: str
    hit_weight: float | None
    nonhit_weight: float | None
    signal_hits: int | None

    @property
    def ratio(self) -> float | None:
        """B / A (infinite where A is 0), ``None`` for a loss without weights."""
        if self.hit_weight is None or self.nonhit_weight is None:
            return None
        return self.nonhit_weight / self.hit_weight if self.hit_weight else math.inf


def parse_jobs(text: str) -> int | None:
    """``--jobs``: ``"auto"`` (``None``) or a number of processes of at least 1."""
    if text.strip().lower() == "auto":
        return None
    with as_input_error():
        try:
            return check_integer("--jobs", int(text))
        except ValueError:
            raise ValueError(f"--jobs must be auto or an integer of at least 1, got {text!r}") from None


def default_jobs(runs: int, threads: int) -> int:
    """Processes for ``runs`` runs of ``threads`` torch threads each: as many as the CPUs this process
    may use hold, at least 1, at most one per run."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        available = os.cpu_count() or 1
    return max(1, min(runs, available // threads))


@dataclass(frozen=True)
class StudyPlan:
    """The grid: ``base`` gives every option of a run but the loss, the weights, the density and the seed.

    Args:
        base: the options every run shares (steps, batch size, the first seed, held-out frames, frame
            size, threads; ``None`` threads means 1 per run).
        hit_weights: the A of ACB-MSE.
        nonhit_weights: the B of ACB-MSE.
        signal_hits: the densities; ``(None,)``: the data's natural one.
        seeds: how many seeds, from ``base.seed`` on.

    Every option of every run is checked on creation (:class:`InputError` names the option), and so is
    the size of the grid (at most :data:`MAX_RUNS` runs).
    """

    base: DemoOptions
    hit_weights: tuple[float, ...] = (1.0,)
    nonhit_weights: tuple[float, ...] = (1.0,)
    signal_hits: tuple[int | None, ...] = (None,)
    seeds: int = 1

    def __post_init__(self) -> None:
        with as_input_error():
            check_integer("--seeds", self.seeds)
            last = self.base.seed + self.seeds - 1
            if last > MAX_SEED - 1:
                raise ValueError(
                    f"--seed {self.base.seed} with --seeds {self.seeds} reaches seed {last}, beyond "
                    f"{MAX_SEED - 1}"
                )
        runs = len(self.configs()) * self.seeds
        if runs > MAX_RUNS:
            raise InputError(
                f"the grid holds {runs} training runs, more than {MAX_RUNS}: give fewer weights, "
                "densities, losses or --seeds"
            )
        for config in self.configs():  # every option of every run, before any of them starts
            self.run_options(config, self.base.seed)

    @property
    def threads(self) -> int:
        """torch threads of each run."""
        return 1 if self.base.threads is None else self.base.threads

    def configs(self) -> list[StudyConfig]:
        """The rows, density by density, in the order of the losses; ACB-MSE once per (A, B)."""
        rows = []
        for hits in self.signal_hits:
            for loss in self.base.losses:
                if loss != "acb_mse":
                    rows.append(StudyConfig(loss, None, None, hits))
                    continue
                for a in self.hit_weights:
                    rows.extend(StudyConfig(loss, a, b, hits) for b in self.nonhit_weights)
        return rows

    def seed_values(self) -> list[int]:
        return [self.base.seed + i for i in range(self.seeds)]

    def runs(self) -> list[tuple[int, int]]:
        """``(config index, seed)`` of every run, seed by seed: an interrupted study has every row of
        its first seeds rather than every seed of its first rows."""
        return [(i, seed) for seed in self.seed_values() for i in range(len(self.configs()))]

    def run_options(self, config: StudyConfig, seed: int) -> DemoOptions:
        """The options of one run of ``config``."""
        return dataclasses.replace(
            self.base,
            seed=seed,
            losses=(config.loss,),
            hit_weight=1.0 if config.hit_weight is None else config.hit_weight,
            nonhit_weight=1.0 if config.nonhit_weight is None else config.nonhit_weight,
            signal_hits=config.signal_hits,
            threads=self.threads,
        )

    def check_memory(self, jobs: int, device: str) -> None:
        """Refuse, before any work, a grid whose ``jobs`` runs at once would not fit in free memory."""
        import torch

        need = jobs * memory_needed(self.run_options(self.configs()[0], self.base.seed))
        free = available_memory(torch.device(device))
        if free is not None and need > free:
            raise InputError(
                f"--jobs {jobs} runs at once need about {need / 2**30:.1f} GiB on {device}, but only "
                f"{free / 2**30:.1f} GiB is free: choose fewer --jobs or smaller sizes"
            )

    def check_outputs(self, figure_dir: OutputDir | None) -> None:
        """Refuse, before any training, a figure destination that could not be written."""
        if figure_dir is not None:
            check_destinations([figure_dir.path / FIGURE_FILE])

    def describe(self, jobs: int, seconds: float) -> str:
        """``grid: 3 densities x 6 configurations x 3 seeds = 54 runs of 1000 steps, about 12 min on 2
        processes``."""
        densities = len(self.signal_hits)
        per_density = len(self.configs()) // densities
        runs = len(self.runs())
        return (
            f"grid: {_count(densities, 'density', 'densities')} x {_count(per_density, 'configuration')} "
            f"x {_count(self.seeds, 'seed')} = {_count(runs, 'run')} of {self.base.steps} steps, about "
            f"{_duration(seconds)} on {_count(jobs, 'process', 'processes')}"
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StudyRun:
    """One training run's held-out metrics (named as in ``acbmse eval``'s JSON), its seed, the threshold
    grid of its curve and how long it took."""

    seed: int
    metrics: dict[str, Metric]
    thresholds: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, **self.metrics, "thresholds": self.thresholds, "seconds": self.seconds}


def mean_and_sd(runs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mean and the sample standard deviation (``n - 1``) over ``runs`` of every numeric metric;
    a dict of numbers (``best_f1``) gets a dict of each.

    A metric that is ``None`` in any run (precision where a model detected nothing) has ``None`` for
    both, and so has the standard deviation of a single run.  Keys that are not numbers are left out.
    """
    mean: dict[str, Any] = {}
    sd: dict[str, Any] = {}
    for key in runs[0] if runs else ():
        values = [run.get(key) for run in runs]
        if all(isinstance(v, Mapping) for v in values):
            mean[key], sd[key] = mean_and_sd(values)  # type: ignore[arg-type]
        elif all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            mean[key], sd[key] = _mean_sd([v for v in values if v is not None], len(values))
        elif any(isinstance(v, Mapping) for v in values):  # a dict in some runs, None in others
            mean[key] = sd[key] = None
    return mean, sd


def _mean_sd(values: list[float], n: int) -> tuple[float | None, float | None]:
    if len(values) < n or not values:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


#: The keys of a run that are no metric: they take no part in the mean and standard deviation.
_NOT_METRICS = ("seed", "thresholds", "seconds")


@dataclass
class StudyResult:
    """What :func:`run_study` returns: the plan, and the finished runs of every configuration (all of
    them, unless the study was interrupted)."""

    plan: StudyPlan
    device: str
    jobs: int
    runs: dict[int, list[StudyRun]] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    def rows(self) -> list[tuple[StudyConfig, list[StudyRun]]]:
        """Each configuration with at least one finished run, in the plan's order, its runs by seed."""
        configs = self.plan.configs()
        return [
            (configs[i], sorted(self.runs[i], key=lambda run: run.seed))
            for i in range(len(configs))
            if self.runs.get(i)
        ]

    def summaries(self) -> list[dict[str, Any]]:
        """A dict per row: the configuration, its runs, and the mean and sd of their metrics."""
        summaries = []
        for config, runs in self.rows():
            mean, sd = mean_and_sd([run.metrics for run in runs])
            summaries.append({
                "loss": config.loss,
                "hit_weight": config.hit_weight,
                "nonhit_weight": config.nonhit_weight,
                "signal_hits": config.signal_hits,
                "runs": [run.to_dict() for run in runs],
                "mean": mean,
                "sd": sd,
            })  # fmt: skip
        return summaries

    def run_record(self) -> dict[str, Any]:
        """The version and every option that shaped the numbers, then how the grid ran."""
        plan, base = self.plan, self.plan.base
        densities = None if plan.signal_hits == (None,) else plan.signal_hits
        return run_record(
            {
                "steps": base.steps,
                "batch_size": base.batch_size,
                "seeds": tuple(plan.seed_values()),
                "losses": base.losses,
                "hit_weights": plan.hit_weights,
                "nonhit_weights": plan.nonhit_weights,
                "signal_hits": densities,
                "eval_frames": base.eval_frames,
                "frame_size": f"{base.height}x{base.width}",
                "learning_rate": base.learning_rate,
                "detect_threshold": base.detect_threshold,
                "threads": plan.threads,
                "device": self.device,
                "jobs": self.jobs,
                "runs": len(plan.runs()),
                "finished_runs": sum(len(runs) for runs in self.runs.values()),
                "interrupted": self.interrupted,
                "seconds": self.seconds,
            }
        )

    def to_json(self) -> str:
        """``{"run": {...}, "configs": [{"loss", "hit_weight", "nonhit_weight", "signal_hits", "runs",
        "mean", "sd"}, ...]}``."""
        return json.dumps({"run": self.run_record(), "configs": self.summaries()}, indent=2)


class StudyInterrupted(Terminated):
    """A signal stopped the study: :attr:`result` holds the runs that finished before it."""

    def __init__(self, signum: int, result: StudyResult) -> None:
        super().__init__(signum)
        self.result = result


# --------------------------------------------------------------------------- running


def _train_and_score(options: DemoOptions, device: str, progress: Callable[[int], None] | None) -> StudyRun:
    """One run: train ``options.losses[0]`` and score it on the held-out set."""
    start = time.perf_counter()
    report = None if progress is None else _step_reporter(progress, options.steps)
    result = run_demo(options, device=device, progress=report)
    (run,) = result.runs.values()
    return StudyRun(options.seed, run.metrics, result.grid.describe(), time.perf_counter() - start)


def _step_reporter(progress: Callable[[int], None], steps: int) -> Callable[[str, int, int, float], None]:
    """A demo progress callback that passes on the steps done, about 50 times a run."""
    every = max(1, steps // 50)

    def report(_loss: str, step: int, _steps: int, _value: float) -> None:
        if step % every == 0 or step == steps:
            progress(step)

    return report


# The worker processes' end of the progress queue (set by _start_worker).
_QUEUE: SimpleQueue[tuple[int, int]] | None = None


def _start_worker(queue: SimpleQueue[tuple[int, int]] | None) -> None:
    """In each worker: Ctrl-C at a terminal reaches the whole process group, and is this process's
    parent's to handle (it stops the workers); progress goes to ``queue``."""
    global _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _QUEUE = queue


def _run_in_worker(index: int, options: DemoOptions, device: str) -> StudyRun:
    queue = _QUEUE

    def progress(step: int) -> None:
        if queue is not None:
            queue.put((index, step))

    return _train_and_score(options, device, progress if queue is not None else None)


def run_study(
    plan: StudyPlan, *, jobs: int = 1, device: str = "cpu", progress: StudyProgress | None = None
) -> StudyResult:
    """Train and score every run of ``plan``, on ``jobs`` processes (1: here, one after the other).

    Raises:
        StudyInterrupted: a signal (Ctrl-C, SIGTERM, SIGHUP) stopped it; the workers are stopped and
            the exception holds the runs that finished.
    """
    result = StudyResult(plan=plan, device=device, jobs=jobs)
    start = time.perf_counter()
    tasks = [(i, plan.run_options(plan.configs()[config], seed)) for i, (config, seed) in
             enumerate(plan.runs())]  # fmt: skip
    config_of = [config for config, _seed in plan.runs()]

    def finished(index: int, run: StudyRun) -> None:
        result.runs.setdefault(config_of[index], []).append(run)
        if progress is not None:
            progress(index, plan.base.steps, True)

    try:
        if jobs == 1:
            _run_here(tasks, device, progress, finished)
        else:
            _run_in_pool(tasks, jobs, device, progress, finished)
    except Terminated as stop:
        result.interrupted = True
        result.seconds = time.perf_counter() - start
        raise StudyInterrupted(stop.signum, result) from None
    result.seconds = time.perf_counter() - start
    return result


_Tasks = Sequence[tuple[int, DemoOptions]]
_Finished = Callable[[int, StudyRun], None]


def _run_here(tasks: _Tasks, device: str, progress: StudyProgress | None, finished: _Finished) -> None:
    for index, options in tasks:
        report = None if progress is None else _bind(progress, index)
        finished(index, _train_and_score(options, device, report))


def _bind(progress: StudyProgress, index: int) -> Callable[[int], None]:
    def report(step: int) -> None:
        progress(index, step, False)

    return report


def _run_in_pool(
    tasks: _Tasks, jobs: int, device: str, progress: StudyProgress | None, finished: _Finished
) -> None:
    """The runs on ``jobs`` spawned worker processes; on any exception (a signal included) the workers
    are stopped before it goes on."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    queue = context.SimpleQueue() if progress is not None else None
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(queue,))
    try:
        with _interrupts_ignored_by_new_processes():
            pending: dict[Future[StudyRun], int] = {
                pool.submit(_run_in_worker, index, options, device): index for index, options in tasks
            }
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if queue is not None and progress is not None:
                _drain(queue, progress)
            for future in done:
                finished(pending.pop(future), future.result())
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown()


@contextlib.contextmanager
def _interrupts_ignored_by_new_processes() -> Iterator[None]:
    """Within (where the pool starts its workers): SIGINT ignored, a setting that a new process keeps
    through ``exec``, so that a Ctrl-C while a worker imports torch is no traceback of its own.  The
    parent, back to its handler, stops the workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _drain(queue: SimpleQueue[tuple[int, int]], progress: StudyProgress) -> None:
    while not queue.empty():
        index, step = queue.get()
        progress(index, step, False)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now, running or not (``terminate_workers`` from Python 3.14 on)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes: Iterable[Any] = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def estimate_seconds(plan: StudyPlan, jobs: int, device: str) -> float:
    """How long the study should take here: a pilot of 3 steps of one run (after one of a single step,
    which pays for torch's set-up), timed step by step, then
    (the first step's set-up + steps x the cost of a later step + the scoring) per run, the runs
    shared by ``jobs`` processes (each of which imports torch first, about 2 s)."""
    options = dataclasses.replace(plan.run_options(plan.configs()[-1], plan.base.seed), steps=3)
    run_demo(dataclasses.replace(options, steps=1, eval_frames=1), device=device)  # the first calls' set-up
    stamps: list[float] = []
    start = time.perf_counter()
    run_demo(options, device=device, progress=lambda *_args: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    per_step = (stamps[2] - stamps[0]) / 2
    per_run = (stamps[0] - start - per_step) + plan.base.steps * per_step + (end - stamps[2])
    rounds = math.ceil(len(plan.runs()) / jobs)
    return rounds * per_run + (2.0 if jobs > 1 else 0.0)


# --------------------------------------------------------------------------- the figure


def save_figure(result: StudyResult, directory: OutputDir) -> list[Path]:
    """Write ``study.png`` into ``directory``: per density, AP and best F1 against B/A with error bars
    (MSE and MAE as bands), and the best-F1 operating points in precision and recall."""
    return write_files({directory.path / FIGURE_FILE: _figure_writer(result)})


def _figure_writer(result: StudyResult) -> Writer:
    from acbmse_cli._figures import figure_settings, image_writer

    draw = image_writer(lambda: _draw_figure(result), "png")

    def write(stream: BinaryIO) -> None:
        with figure_settings(FIGURE_FILE):
            draw(stream)

    return write


def _draw_figure(result: StudyResult) -> Figure:
    from acbmse_cli._figures import new_figure

    summaries = result.summaries()
    densities = list(dict.fromkeys(s["signal_hits"] for s in summaries))
    fig = new_figure(figsize=(max(4.6 * len(densities) + 0.6, 6.0), 11.0), layout="constrained")
    grid = fig.add_gridspec(3, len(densities))
    seeds = max((len(s["runs"]) for s in summaries), default=0)
    for col, hits in enumerate(densities):
        rows = [s for s in summaries if s["signal_hits"] == hits]
        title = "natural density" if hits is None else f"about {hits} signal hits per frame"
        for row, (metric, label) in enumerate((("average_precision", "average precision"),
                                               ("best_f1", "best F1"))):  # fmt: skip
            ax = fig.add_subplot(grid[row, col])
            _plot_against_ratio(ax, rows, metric)
            ax.set_ylabel(f"{label} on the held-out set")
            if row == 0:
                ax.set_title(title)
        _plot_operating_points(fig.add_subplot(grid[2, col]), rows)
    steps = result.plan.base.steps
    fig.suptitle(
        f"after {steps} training steps, over {seeds} seeds:\nmean, ±1 standard deviation as bars, bands"
    )
    return fig


def _metric_value(stats: Mapping[str, Any], metric: str) -> float | None:
    value = stats.get(metric)
    if isinstance(value, Mapping):
        value = value.get("f1")
    return value if isinstance(value, (int, float)) else None


def _ratio_of(summary: Mapping[str, Any]) -> float | None:
    a, b = summary["hit_weight"], summary["nonhit_weight"]
    return None if a is None or b is None or a == 0 or b == 0 else b / a


def _plot_against_ratio(ax: Axes, rows: list[dict[str, Any]], metric: str) -> None:
    """ACB-MSE's ``metric`` against B / A, a line per A, with ±1 sd bars; MSE and MAE as bands."""
    for row in rows:
        if row["loss"] == "acb_mse":
            continue
        mean, sd = _metric_value(row["mean"], metric), _metric_value(row["sd"], metric)
        if mean is None:
            continue
        color = LOSS_COLORS[row["loss"]]
        ax.axhline(mean, color=color, linewidth=1.4, label=LOSS_LABELS[row["loss"]])
        if sd is not None:
            ax.axhspan(mean - sd, mean + sd, color=color, alpha=0.18, linewidth=0)
    acb = [r for r in rows if r["loss"] == "acb_mse" and _ratio_of(r) is not None]
    markers = "osD^v<>"
    for k, a in enumerate(dict.fromkeys(r["hit_weight"] for r in acb)):
        points = sorted((_ratio_of(r), _metric_value(r["mean"], metric), _metric_value(r["sd"], metric))
                        for r in acb if r["hit_weight"] == a)  # fmt: skip
        points = [p for p in points if p[1] is not None]
        if not points:
            continue
        x, y, err = zip(*points, strict=True)
        ax.errorbar(x, y, yerr=[0.0 if e is None else e for e in err], color=LOSS_COLORS["acb_mse"],
                    marker=markers[k % len(markers)], capsize=3, label=f"ACB-MSE, A = {a:g}")  # fmt: skip
    ratios = sorted({ratio for r in acb if (ratio := _ratio_of(r)) is not None})
    if ratios:
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"{ratio:g}" for ratio in ratios])
        ax.minorticks_off()
    ax.set_xlabel("B / A (non-hit weight / hit weight)")
    ax.set_ylim(0, 1.02)
    ax.grid(visible=True, alpha=0.3)
    ax.legend(fontsize="small")


def _point_label(row: Mapping[str, Any]) -> str:
    """MSE, MAE, or ACB-MSE's B/A (its A and B where the ratio is 0 or infinite)."""
    ratio = _ratio_of(row)
    if row["hit_weight"] is None:
        return LOSS_LABELS[row["loss"]]
    return f"B/A {ratio:g}" if ratio is not None else f"A {row['hit_weight']:g}, B {row['nonhit_weight']:g}"


def _plot_operating_points(ax: Axes, rows: list[dict[str, Any]]) -> None:
    """Each configuration's best-F1 operating point (mean recall and precision, ±1 sd), labelled."""
    for row in rows:
        mean, sd = row["mean"].get("best_f1"), row["sd"].get("best_f1")
        if not isinstance(mean, Mapping) or mean.get("recall") is None or mean.get("precision") is None:
            continue
        sd = sd if isinstance(sd, Mapping) else {}
        ax.errorbar(mean["recall"], mean["precision"], xerr=sd.get("recall") or 0.0,
                    yerr=sd.get("precision") or 0.0, color=LOSS_COLORS[row["loss"]], marker="*",
                    markersize=9, capsize=2, linestyle="none")  # fmt: skip
        ax.annotate(_point_label(row), (mean["recall"], mean["precision"]), textcoords="offset points",
                    xytext=(4, 4), fontsize="x-small", color=LOSS_COLORS[row["loss"]])  # fmt: skip
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall at best F1 (share of hits found)")
    ax.set_ylabel("precision at best F1 (share that are hits)")
    ax.set_title("best-F1 operating points", fontsize="medium")
    ax.grid(visible=True, alpha=0.3)
