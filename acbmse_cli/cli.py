"""The ``acbmse`` command line: a thin Typer layer over the library.

Every option is declared once, as ``Annotated[type, typer.Option(...)]``; options that several
commands take are shared aliases, fixed choices are ``Literal`` (so ``--help`` lists them and a
wrong value gets the parser's own message), and long lists sit in help panels.  The commands
build the library's options object, call the library and render: nothing is computed here.
torch and matplotlib are imported inside the commands, never at module level, so ``acbmse
--help`` answers at once.

Streams: stdout carries the report or the data only; progress, notes ("Wrote FILE") and
errors go to stderr.  Exit codes: 0 ok, 1 only for a failed quality gate (``eval
--fail-above``), 2 for bad usage or bad input (one line, ``acbmse: error: ...``), a write
error on stdout included.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from acbmse_cli._signals import Terminated, terminations_raise
from acbmse_cli._version import __version__
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    from acbmse_cli.evaluate import EvalComparison, EvalOptions, EvalResult


class _Command(TyperCommand):
    """A command whose flags show no value placeholder in ``--help``, and whose usage line names
    its arguments plainly (``PRED... TARGET``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [_plain_metavar(p) for p in pieces]


def _plain_metavar(piece: str) -> str:
    """``{PRED}`` -> ``PRED``; ``{PRED... TARGET}...`` (a list argument with its own dots) ->
    ``PRED... TARGET``."""
    if piece.startswith("{") and piece.endswith("}..."):
        piece = piece[:-3]
    return piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece


class _Group(TyperGroup):
    """The command group, with the same help conventions as its commands."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


def _bare_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""  # a flag takes no value: nothing to show after its name
    return params


app = typer.Typer(
    name="acbmse",
    cls=_Group,
    help=(
        "ACB-MSE (automatic class-balanced MSE) for sparse images: regenerate the loss-response "
        "figures, evaluate stored predictions per class, and run the training demo.\n\n"
        "Exit codes: 0 ok, 1 a quality gate failed (eval --fail-above), 2 bad usage or bad input."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --------------------------------------------------------------------------- shared declarations

INPUT, CLASSES, DETECTION, OUTPUT, EXECUTION = "Input", "Classes", "Detection", "Output", "Execution"
SWEEPS, TRAINING = "Sweeps", "Training"

DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the arithmetic runs: auto (CUDA when present), cpu, cuda or cuda:N.",
        rich_help_panel=EXECUTION,
    ),
]
HitWeightOption = Annotated[
    float,
    typer.Option(
        "--hit-weight", help="A: the ACB-MSE weight of the hit class (>= 0).", rich_help_panel=CLASSES
    ),
]
NonhitWeightOption = Annotated[
    float,
    typer.Option(
        "--nonhit-weight", help="B: the ACB-MSE weight of the non-hit class (>= 0).", rich_help_panel=CLASSES
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars on stderr.", rich_help_panel=OUTPUT)
]
TableJsonCsv = Literal["table", "json", "csv"]
ImageFormat = Literal["png", "svg", "pdf"]
TableJson = Literal["table", "json"]
_FORMAT_HELP = "What stdout carries: a rich table, or the numbers as JSON"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"acbmse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
        ),
    ] = False,
) -> None:
    """ACB-MSE tools."""


# --------------------------------------------------------------------------- eval


EVAL_HELP = (
    "Per-class error report of stored predictions against targets (MSE, MAE, ACB-MSE...).\n\n"
    "The last file is the target; every file before it is a prediction of the same shape (several: "
    "compared side by side, the target read once).\n\n"
    "The files are streamed in chunks (any size, bounded memory) and the statistics summed in float64. "
    "Under torchrun (python -m torch.distributed.run --nproc-per-node N -m acbmse_cli eval ...) the "
    "processes split the work and rank 0 prints.\n\n"
    "Exit codes: 0 ok; 1 the ACB-MSE is above --fail-above; 2 bad usage or bad input (a missing, "
    "corrupt or mismatched file, NaN/Inf without --nan-policy omit, a bad option)."
)


@app.command("eval", cls=_Command, help=EVAL_HELP)
def eval_command(
    ctx: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="PRED... TARGET",
            help="One or more prediction files, then the ground truth: .npy, .npz, .pt (a tensor, or a "
            "dict of them) or .h5, all of the same shape. Or folders of per-frame files: the files of the "
            "same name in every folder are paired, and all of them evaluated as one data set.",
            show_default=False,
        ),
    ],
    pred_key: Annotated[
        str | None,
        typer.Option(
            help="Which array of a PRED .npz, entry of a .pt dict or .h5 dataset path.", rich_help_panel=INPUT
        ),
    ] = None,
    target_key: Annotated[
        str | None,
        typer.Option(
            help="Which array of a TARGET .npz, entry of a .pt dict or .h5 dataset path.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option(
            help="Which array of a --labels .npz, entry of a .pt dict or .h5 dataset path.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    mask_key: Annotated[
        str | None,
        typer.Option(
            help="Which array of a --mask .npz, entry of a .pt dict or .h5 dataset path.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    nan_policy: Annotated[
        Literal["raise", "omit"],
        typer.Option(
            help="NaN/Inf in either file: raise (an error saying how many and where) or omit (leave out).",
            rich_help_panel=INPUT,
        ),
    ] = "raise",
    skip_unmatched: Annotated[
        bool,
        typer.Option(
            "--skip-unmatched",
            help="With folders: leave out the files whose name is not in every folder (else an error).",
            rich_help_panel=INPUT,
        ),
    ] = False,
    mask: Annotated[
        str | None,
        typer.Option(
            help="A file of the target's shape: the elements where it is 0 (False) are left out of "
            "everything (dead pixels, regions of no interest).",
            show_default=False,
            rich_help_panel=INPUT,
        ),
    ] = None,
    hit_threshold: Annotated[
        float, typer.Option(help="Hits are the elements with |target| > this.", rich_help_panel=CLASSES)
    ] = 0.0,
    hit_weight: HitWeightOption = 1.0,
    nonhit_weight: NonhitWeightOption = 1.0,
    labels: Annotated[
        str | None,
        typer.Option(
            help="n classes instead: a file of integer labels in [0, n), the target's shape.",
            rich_help_panel=CLASSES,
        ),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(help="With --labels: one weight per class, e.g. 0.2,1,3.", rich_help_panel=CLASSES),
    ] = None,
    class_names: Annotated[
        str | None,
        typer.Option(help="Class names in label order, e.g. bg,track,shower.", rich_help_panel=CLASSES),
    ] = None,
    detect_threshold: Annotated[
        float | None,
        typer.Option(
            help="Also report recall, precision and F1 of 'prediction > T' against the true hits.",
            rich_help_panel=DETECTION,
        ),
    ] = None,
    detect_curve: Annotated[
        bool,
        typer.Option(
            "--detect-curve",
            help="Also count hit finding at every threshold of a grid: the precision-recall curve, "
            "average precision, the best-F1 point.",
            rich_help_panel=DETECTION,
        ),
    ] = False,
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="The grid of --detect-curve: START:STOP:N (N evenly spaced, both ends included) or "
            "t1,t2,... Default: 201 from --hit-threshold to the target's largest hit, rounded up.",
            show_default=False,
            rich_help_panel=DETECTION,
        ),
    ] = None,
    input_file: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="The network's input (noisy frames, the target's shape): with detection, also signal "
            "retained and noise removed.",
            show_default=False,
            rich_help_panel=DETECTION,
        ),
    ] = None,
    input_key: Annotated[
        str | None,
        typer.Option(
            help="Which array of an --input .npz, entry of a .pt dict or .h5 dataset path.",
            rich_help_panel=INPUT,
        ),
    ] = None,
    output_format: Annotated[
        TableJsonCsv, typer.Option("--format", help=f"{_FORMAT_HELP} or CSV.", rich_help_panel=OUTPUT)
    ] = "table",
    per_sample: Annotated[
        bool,
        typer.Option(
            "--per-sample",
            help="Also list the samples (dim 0) with the worst ACB-MSE.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    top: Annotated[
        int, typer.Option(help="How many worst samples --per-sample lists.", rich_help_panel=OUTPUT)
    ] = 10,
    fail_above: Annotated[
        float | None,
        typer.Option(
            help="Exit with code 1 when the ACB-MSE is above this (a CI gate).", rich_help_panel=OUTPUT
        ),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            help="Also draw figures into this folder (created if missing): detection, errors, "
            "calibration and, with --per-sample, the worst samples.",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    image_format: Annotated[
        ImageFormat, typer.Option(help="Image file format of --plot.", rich_help_panel=OUTPUT)
    ] = "png",
    quiet: QuietOption = False,
    device: DeviceOption = "auto",
    chunk_elements: Annotated[
        int | None,
        typer.Option(hidden=True, help="Elements per chunk (for tests)."),
    ] = None,
) -> None:
    """``acbmse eval``: see :data:`EVAL_HELP`."""
    from acbmse_cli._files import OutputDir
    from acbmse_cli.evaluate import (
        EvalOptions,
        finish_distributed,
        init_distributed,
        parse_names,
        parse_numbers,
    )

    if fail_above is not None and math.isnan(fail_above):
        raise InputError("--fail-above must be a number, got nan")
    if len(files) < 2:
        raise InputError("eval needs PRED... TARGET: at least one prediction file, then the target")
    *preds, target = files
    given = _given_options(ctx)
    figures = None if plot is None else OutputDir(plot, option="--plot")
    if figures is not None:
        from acbmse_cli.eval_plots import check_figure_destinations

        check_figure_destinations(figures, image_format)
    rank, _ = init_distributed()
    try:
        with _errors_said_by_rank_zero(rank):
            options = EvalOptions(
                pred_key=pred_key,
                target_key=target_key,
                labels=labels,
                labels_key=labels_key,
                hit_threshold=given(hit_threshold=hit_threshold),
                hit_weight=given(hit_weight=hit_weight),
                nonhit_weight=given(nonhit_weight=nonhit_weight),
                class_weights=None
                if class_weights is None
                else parse_numbers(class_weights, "--class-weights"),
                class_names=None if class_names is None else parse_names(class_names, "--class-names"),
                per_sample=per_sample,
                top=given(top=top),
                detect_threshold=detect_threshold,
                nan_policy=nan_policy,
                device=device,
                chunk_elements=chunk_elements,
                detect_curve=detect_curve,
                thresholds=thresholds,
                input=input_file,
                input_key=input_key,
                figure_stats=figures is not None,
                mask=mask,
                mask_key=mask_key,
                skip_unmatched=skip_unmatched,
            )
            comparison = _evaluate_with_progress(preds, target, options, show=rank == 0 and not quiet)
    finally:
        finish_distributed()
    if rank == 0:
        _tell_skipped(comparison)
        if figures is not None:
            from acbmse_cli.eval_plots import write_eval_figures

            _tell_written(write_eval_figures(comparison, figures, image_format))
        _print_report(comparison, output_format)
    failed = [
        _failed_gate(report, fail_above, speak=rank == 0, named=len(comparison.reports) > 1)
        for report in comparison.reports
    ]
    if any(failed):
        raise typer.Exit(1)


def _tell_skipped(comparison: EvalComparison) -> None:
    """With folders and --skip-unmatched, how many files were left out, on stderr."""
    skipped = (comparison.reports[0].run or {}).get("skipped")
    if skipped:
        sys.stderr.write(
            f"acbmse: skipped {skipped} file name{'s' if skipped > 1 else ''} not in every folder\n"
        )


def _given_options(ctx: typer.Context) -> Any:
    """``given(name=value)``: the value when the user gave the option, None when it is the default
    (the library tells a default from a choice, to refuse options that do not apply)."""

    def given(**option: Any) -> Any:
        ((name, value),) = option.items()
        source = ctx.get_parameter_source(name)
        return None if source is None or source.name == "DEFAULT" else value

    return given


@contextlib.contextmanager
def _errors_said_by_rank_zero(rank: int) -> Iterator[None]:
    """Bad input ends every rank; rank 0 alone says why (the others exit with its code, silently)."""
    try:
        yield
    except InputError:
        if rank != 0:
            raise typer.Exit(InputError.exit_code) from None
        raise


def _evaluate_with_progress(
    preds: list[str], target: str, options: EvalOptions, *, show: bool
) -> EvalComparison:
    """The evaluation, with a progress bar on stderr where ``show`` and stderr is a terminal."""
    from acbmse_cli.evaluate import evaluate_many
    from acbmse_cli.report import DelayedProgress

    if not (show and sys.stderr.isatty()):
        return evaluate_many(preds, target, options)
    with DelayedProgress() as bar:
        return evaluate_many(preds, target, options, progress=bar, file_progress=bar.files)


def _print_report(comparison: EvalComparison, output_format: str) -> None:
    """The report on stdout (a note on stderr for omitted elements)."""
    from acbmse_cli._streams import printable
    from acbmse_cli.report import render_csv, render_json, render_table, stdout_console

    for result in comparison.reports:
        if result.omitted:
            name = f" of {printable(result.pred)}" if len(comparison.reports) > 1 else ""
            sys.stderr.write(
                f"acbmse: left out {result.omitted} elements{name} with NaN or Inf (--nan-policy omit)\n"
            )
    with _stdout_guard():
        if output_format == "json":
            sys.stdout.write(render_json(comparison))
        elif output_format == "csv":
            sys.stdout.write(render_csv(comparison))
        else:
            render_table(comparison, stdout_console())


def _failed_gate(result: EvalResult, fail_above: float | None, *, speak: bool, named: bool) -> bool:
    """Whether the score is above ``fail_above`` (a NaN score fails), said on stderr."""
    score = result.acb_mse
    if fail_above is None or score <= fail_above:
        return False
    if speak:
        from acbmse_cli._streams import printable

        verdict = "is not a number, which fails" if math.isnan(score) else "is above"
        who = f"{printable(result.pred)}: " if named else ""
        shown, limit = _distinct_numbers(score, fail_above)
        sys.stderr.write(f"acbmse: {who}ACB-MSE {shown} {verdict} --fail-above {limit}\n")
    return True


def _distinct_numbers(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 6 significant digits, or as many more as it takes to tell them apart."""
    for digits in range(6, 18):
        shown = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if shown[0] != shown[1]:
            return shown
    return repr(a), repr(b)


# --------------------------------------------------------------------------- curves


CURVES_HELP = (
    "Regenerate the loss-response figures (loss_curve_1/2/3) from the project's own loss code.\n\n"
    "1: loss against signal size at a fixed recovery (ACB-MSE flat, MSE and MAE growing). "
    "2: loss against recovery and overshoot (none returned, exact recovery, whole image lit). "
    "3: gradient mass on the signal, sum over hit pixels of |d loss / d prediction|, along sweep 1."
)


@app.command(cls=_Command, help=CURVES_HELP)
def curves(
    hit_weight: HitWeightOption = 1.0,
    nonhit_weight: NonhitWeightOption = 1.0,
    value: Annotated[
        float,
        typer.Option(
            help="ToF value of a hit pixel, 1e-100 to 1e100; other pixels are 0.", rich_help_panel=SWEEPS
        ),
    ] = 100.0,
    recovery: Annotated[
        float,
        typer.Option(
            help=(
                "Share of the hit pixels the prediction keeps in figures 1 and 3, in [0, 1]. "
                "Kept pixels = recovery x hit pixels, rounded to the nearest pixel (halves up)."
            ),
            rich_help_panel=SWEEPS,
        ),
    ] = 0.5,
    pixels: Annotated[
        int,
        typer.Option(
            help=(
                "Image size of figures 1 and 3, 2 to 10000 (the signal grows 2, 4, ... pixels up to all). "
                "Figure 2 uses the nearest multiple of 6, so that its signal is exactly a sixth of the image."
            ),
            rich_help_panel=SWEEPS,
        ),
    ] = 100,
    out: Annotated[
        str | None,
        typer.Option(
            help="Folder for the figures, created if missing. Default: Images with --format table; "
            "with json or csv, figures are written only where --out is given.",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    image_format: Annotated[
        Literal["png", "svg", "pdf"], typer.Option(help="Image file format.", rich_help_panel=OUTPUT)
    ] = "png",
    output_format: Annotated[
        TableJsonCsv,
        typer.Option(
            "--format",
            help="What stdout carries: rich tables of telling points, or all the numbers as JSON or CSV.",
            rich_help_panel=OUTPUT,
        ),
    ] = "table",
    device: DeviceOption = "auto",
) -> None:
    from acbmse_cli._files import OutputDir
    from acbmse_cli.curves import CurvesOptions, run_curves
    from acbmse_cli.devices import resolve_device

    options = CurvesOptions(
        hit_weight=hit_weight, nonhit_weight=nonhit_weight, value=value, recovery=recovery, pixels=pixels
    )
    if out is None and output_format == "table":
        out = "Images"
    folder = None if out is None else OutputDir(out, option="--out")
    data = run_curves(options, device=resolve_device(device))
    if folder is not None:
        from acbmse_cli.plots import write_figures

        _tell_written(write_figures(data, folder, image_format))
    with _stdout_guard():
        if output_format == "json":
            sys.stdout.write(data.to_json() + "\n")
        elif output_format == "csv":
            sys.stdout.write(data.to_csv())
        else:
            from acbmse_cli.report import render_curves_table, stdout_console

            render_curves_table(data, stdout_console())


# --------------------------------------------------------------------------- demo


DEMO_HELP = (
    "Train one small denoising autoencoder per loss (MSE, MAE, ACB-MSE) on synthetic detector frames.\n\n"
    "Same initial weights, batches, optimiser and steps for every loss. Each model is then scored on a "
    "held-out set: hit recall, precision, F1 (a hit is detected where the output is above 10, half the "
    "smallest hit value), the share of the input's noise hits removed, the share of blank outputs (no "
    "pixel above 10), average precision and best F1 over 201 thresholds, MSE per class.\n\n"
    "A grid: lists of --hit-weight, --nonhit-weight or --signal-hits, or --seeds N, train every "
    "configuration with every seed and report the mean and standard deviation over the seeds."
)
GRID = "Grid"


def _number_list(option: str, *, integers: bool = False) -> Any:
    """The parser of an option that takes a comma-separated list: a tuple of checked values."""
    from acbmse_cli._checks import as_input_error, check_integer, check_list, check_weight

    def check(name: str, value: object) -> Any:
        return check_integer(name, value, minimum=10) if integers else check_weight(name, value)

    def parse(value: object) -> Any:
        with as_input_error():
            return check_list(option, value, check, integers=integers)

    return parse


@app.command(cls=_Command, help=DEMO_HELP)
def demo(
    steps: Annotated[
        int, typer.Option(help="Optimiser steps per loss (>= 1).", rich_help_panel=TRAINING)
    ] = 1000,
    batch_size: Annotated[
        int, typer.Option(help="Frames per training step (>= 1).", rich_help_panel=TRAINING)
    ] = 16,
    seed: Annotated[
        int,
        typer.Option(
            help="Seeds the data and the initial weights (0 to 2**63 - 1); CPU runs repeat exactly.",
            rich_help_panel=TRAINING,
        ),
    ] = 0,
    losses: Annotated[
        str,
        typer.Option(
            help="Comma-separated subset of mse, mae, acb_mse, in table order.", rich_help_panel=TRAINING
        ),
    ] = "mse,mae,acb_mse",
    # A list option's value is the tuple its parser makes; its default stays the plain number.
    hit_weight: Annotated[
        Any,
        typer.Option(
            "--hit-weight",
            parser=_number_list("--hit-weight"),
            metavar="A[,A...]",
            help="A: the ACB-MSE weight of the hit class (>= 0); a comma-separated list makes a grid.",
            rich_help_panel=CLASSES,
        ),
    ] = 1.0,
    nonhit_weight: Annotated[
        Any,
        typer.Option(
            "--nonhit-weight",
            parser=_number_list("--nonhit-weight"),
            metavar="B[,B...]",
            help="B: the ACB-MSE weight of the non-hit class (>= 0); a comma-separated list makes a grid.",
            rich_help_panel=CLASSES,
        ),
    ] = 1.0,
    signal_hits: Annotated[
        Any,
        typer.Option(
            "--signal-hits",
            parser=_number_list("--signal-hits", integers=True),
            metavar="N[,N...]",
            show_default=False,
            help=(
                "Typical signal hits per frame (10 to an eighth of the pixels; default: the patterns' "
                "natural size, about 200); a comma-separated list makes a grid over densities."
            ),
            rich_help_panel=GRID,
        ),
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(
            help="Train every configuration with this many seeds, --seed, --seed + 1, ...; above 1 makes a "
            "grid.",
            rich_help_panel=GRID,
        ),
    ] = 1,
    jobs: Annotated[
        str,
        typer.Option(
            help="Processes for the runs of a grid: auto (as many as the CPUs hold at --threads each) or N. "
            "The results do not depend on it.",
            rich_help_panel=GRID,
        ),
    ] = "auto",
    eval_frames: Annotated[
        int, typer.Option(help="Frames in the held-out set (>= 1).", rich_help_panel=TRAINING)
    ] = 200,
    out: Annotated[
        str | None,
        typer.Option(
            help="Folder for the figure demo.png (held-out frames, training and precision-recall curves); "
            "for a grid, study.png (AP and best F1 against B/A, operating points).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    save_data: Annotated[
        str | None,
        typer.Option(
            help=(
                "Folder for the held-out set as .npy files: input.npy, target.npy and pred_<loss>.npy, "
                "float32 (N, 1, H, W); e.g. acbmse eval DIR/pred_acb_mse.npy DIR/target.npy. One run only."
            ),
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    output_format: Annotated[
        TableJson, typer.Option("--format", help=f"{_FORMAT_HELP}.", rich_help_panel=OUTPUT)
    ] = "table",
    quiet: QuietOption = False,
    device: DeviceOption = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch CPU threads (default: half the CPUs available, 1 to 4; in a grid, 1 per run).",
            rich_help_panel=EXECUTION,
        ),
    ] = None,
    frame_size: Annotated[str, typer.Option(hidden=True)] = "88x128",
) -> None:
    from acbmse_cli.demo import DemoOptions, parse_frame_size, parse_losses
    from acbmse_cli.study import StudyPlan, parse_jobs

    processes = parse_jobs(jobs)
    height, width = parse_frame_size(frame_size)
    densities: tuple[int | None, ...] = (None,) if signal_hits is None else signal_hits
    options = DemoOptions(
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        losses=parse_losses(losses),
        hit_weight=hit_weight[0],
        nonhit_weight=nonhit_weight[0],
        eval_frames=eval_frames,
        height=height,
        width=width,
        threads=threads,
        signal_hits=densities[0],
    )
    if seeds == 1 and len(hit_weight) == len(nonhit_weight) == len(densities) == 1:
        _one_demo(options, out=out, save_data=save_data, output_format=output_format, quiet=quiet,
                  device=device)  # fmt: skip
        return
    if save_data is not None:
        raise InputError("--save-data writes the held-out set of one run: it takes no grid (lists, --seeds)")
    plan = StudyPlan(options, hit_weights=hit_weight, nonhit_weights=nonhit_weight,
                     signal_hits=densities, seeds=seeds)  # fmt: skip
    _demo_grid(plan, jobs=processes, out=out, output_format=output_format, quiet=quiet, device=device)


def _one_demo(
    options: Any, *, out: str | None, save_data: str | None, output_format: str, quiet: bool, device: str
) -> None:
    """One run of every loss: its tables or JSON on stdout, its figure and data where asked."""
    from acbmse_cli._files import OutputDir
    from acbmse_cli.demo import check_outputs, run_demo, save_outputs
    from acbmse_cli.devices import resolve_device
    from acbmse_cli.report import TrainingProgress, render_demo_table, stdout_console

    figure_dir = None if out is None else OutputDir(out, option="--out")
    data_dir = None if save_data is None else OutputDir(save_data, option="--save-data")
    check_outputs(options, data_dir=data_dir, figure_dir=figure_dir)  # before training, not after
    torch_device = resolve_device(device)
    with TrainingProgress(options.losses, options.steps, enabled=not quiet) as progress:
        result = run_demo(options, device=torch_device, progress=progress.callback)
    _tell_written(save_outputs(result, data_dir=data_dir, figure_dir=figure_dir))
    with _stdout_guard():
        if output_format == "json":
            sys.stdout.write(result.to_json() + "\n")
        else:
            render_demo_table(result, stdout_console())


def _demo_grid(
    plan: Any, *, jobs: int | None, out: str | None, output_format: str, quiet: bool, device: str
) -> None:
    """Every run of ``plan``, after its checks and an estimate of its time on stderr; the table or JSON
    on stdout, the figure where asked.  Interrupted, it prints the rows that finished, then exits as a
    signal does."""
    from acbmse_cli._files import OutputDir
    from acbmse_cli.devices import resolve_device
    from acbmse_cli.report import StudyProgressBar
    from acbmse_cli.study import StudyInterrupted, default_jobs, estimate_seconds, run_study, save_figure

    figure_dir = None if out is None else OutputDir(out, option="--out")
    plan.check_outputs(figure_dir)
    torch_device = str(resolve_device(device))
    processes = default_jobs(len(plan.runs()), plan.threads) if jobs is None else jobs
    plan.check_memory(processes, torch_device)
    if not quiet:
        sys.stderr.write(plan.describe(processes, estimate_seconds(plan, processes, torch_device)) + "\n")
        sys.stderr.flush()
    try:
        with StudyProgressBar(len(plan.runs()), plan.base.steps, enabled=not quiet) as progress:
            result = run_study(plan, jobs=processes, device=torch_device, progress=progress.callback)
    except StudyInterrupted as stop:
        _print_study(stop.result, output_format)
        raise
    if figure_dir is not None:
        _tell_written(save_figure(result, figure_dir))
    _print_study(result, output_format)


def _print_study(result: Any, output_format: str) -> None:
    from acbmse_cli.report import render_study_table, stdout_console

    with _stdout_guard():
        if output_format == "json":
            sys.stdout.write(result.to_json() + "\n")
        else:
            render_study_table(result, stdout_console())


# --------------------------------------------------------------------------- streams and exit codes


def _tell_written(paths: list[Any]) -> None:
    """A ``Wrote PATH`` line per file, on stderr."""
    from acbmse_cli._streams import printable

    for path in paths:
        sys.stderr.write(f"Wrote {printable(path)}\n")


@contextlib.contextmanager
def _stdout_guard() -> Iterator[None]:
    """Write the report or data to stdout: a reader that stops reading (``| head``) is not an error,
    any other write error (a full disk) is bad input, exit code 2; nothing here is the gate's 1."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as exc:
        _silence_stdout()
        raise InputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def _stdout_is_a_closed_pipe() -> bool:
    """Whether stdout is a pipe whose reader has gone (the write end then polls as an error), or
    was one when a write met it (stdout then points at /dev/null)."""
    import select
    import stat

    from acbmse_cli._streams import reader_gone

    if reader_gone():
        return True
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    """Point stdout at devnull, so that the flush at exit cannot fail again."""
    from acbmse_cli._streams import silence

    silence(sys.stdout)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``acbmse`` and ``python -m acbmse_cli``."""
    from acbmse_cli._streams import standard_streams

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with terminations_raise(), standard_streams() as streams:
            status = _run(args or ["--help"])  # no arguments: the help, with the usage error's code
            failure = streams.finish()  # output still buffered is written now, under the same rules
            if failure is not None and status in (0, 1):  # the report is lost: that is the error to tell
                _error_line(failure)
                status = InputError.exit_code
    except Terminated as exc:  # a signal after the run, while its last words were said
        status = exc.exit_code
    sys.exit(status if args else 2)


@contextlib.contextmanager
def _closed_pipe_raises() -> Iterator[None]:
    """While the app runs, rich meets a closed stdout with BrokenPipeError, not its own exit code 1
    (which is the failed gate's)."""
    from rich.console import Console

    def on_broken_pipe(console: Console) -> None:
        console.quiet = True
        raise BrokenPipeError

    saved = getattr(Console, "on_broken_pipe", None)
    if saved is None:  # rich before 13.4 lets BrokenPipeError through by itself
        yield
        return
    Console.on_broken_pipe = on_broken_pipe  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        Console.on_broken_pipe = saved  # type: ignore[method-assign]


def _run(args: list[str]) -> int:
    """Run the app on ``args``; the exit code (the one-line message of a user's error said)."""
    try:
        with _closed_pipe_raises():
            result = app(args=args, prog_name="acbmse", standalone_mode=False)
    except InputError as exc:
        _error_line(str(exc))
        return InputError.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _error_line("interrupted")
        return 130
    except Terminated as exc:  # SIGINT, SIGTERM or SIGHUP: unwound, the writes cleaned up
        _error_line("interrupted" if exc.signum == signal.SIGINT else f"terminated by {exc.name}")
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except BrokenPipeError:  # the help or a report into a closed pipe
        _silence_stdout()
        return 0
    except SystemExit as exc:
        # click before 8.2 meets a closed pipe by exiting with 1 itself
        if exc.code == 1 and _stdout_is_a_closed_pipe():
            return 0
        raise
    except Exception as exc:
        # Usage errors of the parser (unknown option, bad value, missing argument)
        # carry format_message and exit_code; anything else is a bug and keeps its traceback.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        return _usage_error(exc)
    return result if isinstance(result, int) else 0


def _usage_error(exc: Any) -> int:
    """Say the parser's usage error in one line, with where to find help; its exit code."""
    message = exc.format_message().strip()
    if message:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error_line(message + hint)
    return int(exc.exit_code)


def _error_line(message: str) -> None:
    """``acbmse: error: MESSAGE`` on stderr: one line, its control characters escaped (a file name
    from the user or from inside a file must not drive the terminal)."""
    from acbmse_cli._streams import printable

    text = printable(" ".join(message.split()))
    sys.stderr.write(f"acbmse: error: {text}\n")
    sys.stderr.flush()
