"""The command-line shell: help, version, errors, and that --help stays free of torch and matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from acbmse_cli import __version__
from acbmse_cli.cli import main


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acbmse_cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def imported_modules(*args: str) -> set[str]:
    """Top-level names of every module that ``python -X importtime -m acbmse_cli ARGS`` imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "acbmse_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    assert "acbmse_cli" in names  # the parse found the package itself: it reads what it should
    return names


def commands() -> list[str]:
    from acbmse_cli.cli import app

    return [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]


def test_help_imports_neither_torch_nor_matplotlib():
    names = imported_modules("--help")
    assert "torch" not in names
    assert "matplotlib" not in names
    assert "numpy" not in names


@pytest.mark.parametrize("command", commands())
def test_command_help_imports_neither_torch_nor_matplotlib(command):
    names = imported_modules(command, "--help")
    assert "torch" not in names
    assert "matplotlib" not in names


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"acbmse {__version__}"


def test_python_dash_m_is_the_same_program():
    result = run_module("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"acbmse {__version__}"
    helped = run_module("--help")
    assert helped.returncode == 0 and "Usage" in helped.stdout and "Exit codes" in helped.stdout


@pytest.mark.parametrize(("args", "fragment"), [(["--bogus"], "--bogus"), (["nope"], "nope")])
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    result = run_module(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("acbmse: error:") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_bare_command_prints_help_and_no_empty_error_line():
    result = run_module()
    assert result.returncode == 2
    assert "Usage" in result.stdout + result.stderr
    assert "acbmse: error" not in result.stderr
