"""The ``acbmse`` command line: a thin Typer layer over the library.

Commands parse their options, call the library and render; nothing is
computed here.  torch and matplotlib are imported inside the commands, never
at module level, so ``acbmse --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import Literal, NoReturn, Optional

import typer

from acbmse_cli._version import __version__
from acbmse_cli.errors import InputError

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


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line naming the problem to stderr and exit with ``code``."""
    raise InputError(message) if code == 2 else typer.Exit(code)


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


# --------------------------------------------------------------------------- curves


@app.command()
def curves(
    hit_weight: float = typer.Option(1.0, "--hit-weight", help="A: ACB-MSE weight of the hit class (>= 0)."),
    nonhit_weight: float = typer.Option(
        1.0, "--nonhit-weight", help="B: ACB-MSE weight of the non-hit class (>= 0)."
    ),
    value: float = typer.Option(100.0, "--value", help="ToF value of a hit pixel (> 0); other pixels are 0."),
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
    from pathlib import Path

    from acbmse_cli.curves import validate_options

    validate_options(
        hit_weight=hit_weight, nonhit_weight=nonhit_weight, value=value, recovery=recovery, pixels=pixels
    )
    from acbmse_cli.plots import check_out_dir

    out_dir = Path(out)
    check_out_dir(out_dir)

    from acbmse_cli.curves import X_LABELS, Y_LABELS, compute_curves
    from acbmse_cli.devices import resolve_device
    from acbmse_cli.plots import write_figures

    data = compute_curves(
        hit_weight=hit_weight,
        nonhit_weight=nonhit_weight,
        value=value,
        recovery=recovery,
        pixels=pixels,
        device=resolve_device(device),
    )
    written = write_figures(data, out_dir, image_format)
    if output_format == "json":
        sys.stdout.write(data.to_json() + "\n")
        return
    if output_format == "csv":
        sys.stdout.write(data.to_csv())
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    titles = {
        "signal_size": f"Loss against signal size at {100 * recovery:g}% recovery",
        "recovery": (
            f"Loss against recovery (signal of {data.recovery_hits} in {data.recovery_pixels} pixels)"
        ),
        "gradient": f"{Y_LABELS['gradient']} at {100 * recovery:g}% recovery",
    }
    for sweep in data.sweeps():
        table = Table(title=titles[sweep.name], title_justify="left")
        table.add_column("point")
        table.add_column(X_LABELS[sweep.name], justify="right")
        for header in ("MSE", "MAE", "ACB-MSE"):
            table.add_column(header, justify="right")
        for label, i in sweep.marks:
            row = (sweep.x[i], sweep.mse[i], sweep.mae[i], sweep.acb_mse[i])
            table.add_row(label, *(f"{v:.6g}" for v in row))
        console.print(table)
    for path in written:
        console.print(f"Wrote {path}", markup=False, highlight=False, soft_wrap=True)


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
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error_line(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def _error_line(message: str) -> None:
    text = " ".join(message.split())
    sys.stderr.write(f"acbmse: error: {text}\n")
    sys.stderr.flush()
