"""The ``acbmse`` command line: a thin Typer layer over the library.

Commands parse their options, call the library and render; nothing is
computed here.  torch and matplotlib are imported inside the commands, never
at module level, so ``acbmse --help`` answers at once.
"""

from __future__ import annotations

import sys
from typing import NoReturn, Optional

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
