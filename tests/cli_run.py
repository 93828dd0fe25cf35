"""Running the command line in-process, for the tests: exit code, stdout and stderr."""

from __future__ import annotations

import json
from typing import Any

import pytest

from acbmse_cli.cli import main


def run_cli(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``acbmse ARGS`` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def eval_json(args: list[Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``acbmse eval ARGS --format json`` on the CPU, which must succeed: its document."""
    code, out, err = run_cli(["eval", *args, "--format", "json", "--device", "cpu"], capsys)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]
