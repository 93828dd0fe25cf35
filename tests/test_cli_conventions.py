"""The command line's conventions, command by command: help pages, one wording for one mistake,
streams (stdout data only), exit codes (1 only for the gate) and the ``run`` record of every JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acbmse_cli import __version__

COMMANDS = ("eval", "curves", "demo")
TINY_DEMO = ["demo", "--steps", "2", "--batch-size", "2", "--eval-frames", "3", "--frame-size", "16x24"]
TINY_DEMO += ["--device", "cpu", "--threads", "1", "-q"]


def acbmse(*args: str, cwd: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "acbmse_cli", *args],
        capture_output=kwargs.pop("capture_output", True),  # type: ignore[arg-type]
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(3)
    target = np.where(rng.random((6, 4, 5)) < 0.2, 50.0, 0.0).astype(np.float32)
    pred = (target + rng.normal(0.0, 1.0, target.shape)).astype(np.float32)
    np.save(folder / "pred.npy", pred)
    np.save(folder / "target.npy", target)
    return str(folder / "pred.npy"), str(folder / "target.npy")


# --------------------------------------------------------------------------- help pages


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_no_value_placeholder_for_flags(command: str) -> None:
    result = acbmse(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout and "Usage" in result.stdout


def test_eval_usage_names_its_arguments_and_groups_its_options() -> None:
    out = acbmse("eval", "--help").stdout
    assert "acbmse eval [OPTIONS] PRED... TARGET" in out
    assert "{" not in out.split("\n\n")[1]  # the usage line
    for panel in ("Input", "Classes", "Detection", "Output", "Execution"):
        assert f"─ {panel} " in out, panel
    # defaults shown the way every other command shows them
    flat = " ".join(out.split())
    for fragment in (
        "[default: 0.0]",
        "[default: 1.0]",
        "[default: 10]",
        "[default: raise]",
        "[default: auto]",
    ):
        assert fragment in flat, fragment
    assert "(default 0)" not in flat and "(default 1)" not in flat


@pytest.mark.parametrize("command", COMMANDS)
def test_fixed_choices_are_listed_in_help(command: str) -> None:
    flat = " ".join(acbmse(command, "--help").stdout.split())
    assert "table|json" in flat


def test_shell_completion_is_offered() -> None:
    root = acbmse("--help").stdout
    assert "--install-completion" in root and "--show-completion" in root
    script = acbmse("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_acbmse_completion" in script.stdout and "complete" in script.stdout


def test_bare_command_is_a_usage_error_with_the_help() -> None:
    result = acbmse()
    assert result.returncode == 2
    assert "Usage: acbmse [OPTIONS] COMMAND" in result.stdout
    assert result.stderr == ""


# --------------------------------------------------------------------------- one wording


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("acbmse: error: "), result.stderr
    return lines[0]


def test_a_wrong_format_is_worded_the_same_by_every_command(pair: tuple[str, str]) -> None:
    args = {"eval": ["eval", *pair], "curves": ["curves"], "demo": list(TINY_DEMO)}
    lines = {name: _error_line(acbmse(*argv, "--format", "JSON")) for name, argv in args.items()}
    stems = {name: line.split("'JSON'")[0] for name, line in lines.items()}
    assert len(set(stems.values())) == 1, lines
    assert all("--format" in line and "'table', 'json'" in line for line in lines.values()), lines
    nan_policy = _error_line(acbmse("eval", *pair, "--nan-policy", "skip"))
    assert nan_policy.split("'skip'")[0] == stems["eval"].replace("--format", "--nan-policy"), nan_policy


@pytest.mark.parametrize("argv", [["curves"], TINY_DEMO, [*TINY_DEMO, "--save-data"]])
def test_an_output_folder_that_is_a_file_is_worded_the_same(argv: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    option = "--save-data" if argv[-1] == "--save-data" else "--out"
    argv = argv[:-1] if option == "--save-data" else argv
    line = _error_line(acbmse(*argv, option, str(blocker)))
    assert line == f"acbmse: error: {option} {blocker} is a file, not a folder"
    assert blocker.read_text() == "keep me"


# --------------------------------------------------------------------------- streams and exit codes


def test_written_files_are_told_on_stderr_and_stdout_holds_the_table(tmp_path: Path) -> None:
    result = acbmse("curves", "--out", str(tmp_path / "figs"), "--device", "cpu", "--pixels", "20")
    assert result.returncode == 0, result.stderr
    assert "Wrote" not in result.stdout
    written = [line.removeprefix("Wrote ") for line in result.stderr.splitlines()]
    assert sorted(Path(p).name for p in written) == [
        "loss_curve_1.png",
        "loss_curve_2.png",
        "loss_curve_3.png",
    ]
    assert all(Path(p).is_file() for p in written)
    assert "Loss against signal size" in result.stdout


def test_demo_tells_written_files_on_stderr(tmp_path: Path) -> None:
    result = acbmse(*TINY_DEMO, "--format", "json", "--save-data", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # stdout is one JSON document, nothing else
    told = sorted(Path(line.removeprefix("Wrote ")).name for line in result.stderr.splitlines())
    assert told == ["input.npy", "pred_acb_mse.npy", "pred_mae.npy", "pred_mse.npy", "target.npy"]


@pytest.mark.parametrize("output_format", ["json", "csv"])
def test_curves_data_formats_write_figures_only_when_asked(output_format: str, tmp_path: Path) -> None:
    result = acbmse("curves", "--format", output_format, "--device", "cpu", "--pixels", "20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # no Images/ folder appeared
    assert result.stderr == ""
    asked = acbmse(
        "curves",
        "--format",
        output_format,
        "--device",
        "cpu",
        "--pixels",
        "20",
        "--out",
        "figs",
        cwd=tmp_path,
    )
    assert asked.returncode == 0, asked.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [f"loss_curve_{i}.png" for i in (1, 2, 3)]


def test_curves_table_still_writes_the_figures_by_default(tmp_path: Path) -> None:
    result = acbmse("curves", "--device", "cpu", "--pixels", "20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "Images").iterdir()) == [
        f"loss_curve_{i}.png" for i in (1, 2, 3)
    ]


@pytest.mark.parametrize("output_format", ["json", "csv", "table"])
def test_a_full_disk_on_stdout_is_bad_input_not_a_failed_gate(
    pair: tuple[str, str], output_format: str
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        result = acbmse("eval", *pair, "--format", output_format, stdout=full, capture_output=False,
                        stderr=subprocess.PIPE)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "acbmse: error: cannot write to stdout: No space left on device\n"


@pytest.mark.parametrize(
    "argv", [["--help"], ["eval", "--help"], ["curves", "--format", "csv", "--pixels", "40"]]
)
def test_a_reader_that_stops_reading_is_not_an_error(argv: list[str]) -> None:
    command = " ".join([sys.executable, "-m", "acbmse_cli", *argv]) + " | head -1"
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout  # the first line came through


def test_the_gate_keeps_its_code_when_the_reader_stops_reading(pair: tuple[str, str]) -> None:
    command = " ".join([sys.executable, "-m", "acbmse_cli", "eval", *pair, "--fail-above", "0.001"])
    result = subprocess.run(
        ["bash", "-c", f"{command} | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is above --fail-above" in result.stderr


def test_demo_refuses_a_batch_that_cannot_fit_before_training() -> None:
    result = acbmse("demo", "--batch-size", "100000", "--steps", "100000", "--device", "cpu", "-q")
    line = _error_line(result)
    assert "--batch-size 100000" in line and "GiB" in line and "free" in line


# --------------------------------------------------------------------------- how each JSON was made


def test_eval_json_says_how_it_was_made(pair: tuple[str, str]) -> None:
    result = acbmse(
        "eval", *pair, "--format", "json", "--hit-threshold", "0.5", "--hit-weight", "2", "--per-sample",
        "--top", "3", "--detect-threshold", "10", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run == {
        "version": __version__,
        "pred_key": None,
        "target_key": None,
        "hit_threshold": 0.5,
        "hit_weight": 2.0,
        "nonhit_weight": 1.0,
        "class_names": ["non-hit", "hit"],
        "per_sample": True,
        "top": 3,
        "detect_threshold": 10.0,
        "nan_policy": "raise",
        "device": "cpu",
    }


def test_eval_json_of_labelled_classes_names_the_labels(pair: tuple[str, str], tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, (np.arange(6 * 4 * 5).reshape(6, 4, 5) % 3).astype(np.int64))
    result = acbmse("eval", *pair, "--labels", str(labels), "--class-weights", "1,2,0.5", "--format", "json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["labels"] == str(labels) and run["class_weights"] == [1.0, 2.0, 0.5]
    assert "hit_threshold" not in run and run["version"] == __version__


def test_curves_json_says_how_it_was_made() -> None:
    result = acbmse("curves", "--format", "json", "--pixels", "24", "--value", "7", "--hit-weight", "3",
                    "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"signal_size", "recovery", "gradient", "run"}
    assert doc["run"] == {
        "version": __version__,
        "hit_weight": 3.0,
        "nonhit_weight": 1.0,
        "value": 7.0,
        "recovery": 0.5,
        "pixels": 24,
        "recovery_pixels": 24,
        "device": "cpu",
    }


def test_demo_json_says_how_it_was_made() -> None:
    result = acbmse(
        *TINY_DEMO, "--format", "json", "--seed", "5", "--losses", "acb_mse,mse", "--hit-weight", "2"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert list(doc) == ["acb_mse", "mse", "run"]
    run = doc["run"]
    assert run["version"] == __version__
    assert (run["steps"], run["batch_size"], run["seed"], run["eval_frames"]) == (2, 2, 5, 3)
    assert run["losses"] == ["acb_mse", "mse"] and run["hit_weight"] == 2.0 and run["nonhit_weight"] == 1.0
    assert run["frame_size"] == "16x24" and run["device"] == "cpu" and run["detect_threshold"] == 10.0
