"""The ``acbmse`` command line: a thin Typer layer over the library.

Commands parse their options, call the library and render; nothing is
computed here.  torch and matplotlib are imported inside the commands, never
at module level, so ``acbmse --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, Optional

import typer

from acbmse_cli._version import __version__
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    from acbmse_cli.evaluate import EvalOptions, EvalResult

app = typer.Typer(
    name="acbmse",
    help=(
        "ACB-MSE (automatic class-balanced MSE) for sparse images: regenerate the loss-response "
        "figures, evaluate stored predictions per class, and run the training demo.\n\n"
        "Exit codes: 0 ok, 1 a quality gate failed (eval --fail-above), 2 bad usage or bad input."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"acbmse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(  # noqa: UP045 - typer reads the annotation
        None, "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """ACB-MSE tools."""


# Commands are registered below, one section each; each imports what it needs inside.


# --------------------------------------------------------------------------- eval


@app.command("eval")
def eval_command(
    pred: str = typer.Argument(..., help="Predictions: .npy, .npz or .pt (a tensor, or a dict of tensors)."),
    target: str = typer.Argument(..., help="Ground truth of the same shape, same formats."),
    pred_key: Optional[str] = typer.Option(  # noqa: UP045 - typer reads the annotation
        None, "--pred-key", help="Which array of a PRED .npz (or entry of a .pt dict) to read."
    ),
    target_key: Optional[str] = typer.Option(  # noqa: UP045
        None, "--target-key", help="Which array of a TARGET .npz (or entry of a .pt dict) to read."
    ),
    hit_threshold: Optional[float] = typer.Option(  # noqa: UP045
        None, "--hit-threshold", help="Hits are the elements with |target| > this (default 0)."
    ),
    hit_weight: Optional[float] = typer.Option(  # noqa: UP045
        None, "--hit-weight", help="A: weight of the hit class (default 1)."
    ),
    nonhit_weight: Optional[float] = typer.Option(  # noqa: UP045
        None, "--nonhit-weight", help="B: weight of the non-hit class (default 1)."
    ),
    labels: Optional[str] = typer.Option(  # noqa: UP045
        None, "--labels", help="n classes: a file of integer labels in [0, n), the target's shape."
    ),
    class_weights: Optional[str] = typer.Option(  # noqa: UP045
        None, "--class-weights", help="With --labels: one weight per class, e.g. 0.2,1,3."
    ),
    class_names: Optional[str] = typer.Option(  # noqa: UP045
        None, "--class-names", help="Names of the classes in label order, e.g. bg,track,shower."
    ),
    output_format: str = typer.Option("table", "--format", help="table (rich), json or csv, on stdout."),
    per_sample: bool = typer.Option(
        False, "--per-sample", help="Also list the samples (dim 0) with the worst ACB-MSE."
    ),
    top: Optional[int] = typer.Option(  # noqa: UP045
        None, "--top", help="How many worst samples --per-sample lists (default 10)."
    ),
    detect_threshold: Optional[float] = typer.Option(  # noqa: UP045
        None,
        "--detect-threshold",
        help="Also report recall, precision and F1 of 'prediction > T' against the true hits.",
    ),
    fail_above: Optional[float] = typer.Option(  # noqa: UP045
        None, "--fail-above", help="Exit with code 1 when the ACB-MSE is above this (a CI gate)."
    ),
    nan_policy: str = typer.Option(
        "raise",
        "--nan-policy",
        help="NaN/Inf in either file: raise (an error saying how many, and where) or omit (leave them out).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="Where the arithmetic runs: auto (CUDA when present), cpu, cuda, cuda:N."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    chunk_elements: Optional[int] = typer.Option(  # noqa: UP045
        None, "--chunk-elements", hidden=True, help="Elements per chunk (for tests)."
    ),
) -> None:
    """Per-class error report of stored predictions against targets (MSE, MAE, ACB-MSE...).

    The files are streamed in chunks (any size, bounded memory) and the statistics summed in
    float64.  Under torchrun (python -m torch.distributed.run --nproc-per-node N -m acbmse_cli
    eval ...) the processes split the work and rank 0 prints.

    Exit codes: 0 ok; 1 the ACB-MSE is above --fail-above; 2 bad usage or bad input (a missing,
    corrupt or mismatched file, NaN/Inf without --nan-policy omit, a bad option).
    """
    from acbmse_cli.evaluate import (
        EvalOptions,
        finish_distributed,
        init_distributed,
        parse_names,
        parse_numbers,
    )

    _check_report_options(output_format, fail_above)
    rank, _ = init_distributed()
    try:
        with _errors_said_by_rank_zero(rank):
            weights = None if class_weights is None else parse_numbers(class_weights, "--class-weights")
            names = None if class_names is None else parse_names(class_names, "--class-names")
            options = EvalOptions(
                pred_key=pred_key,
                target_key=target_key,
                labels=labels,
                hit_threshold=hit_threshold,
                hit_weight=hit_weight,
                nonhit_weight=nonhit_weight,
                class_weights=weights,
                class_names=names,
                per_sample=per_sample,
                top=top,
                detect_threshold=detect_threshold,
                nan_policy=nan_policy,
                device=device,
                chunk_elements=chunk_elements,
            )
            result = _evaluate_with_progress(pred, target, options, show=rank == 0 and not quiet)
    finally:
        finish_distributed()
    if rank == 0:
        _print_report(result, output_format)
    _apply_gate(result.acb_mse, fail_above, speak=rank == 0)


def _check_report_options(output_format: str, fail_above: float | None) -> None:
    if output_format not in ("table", "json", "csv"):
        raise InputError(f"--format must be table, json or csv, got {output_format!r}")
    if fail_above is not None and math.isnan(fail_above):
        raise InputError("--fail-above must be a number, got nan")


@contextlib.contextmanager
def _errors_said_by_rank_zero(rank: int) -> Iterator[None]:
    """Bad input ends every rank; rank 0 alone says why (the others exit with its code, silently)."""
    try:
        yield
    except InputError:
        if rank != 0:
            raise typer.Exit(InputError.exit_code) from None
        raise


def _evaluate_with_progress(pred: str, target: str, options: EvalOptions, *, show: bool) -> EvalResult:
    """The evaluation, with a progress bar on stderr where ``show`` and stderr is a terminal."""
    from acbmse_cli.evaluate import evaluate
    from acbmse_cli.report import DelayedProgress

    if not (show and sys.stderr.isatty()):
        return evaluate(pred, target, options)
    with DelayedProgress() as bar:
        return evaluate(pred, target, options, progress=bar)


def _print_report(result: EvalResult, output_format: str) -> None:
    """The report on stdout (a note on stderr for omitted elements); a reader that stops reading
    (``| head``) is not an error."""
    from acbmse_cli.report import render_csv, render_json, render_table, stdout_console

    if result.omitted:
        sys.stderr.write(f"acbmse: left out {result.omitted} elements with NaN or Inf (--nan-policy omit)\n")
    try:
        if output_format == "json":
            sys.stdout.write(render_json(result))
        elif output_format == "csv":
            sys.stdout.write(render_csv(result))
        else:
            render_table(result, stdout_console())
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at devnull so that the final flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _apply_gate(score: float, fail_above: float | None, *, speak: bool) -> None:
    """Exit with code 1 unless the score is at or below ``fail_above``: a NaN score fails."""
    if fail_above is None or score <= fail_above:
        return
    if speak:
        verdict = "is not a number, which fails" if math.isnan(score) else "is above"
        sys.stderr.write(f"acbmse: ACB-MSE {score:.6g} {verdict} --fail-above {fail_above:g}\n")
    raise typer.Exit(1)


# --------------------------------------------------------------------------- curves


@app.command()
def curves(
    hit_weight: float = typer.Option(1.0, "--hit-weight", help="A: ACB-MSE weight of the hit class (>= 0)."),
    nonhit_weight: float = typer.Option(
        1.0, "--nonhit-weight", help="B: ACB-MSE weight of the non-hit class (>= 0)."
    ),
    value: float = typer.Option(
        100.0, "--value", help="ToF value of a hit pixel, 1e-100 to 1e100; other pixels are 0."
    ),
    recovery: float = typer.Option(
        0.5,
        "--recovery",
        help=(
            "Share of the hit pixels the prediction keeps in figures 1 and 3, in [0, 1]. "
            "Kept pixels = recovery x hit pixels, rounded to the nearest pixel (halves up)."
        ),
    ),
    pixels: int = typer.Option(
        100,
        "--pixels",
        help=(
            "Image size of figures 1 and 3, 2 to 10000 (the signal grows 2, 4, ... pixels up to all). "
            "Figure 2 uses the nearest multiple of 6, so that its signal is exactly a sixth of the image."
        ),
    ),
    device: str = typer.Option(
        "auto", "--device", help="Where the arithmetic runs: auto (CUDA when present), cpu, cuda, cuda:N."
    ),
    out: str = typer.Option("Images", "--out", help="Folder for the figures, created if missing."),
    image_format: Literal["png", "svg", "pdf"] = typer.Option(
        "png", "--image-format", help="Image file format."
    ),
    output_format: Literal["table", "json", "csv"] = typer.Option(
        "table",
        "--format",
        help="stdout: rich tables of telling points (table), or all the numbers (json, csv).",
    ),
) -> None:
    """Regenerate the loss-response figures (loss_curve_1/2/3) from the project's own loss code.

    1: loss against signal size at a fixed recovery (ACB-MSE flat, MSE and MAE growing).
    2: loss against recovery and overshoot (none returned, exact recovery, whole image lit).
    3: gradient mass on the signal, sum over hit pixels of |d loss / d prediction|, along sweep 1.
    """
    from acbmse_cli._files import OutputDir
    from acbmse_cli.curves import CurvesOptions, run_curves
    from acbmse_cli.devices import resolve_device
    from acbmse_cli.plots import write_figures
    from acbmse_cli.report import render_curves_table, render_written

    options = CurvesOptions(
        hit_weight=hit_weight, nonhit_weight=nonhit_weight, value=value, recovery=recovery, pixels=pixels
    )
    folder = OutputDir(out, option="--out")
    data = run_curves(options, device=resolve_device(device))
    written = write_figures(data, folder, image_format)
    if output_format == "json":
        sys.stdout.write(data.to_json() + "\n")
    elif output_format == "csv":
        sys.stdout.write(data.to_csv())
    else:
        from rich.console import Console

        console = Console()
        render_curves_table(data, console)
        render_written(written, console)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps per loss (>= 1)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Frames per training step (>= 1)."),
    seed: int = typer.Option(
        0, "--seed", help="Seeds the data and the initial weights (0 to 2**63 - 1); CPU runs repeat exactly."
    ),
    device: str = typer.Option(
        "auto", "--device", help="Where to train: auto (CUDA when present), cpu, cuda, cuda:N or mps."
    ),
    losses: str = typer.Option(
        "mse,mae,acb_mse", "--losses", help="Comma-separated subset of mse, mae, acb_mse, in table order."
    ),
    hit_weight: float = typer.Option(1.0, "--hit-weight", help="A: ACB-MSE weight of the hit class (>= 0)."),
    nonhit_weight: float = typer.Option(
        1.0, "--nonhit-weight", help="B: ACB-MSE weight of the non-hit class (>= 0)."
    ),
    eval_frames: int = typer.Option(200, "--eval-frames", help="Frames in the held-out set (>= 1)."),
    out: Optional[str] = typer.Option(  # noqa: UP045 - typer reads the annotation
        None, "--out", help="Folder for the figure demo.png (held-out frames and loss curves)."
    ),
    save_data: Optional[str] = typer.Option(  # noqa: UP045 - typer reads the annotation
        None,
        "--save-data",
        help=(
            "Folder for the held-out set as .npy files: input.npy, target.npy and pred_<loss>.npy, "
            "float32 (N, 1, H, W); e.g. acbmse eval DIR/pred_acb_mse.npy DIR/target.npy."
        ),
    ),
    output_format: Literal["table", "json"] = typer.Option(
        "table", "--format", help="stdout: a rich table (table) or one JSON object {loss: {metric: value}}."
    ),
    threads: Optional[int] = typer.Option(  # noqa: UP045 - typer reads the annotation
        None, "--threads", help="torch CPU threads (default: half the CPUs available, 1 to 4)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars on stderr."),
    frame_size: str = typer.Option("88x128", "--frame-size", hidden=True),
) -> None:
    """Train one small denoising autoencoder per loss (MSE, MAE, ACB-MSE) on synthetic detector frames.

    Same initial weights, batches, optimiser and steps for every loss.
    Each model is then scored on a held-out set: hit recall, precision, F1
    (a hit is detected where the output is above 10, half the smallest hit
    value), the share of blank outputs (no pixel above 10), MSE per class.
    """
    from acbmse_cli._files import OutputDir
    from acbmse_cli.demo import DemoOptions, parse_frame_size, parse_losses, run_demo, save_outputs
    from acbmse_cli.devices import resolve_device
    from acbmse_cli.report import TrainingProgress, render_demo_table, render_written

    height, width = parse_frame_size(frame_size)
    options = DemoOptions(
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        losses=parse_losses(losses),
        hit_weight=hit_weight,
        nonhit_weight=nonhit_weight,
        eval_frames=eval_frames,
        height=height,
        width=width,
        threads=threads,
    )
    figure_dir = None if out is None else OutputDir(out, option="--out")
    data_dir = None if save_data is None else OutputDir(save_data, option="--save-data")
    torch_device = resolve_device(device)
    with TrainingProgress(options.losses, options.steps, enabled=not quiet) as progress:
        result = run_demo(options, device=torch_device, progress=progress.callback)
    written = save_outputs(result, data_dir=data_dir, figure_dir=figure_dir)
    if output_format == "json":
        import json

        sys.stdout.write(json.dumps(result.metrics(), indent=2) + "\n")
    else:
        from rich.console import Console

        console = Console()
        render_demo_table(result, console)
        render_written(written, console)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``acbmse`` and ``python -m acbmse_cli``."""
    try:
        result = app(args=argv, prog_name="acbmse", standalone_mode=False)
    except InputError as exc:
        _error_line(str(exc))
        sys.exit(InputError.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _error_line("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors of the parser (unknown option, bad value, missing argument)
        # carry format_message and exit_code; anything else is a bug and keeps its traceback.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        message = exc.format_message().strip()
        if message:  # (a bare `acbmse` has printed the help already and says nothing more)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error_line(message + hint)
        sys.exit(exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def _error_line(message: str) -> None:
    text = " ".join(message.split())
    sys.stderr.write(f"acbmse: error: {text}\n")
    sys.stderr.flush()
