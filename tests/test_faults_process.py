"""Faults of the process around a command, each as a class rather than an instance: closed and full
standard streams, signals at every moment of a write, stray torchrun variables, destinations that cannot
be written, control characters in printed names, and a gate message that must tell two numbers apart.

The promise under test, for every command: one line on stderr naming the problem, exit code 2 for bad
input or a failed write (1 only for a failed ``--fail-above``), 128 + N for signal N, never a traceback,
never a temporary file or a half-written file left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acbmse_cli.cli import main

DRIVER = Path(__file__).with_name("fault_driver.py")
TINY_DEMO = ["demo", "--steps", "2", "--batch-size", "2", "--eval-frames", "3", "--frame-size", "16x24"]
TINY_DEMO += ["--device", "cpu", "--threads", "1", "-q"]
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and k != "FORCE_COLOR"}
    return {**env, "COLUMNS": "80", "NO_COLOR": "1", **extra}


def run(
    argv: list[str],
    cwd: Path,
    *,
    shell_redirect: str = "",
    env: dict[str, str] | None = None,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """``python -m acbmse_cli ARGV`` in ``cwd``; ``shell_redirect`` (e.g. ``>&-``) applied by ``sh``."""
    command = [sys.executable, "-m", "acbmse_cli", *argv]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        command,
        cwd=cwd,
        env=env or environment(),
        text=True,
        timeout=300,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def assert_one_error_line(stderr: str, fragment: str = "") -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("acbmse: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert fragment in errors[0], stderr
    return errors[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(5)
    target = np.where(rng.random((5, 4, 6)) < 0.2, 40.0, 0.0).astype(np.float32)
    np.save(folder / "pred.npy", (target + rng.normal(0, 1, target.shape)).astype(np.float32))
    np.save(folder / "target.npy", target)
    return str(folder / "pred.npy"), str(folder / "target.npy")


# --------------------------------------------------------------------------- closed and full streams


def stream_commands(pair: tuple[str, str]) -> dict[str, list[str]]:
    """A command line of every kind that writes to stdout."""
    return {
        "help": ["--help"],
        "version": ["--version"],
        "bare": [],
        "eval": ["eval", *pair, "--format", "json", "--device", "cpu"],
        "curves": ["curves", "--pixels", "10", "--format", "csv", "--out", "figs", "--device", "cpu"],
        "demo": [*TINY_DEMO, "--format", "json"],
    }


BAD_INPUT = {
    "usage": ["--bogus"],
    "eval": ["eval", "missing.npy", "missing.npy"],
    "curves": ["curves", "--pixels", "1"],
    "demo": ["demo", "--losses", "nope"],
}
STDOUT_FAULTS = {">&-": "Bad file descriptor", ">/dev/full": "No space left on device"}


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")


@needs_dev_full
@pytest.mark.parametrize("redirect", list(STDOUT_FAULTS))
@pytest.mark.parametrize("command", ["help", "version", "bare", "eval", "curves", "demo"])
def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_2(
    pair: tuple[str, str], tmp_path: Path, command: str, redirect: str
) -> None:
    result = run(stream_commands(pair)[command], tmp_path, shell_redirect=redirect)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, f"cannot write to stdout: {STDOUT_FAULTS[redirect]}")


@needs_dev_full
@pytest.mark.parametrize(
    ("command", "redirect"),
    [
        ("help", "2>&-"),
        ("help", "2>/dev/full"),
        ("eval", "2>&-"),
        ("curves", "2>/dev/full"),
        ("demo", "2>&-"),
    ],
)
def test_a_stderr_that_cannot_be_written_changes_nothing_else(
    pair: tuple[str, str], tmp_path: Path, command: str, redirect: str
) -> None:
    result = run(stream_commands(pair)[command], tmp_path, shell_redirect=redirect)
    assert result.returncode == 0
    assert result.stdout.strip()
    if command in ("eval", "demo"):
        json.loads(result.stdout)


STDERR_FAULTS = ("2>&-", "2>/dev/full", ">&- 2>&-", ">/dev/full 2>/dev/full")


@needs_dev_full
@pytest.mark.parametrize(
    ("command", "redirect"),
    [("usage", r) for r in STDERR_FAULTS]
    + [(c, STDERR_FAULTS[i]) for i, c in enumerate(("eval", "curves", "demo"), start=1)],
)
def test_bad_input_is_exit_2_whatever_the_streams(tmp_path: Path, command: str, redirect: str) -> None:
    result = run(BAD_INPUT[command], tmp_path, shell_redirect=redirect)
    assert result.returncode == 2


def test_a_closed_stdout_never_lends_its_descriptor_to_a_written_file(tmp_path: Path) -> None:
    argv = ["curves", "--pixels", "10", "--out", "figs", "--device", "cpu"]
    result = run(argv, tmp_path, shell_redirect=">&-")
    assert result.returncode == 2
    for image in (tmp_path / "figs").iterdir():  # no report text landed in a figure
        assert image.read_bytes().startswith(b"\x89PNG"), image


# --------------------------------------------------------------------------- signals during writes


def moments(files: int) -> list[str]:
    """Every kind of moment of a write of ``files`` files, at its first and last file."""
    ends = sorted({0, files - 1})
    return ["compute", "mkdir", *(f"{kind}:{i}" for kind in ("open", "write", "rename") for i in ends)]


SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")
# every moment of the curves' three files; for the demo's four (two folders, one file replaced) a few
CASES = [("curves", moment, SIGNALS[i % len(SIGNALS)]) for i, moment in enumerate(moments(3))]
CASES += [("demo", "mkdir", "SIGTERM"), ("demo", "open:0", "SIGHUP"), ("demo", "write:3", "SIGINT")]
CASES += [("demo", "rename:1", "SIGTERM")]


def signalled(command: str, moment: str, signame: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if command == "curves":
        argv = ["curves", "--pixels", "10", "--format", "csv", "--out", "out/figs", "--device", "cpu"]
    else:
        argv = [*TINY_DEMO, "--losses", "mse", "--format", "json", "--out", "D", "--save-data", "D/data"]
    return subprocess.run(
        [sys.executable, str(DRIVER), signame, moment, *argv],
        cwd=cwd, env=environment(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize(("command", "moment", "signame"), CASES)
def test_a_signal_at_any_moment_of_a_write_leaves_all_files_or_none(
    tmp_path: Path, command: str, moment: str, signame: str
) -> None:
    (tmp_path / "D").mkdir()
    old = tmp_path / "D" / "demo.png"
    old.write_bytes(b"the previous figure")
    result = signalled(command, moment, signame, tmp_path)
    assert result.returncode == 128 + signal.Signals[signame].value, result.stderr
    told = "interrupted" if signame == "SIGINT" else f"terminated by {signame}"
    assert_one_error_line(result.stderr, told)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    written = (
        [tmp_path / "out" / "figs" / f"loss_curve_{i}.png" for i in (1, 2, 3)]
        if command == "curves"
        else [tmp_path / "D" / "data" / n for n in ("input.npy", "target.npy", "pred_mse.npy")] + [old]
    )
    if moment.startswith("rename"):  # the renames are done together: every file is there, whole
        for path in written:
            if path.suffix == ".npy":
                assert np.load(path).shape == (3, 1, 16, 24)
            else:
                assert path.read_bytes().startswith(b"\x89PNG"), path
    else:  # nothing replaced, and no folder that the write made is left
        assert old.read_bytes() == b"the previous figure"
        assert not (tmp_path / "out").exists()
        assert not (tmp_path / "D" / "data").exists()


def test_an_ignored_hangup_stays_ignored(tmp_path: Path) -> None:
    """``nohup`` runs a command with SIGHUP ignored: it must survive the hangup and finish."""
    result = subprocess.run(
        [sys.executable, "-c", "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         f"import runpy, sys; sys.argv = {[str(DRIVER), 'SIGHUP', 'write:0', 'curves', '--pixels', '10', '--format', 'csv', '--out', 'figs']!r}; "  # noqa: E501
         "runpy.run_path(sys.argv[0], run_name='__main__')"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [f"loss_curve_{i}.png" for i in (1, 2, 3)]


# --------------------------------------------------------------------------- stray torchrun variables


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=2"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"}, "MASTER_PORT="),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "first", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "LOCAL_RANK=",
        ),
    ],
)
def test_stray_torchrun_variables_are_one_line_naming_the_variable(
    pair: tuple[str, str], tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    result = run(["eval", *pair, "--device", "cpu"], tmp_path, env=environment(**variables))
    assert result.returncode == 2, result.stderr
    line = assert_one_error_line(result.stderr, named)
    assert "unset WORLD_SIZE" in line
    assert result.stdout == ""


def test_a_world_of_one_is_one_process(pair: tuple[str, str], tmp_path: Path) -> None:
    env = environment(WORLD_SIZE="1")
    result = run(["eval", *pair, "--format", "json", "--device", "cpu"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["elements"] == 120


# --------------------------------------------------------------------------- destinations checked first


def _refuse_training(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("training started although a destination cannot be written")


@pytest.mark.parametrize(
    ("option", "blocked"),
    [("--out", "demo.png"), ("--save-data", "target.npy"), ("--save-data", "pred_mse.npy")],
)
def test_demo_refuses_a_destination_that_is_a_folder_before_training(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    blocked: str,
) -> None:
    import acbmse_cli.demo

    monkeypatch.setattr(acbmse_cli.demo, "run_demo", _refuse_training)
    (tmp_path / blocked).mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_DEMO, "--losses", "mse", option, str(tmp_path)])
    assert exit_info.value.code == 2
    line = assert_one_error_line(capsys.readouterr().err, f"{tmp_path / blocked}: it is a folder")
    assert line == f"acbmse: error: cannot write {tmp_path / blocked}: it is a folder"


@pytest.mark.parametrize("inside", [False, True])
def test_demo_refuses_a_dangling_link_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], inside: bool
) -> None:
    import acbmse_cli.demo

    monkeypatch.setattr(acbmse_cli.demo, "run_demo", _refuse_training)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_DEMO, "--out", str(link / "sub" if inside else link)])
    assert exit_info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "broken symbolic link")


# --------------------------------------------------------------------------- names printed safely


ESCAPE_NAME = "p\x1b]0;owned\x07\x1b[31m\x9b\x7f.npy"
ESCAPED = "p\\x1b]0;owned\\x07\\x1b[31m\\x9b\\x7f.npy"


def test_control_characters_of_a_file_name_are_escaped_in_the_table_title(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    (tmp_path / ESCAPE_NAME).write_bytes(Path(pair[0]).read_bytes())
    result = run(["eval", ESCAPE_NAME, pair[1], "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\x9b" not in result.stdout
    assert f"{ESCAPED} vs" in result.stdout


@pytest.mark.parametrize("where", ["missing file", "member name", "written file"])
def test_control_characters_are_escaped_in_every_stderr_line(
    pair: tuple[str, str], tmp_path: Path, where: str
) -> None:
    if where == "missing file":
        result = run(["eval", ESCAPE_NAME, pair[1]], tmp_path)
    elif where == "member name":  # the name comes from inside the file
        np.savez(tmp_path / "two.npz", **{"a\x1b[2J": np.zeros(3), "b": np.zeros(3)})
        result = run(["eval", "two.npz", pair[1]], tmp_path)
    else:
        result = run(["curves", "--pixels", "10", "--format", "csv", "--out", "f\x1b[31m"], tmp_path)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b" in result.stderr


def test_an_undecodable_file_name_is_shown_by_its_bytes(pair: tuple[str, str], tmp_path: Path) -> None:
    name = os.fsdecode(b"t\xff.npy")
    try:
        (tmp_path / name).write_bytes(Path(pair[1]).read_bytes())
    except (UnicodeEncodeError, OSError):
        pytest.skip("the file system takes no undecodable names")
    result = run(["eval", pair[0], name, "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "t\\xff.npy" in result.stdout


# --------------------------------------------------------------------------- the gate's message


def gate_line(pair: tuple[str, str], limit: float, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *pair, "--format", "json", "--device", "cpu", "--fail-above", repr(limit)])
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip()


def test_the_gate_message_tells_the_two_numbers_apart(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["eval", *pair, "--format", "json", "--device", "cpu"])
    score = json.loads(capsys.readouterr().out)["acb_mse"]
    for limit in (float(np.nextafter(score, 0.0)), score * (1 - 1e-9), float(f"{score:.6g}") - 1e-12):
        if not limit < score:
            continue
        line = gate_line(pair, limit, capsys)
        shown, _, rest = line.removeprefix("acbmse: ACB-MSE ").partition(" is above --fail-above ")
        assert shown != rest, line
        assert float(shown) > float(rest), line
    assert gate_line(pair, 1.0, capsys) == f"acbmse: ACB-MSE {score:.6g} is above --fail-above 1"
