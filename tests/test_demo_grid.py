"""`acbmse demo` as a grid: lists of weights and densities, several seeds, parallel runs.

Runs here are a few dozen steps on tiny frames: which loss wins is not asserted, only that every number is
what its definition says (the mean and standard deviation against numpy over the per-seed values, each run
against the single run of the same options), and that the grid runs, stops and fails as documented.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_cli
from rich.cells import cell_len
from tables import assert_fixed, parse_tables

from acbmse_cli import study
from acbmse_cli._loss_names import LOSS_COLORS, LOSS_LABELS
from acbmse_cli._signals import Terminated
from acbmse_cli.demo import DemoOptions
from acbmse_cli.study import StudyPlan, mean_and_sd, run_study

TINY_GRID = ["demo", "--steps", "40", "--batch-size", "4", "--eval-frames", "6", "--frame-size", "16x24"]
TINY_GRID += ["--threads", "1", "-q"]
# 2 densities x (MSE, MAE, ACB-MSE at B = 1 and 3) x 3 seeds = 24 runs.
GRID = [*TINY_GRID, "--nonhit-weight", "1,3", "--signal-hits", "20,40", "--seeds", "3", "--jobs", "1"]
TIMING = ("seconds", "jobs")
NOT_METRICS = {"seed", "thresholds", "seconds"}


def grid_json(capsys, *args: str) -> dict:
    code, out, err = run_cli([*GRID, "--format", "json", *args], capsys)
    assert code == 0, err
    return json.loads(out)


def without_timing(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for key in TIMING:
        doc["run"].pop(key)
    for config in doc["configs"]:
        for run in config["runs"]:
            run.pop("seconds")
    return doc


@pytest.fixture(scope="module")
def tiny_study():
    base = DemoOptions(steps=30, batch_size=4, eval_frames=6, height=16, width=24, threads=1)
    plan = StudyPlan(base, nonhit_weights=(1.0, 3.0, 10.0), signal_hits=(20, 40), seeds=2)
    return run_study(plan)


# --------------------------------------------------------------------------- the numbers


def reference_summary(values: list) -> tuple:
    """The mean and sample standard deviation of one metric over the seeds, by numpy; None where any
    seed has none, and no standard deviation of a single seed."""
    if any(v is None for v in values):
        return None, None
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def assert_close(got, want, what: str) -> None:
    if want is None:
        assert got is None, what
    else:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), what


def assert_summary(runs: list[dict], mean: dict, sd: dict) -> int:
    """Every metric's mean and sd equal numpy's over the runs; the number of values checked."""
    checked = 0
    for key in runs[0].keys() - NOT_METRICS:
        values = [run[key] for run in runs]
        if any(isinstance(v, dict) for v in values):
            if all(isinstance(v, dict) for v in values):
                for sub in values[0]:
                    want_mean, want_sd = reference_summary([v[sub] for v in values])
                    assert_close(mean[key][sub], want_mean, f"{key}.{sub}")
                    assert_close(sd[key][sub], want_sd, f"{key}.{sub}")
                    checked += 1
            else:
                assert mean[key] is None and sd[key] is None
            continue
        want_mean, want_sd = reference_summary(values)
        assert_close(mean[key], want_mean, key)
        assert_close(sd[key], want_sd, key)
        checked += 1
    assert set(mean) == set(sd) == runs[0].keys() - NOT_METRICS
    return checked


def test_grid_json_holds_every_configuration_and_its_mean_and_sd_over_seeds(capsys):
    doc = grid_json(capsys)
    assert list(doc) == ["run", "configs"]
    expected = [
        (loss, a, b, hits)
        for hits in (20, 40)
        for loss, a, b in (
            ("mse", None, None),
            ("mae", None, None),
            ("acb_mse", 1.0, 1.0),
            ("acb_mse", 1.0, 3.0),
        )
    ]
    got = [(c["loss"], c["hit_weight"], c["nonhit_weight"], c["signal_hits"]) for c in doc["configs"]]
    assert got == expected
    spread = 0
    for config in doc["configs"]:
        assert list(config) == ["loss", "hit_weight", "nonhit_weight", "signal_hits", "runs", "mean", "sd"]
        assert [run["seed"] for run in config["runs"]] == [0, 1, 2]
        for run in config["runs"]:  # named as in eval's JSON
            assert {"average_precision", "best_f1", "signal_retained", "noise_removed", "mse_hit",
                    "mse_nonhit", "blank_fraction"} <= set(run)  # fmt: skip
        assert assert_summary(config["runs"], config["mean"], config["sd"]) > 15
        spread += sum(1 for v in config["sd"].values() if isinstance(v, float) and v > 0)
    assert spread > 0  # the seeds do differ: the check above compared real spreads, not zeros
    run = doc["run"]
    assert run["seeds"] == [0, 1, 2] and run["hit_weights"] == [1.0] and run["nonhit_weights"] == [1.0, 3.0]
    assert run["signal_hits"] == [20, 40] and run["losses"] == ["mse", "mae", "acb_mse"]
    assert (run["steps"], run["batch_size"], run["eval_frames"], run["frame_size"]) == (40, 4, 6, "16x24")
    assert run["runs"] == run["finished_runs"] == 24 and run["interrupted"] is False
    assert run["threads"] == 1 and run["device"] == "cpu" and "version" in run


def test_mean_and_sd_by_hand():
    runs = [
        {"ap": 0.25, "count": 3, "precision": None, "best": {"f1": 0.5}, "name": "x"},
        {"ap": 0.5, "count": 4, "precision": 0.2, "best": {"f1": 0.7}, "name": "y"},
        {"ap": 1.0, "count": 8, "precision": 0.4, "best": None, "name": "z"},
    ]
    mean, sd = mean_and_sd(runs)
    assert mean["ap"] == pytest.approx(statistics.fmean([0.25, 0.5, 1.0]))
    assert sd["ap"] == pytest.approx(statistics.stdev([0.25, 0.5, 1.0]))
    assert (mean["count"], sd["count"]) == pytest.approx((5.0, statistics.stdev([3, 4, 8])))
    assert mean["precision"] is None and sd["precision"] is None  # undefined for one seed
    assert mean["best"] is None and sd["best"] is None
    assert "name" not in mean
    one_mean, one_sd = mean_and_sd(runs[1:2])
    assert one_mean["ap"] == 0.5 and one_sd["ap"] is None and one_sd["best"] == {"f1": None}


def test_each_grid_run_is_the_single_run_of_its_options(capsys):
    doc = grid_json(capsys)
    config = next(c for c in doc["configs"] if c["signal_hits"] == 40 and c["nonhit_weight"] == 3.0)
    seed = config["runs"][1]
    code, out, err = run_cli(
        [*TINY_GRID, "--losses", "acb_mse", "--nonhit-weight", "3", "--signal-hits", "40", "--seed", "1",
         "--format", "json"], capsys)  # fmt: skip
    assert code == 0, err
    single = json.loads(out)
    assert single["run"]["signal_hits"] == 40 and single["run"]["seed"] == 1
    assert {k: v for k, v in seed.items() if k not in NOT_METRICS} == single["acb_mse"]
    assert seed["thresholds"] == single["run"]["thresholds"]
    mse = next(c for c in doc["configs"] if c["signal_hits"] == 20 and c["loss"] == "mse")["runs"][0]
    code, out, err = run_cli(
        [*TINY_GRID, "--losses", "mse", "--signal-hits", "20", "--format", "json"], capsys
    )
    assert {k: v for k, v in mse.items() if k not in NOT_METRICS} == json.loads(out)["mse"]


def test_parallel_runs_give_the_serial_results(capsys):
    serial = grid_json(capsys)
    parallel = grid_json(capsys, "--jobs", "2")
    assert serial["run"]["jobs"] == 1 and parallel["run"]["jobs"] == 2
    assert without_timing(parallel) == without_timing(serial)


def test_one_value_and_one_seed_keep_the_single_run_shape(capsys):
    code, out, _ = run_cli(
        [*TINY_GRID, "--nonhit-weight", "3", "--signal-hits", "40", "--format", "json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == ["mse", "mae", "acb_mse", "run"]
    assert doc["run"]["nonhit_weight"] == 3.0 and doc["run"]["signal_hits"] == 40
    code, out, _ = run_cli([*TINY_GRID, "--format", "json"], capsys)
    assert "signal_hits" not in json.loads(out)["run"]  # not asked for: the record is today's


# --------------------------------------------------------------------------- the table


def _render(result, width: int) -> str:
    from rich.console import Console

    from acbmse_cli.report import render_study_table

    out = io.StringIO()
    render_study_table(result, Console(file=out, width=width, color_system=None))
    return out.getvalue()


def _rows(text: str) -> list[dict[str, str]]:
    """The study table's rows, its parts (split where the width is short) joined by row."""
    tables = parse_tables(text)
    rows = [dict(zip(tables[0].headers, row, strict=True)) for row in tables[0].rows]
    for table in tables[1:]:
        for merged, row in zip(rows, table.rows, strict=True):
            for header, cell in zip(table.headers, row, strict=True):
                assert merged.setdefault(header, cell) == cell
    return rows


@pytest.mark.parametrize("width", [80, 120, 250])
def test_table_holds_the_mean_and_sd_of_every_row_whole_at_any_width(tiny_study, width):
    text = _render(tiny_study, width)
    assert "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= width
    rows = _rows(text)
    summaries = tiny_study.summaries()
    assert len(rows) == len(summaries) == 10
    columns = {
        "AP": ("average_precision", 3),
        "best F1": ("best_f1", 3),
        "signal retained": ("signal_retained", 3),
        "noise removed": ("noise_removed", 3),
        "blank frames": ("blank_fraction", 3),
        "MSE hits": ("mse_hit", 1),
        "MSE non-hits": ("mse_nonhit", 2),
    }
    for row, summary in zip(rows, summaries, strict=True):
        assert row["loss"] == LOSS_LABELS[summary["loss"]] and row["signal hits"] == str(
            summary["signal_hits"]
        )
        assert row["B"] == ("–" if summary["nonhit_weight"] is None else f"{summary['nonhit_weight']:g}")
        assert row["seeds"] == "2"
        for header, (metric, digits) in columns.items():
            values = [run[metric] for run in summary["runs"]]
            if metric == "best_f1":
                values = [v["f1"] for v in values]
            mean, sd = reference_summary(values)
            if mean is None:
                assert row[header] == "n/a"
                continue
            shown_mean, shown_sd = row[header].split(" ± ")
            assert_fixed(shown_mean, mean, digits)
            assert_fixed(shown_sd, sd, digits)
    assert "sample standard deviation over the seeds" in " ".join(text.split())


def test_table_on_stdout_and_the_estimate_on_stderr(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    args = [a for a in GRID if a != "-q"]
    code, out, err = run_cli([*args, "--seeds", "2"], capsys)
    assert code == 0
    assert out.startswith(
        "6 held-out frames of 16x24 after 40 steps of 4 frames; mean ± sd over seeds 0 to 1"
    )
    assert "grid:" not in out and len(_rows(out)) == 8
    (line,) = err.splitlines()  # stderr is no terminal here: no bar, only the estimate
    assert line.startswith("grid: 2 densities x 4 configurations x 2 seeds = 16 runs of 40 steps, about ")
    assert line.endswith(" on 1 process")


def test_progress_bar_over_the_grid_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal (rich 14 and later)
    monkeypatch.setenv("FORCE_COLOR", "1")  # the same for earlier rich releases
    args = [a for a in GRID if a != "-q"]
    code, out, err = run_cli([*args, "--seeds", "2", "--format", "json"], capsys)
    assert code == 0
    assert "16/16 runs" in err and "grid: 2 densities" in err
    assert json.loads(out)["run"]["finished_runs"] == 16  # stdout stays plain JSON
    code, out, err = run_cli([*GRID, "--seeds", "2", "--format", "json"], capsys)  # -q: nothing at all
    assert code == 0 and err == ""


# --------------------------------------------------------------------------- the figure


def test_figure_shows_ap_and_best_f1_against_the_ratio_and_the_operating_points(tiny_study):
    fig = study._draw_figure(tiny_study)
    axes = fig.axes
    assert len(axes) == 6  # per density: AP, best F1, operating points
    summaries = tiny_study.summaries()
    for col, hits in enumerate((20, 40)):
        rows = [s for s in summaries if s["signal_hits"] == hits]
        ap_axes, f1_axes, points_axes = axes[3 * col : 3 * col + 3]
        assert ap_axes.get_title() == f"about {hits} signal hits per frame"
        for ax, metric in ((ap_axes, "average_precision"), (f1_axes, "best_f1")):
            assert ax.get_xlabel() == "B / A (non-hit weight / hit weight)" and ax.get_xscale() == "log"
            assert "held-out set" in ax.get_ylabel()
            acb = [s for s in rows if s["loss"] == "acb_mse"]
            (bars,) = [c for c in ax.containers if c.get_label() == "ACB-MSE, A = 1"]
            line = bars.lines[0]
            x, y = line.get_data()
            assert list(x) == [1.0, 3.0, 10.0] and line.get_color() == LOSS_COLORS["acb_mse"]
            values = [[r[metric] if metric != "best_f1" else r[metric]["f1"] for r in s["runs"]] for s in acb]
            np.testing.assert_allclose(np.asarray(y, dtype=float), [np.mean(v) for v in values], rtol=1e-12)
            for loss in ("mse", "mae"):  # a band: the mean as a horizontal line, in the loss's colour
                (band,) = [ln for ln in ax.get_lines() if ln.get_label() == LOSS_LABELS[loss]]
                summary = next(s for s in rows if s["loss"] == loss)
                runs = [r[metric] if metric != "best_f1" else r[metric]["f1"] for r in summary["runs"]]
                assert (
                    band.get_ydata()[0] == pytest.approx(np.mean(runs))
                    and band.get_color() == LOSS_COLORS[loss]
                )
        assert "recall" in points_axes.get_xlabel() and "precision" in points_axes.get_ylabel()
        texts = sorted(t.get_text() for t in points_axes.texts)
        assert texts == sorted(["MSE", "MAE", "B/A 1", "B/A 3", "B/A 10"])


def test_out_writes_the_figure_and_tells_it(capsys, tmp_path):
    code, _, err = run_cli([*GRID, "--seeds", "2", "--format", "json", "--out", tmp_path / "figs"], capsys)
    assert code == 0
    figure = tmp_path / "figs" / "study.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert err.splitlines() == [f"Wrote {figure}"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figs", "study.png"]  # no temporaries


# --------------------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--nonhit-weight", "1,,3"], "--nonhit-weight"),
        (["--nonhit-weight", "1,x"], "--nonhit-weight"),
        (["--hit-weight", "1,-1"], "--hit-weight"),
        (["--hit-weight", "1,nan"], "--hit-weight"),
        (["--nonhit-weight", "3,3.0"], "--nonhit-weight names 3.0 twice"),
        (["--signal-hits", "20,20"], "--signal-hits names 20 twice"),
        (["--signal-hits", "20,5"], "--signal-hits"),
        (["--signal-hits", "20,50.5"], "--signal-hits"),
        (["--signal-hits", "20,49"], "--signal-hits must be at most 48"),  # an eighth of 16 x 24
        (["--seeds", "0"], "--seeds"),
        (["--seeds", "two"], "--seeds"),
        (["--seeds", "400"], "more than 1000"),  # 3 losses x 400 seeds
        (["--seed", str(2**63 - 1), "--seeds", "2"], "--seeds 2"),
        (["--jobs", "0"], "--jobs"),
        (["--jobs", "many"], "--jobs"),
        (["--hit-weight", "0,1", "--nonhit-weight", "0,1"], "both 0"),
        (["--seeds", "2", "--save-data", "DATA"], "--save-data"),
        (["--seeds", "2", "--steps", "0"], "--steps"),
    ],
)
def test_bad_grid_options_exit_2_with_one_line_before_any_work(capsys, tmp_path, monkeypatch, args, names):
    def no_training(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(study, "run_demo", no_training)
    args = [str(tmp_path / "data") if a == "DATA" else a for a in args]
    code, out, err = run_cli([*TINY_GRID, "--out", tmp_path / "fig", *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("acbmse: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert names in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocker", ["file", "folder"])
def test_a_bad_out_is_refused_before_any_work(capsys, tmp_path, monkeypatch, blocker):
    def no_training(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(study, "run_demo", no_training)
    out_dir = tmp_path / "figs"
    if blocker == "file":
        out_dir.write_text("keep me")
    else:
        (out_dir / "study.png").mkdir(parents=True)
    code, out, err = run_cli([*GRID, "--out", out_dir], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"--out {out_dir} is a file" in err if blocker == "file" else "is a folder" in err


# --------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("output_format", ["json", "table"])
def test_an_interrupt_prints_the_finished_runs_and_exits_130(capsys, monkeypatch, output_format):
    real = study._train_and_score
    calls = {"n": 0}

    def stopped_at_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Terminated(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "_train_and_score", stopped_at_the_fifth)
    code, out, err = run_cli([*GRID, "--format", output_format], capsys)
    assert code == 130
    assert err.splitlines()[-1] == "acbmse: error: interrupted"
    # the runs go seed by seed: the first 4 are seed 0 of the first density's 4 rows
    if output_format == "json":
        doc = json.loads(out)
        assert doc["run"]["interrupted"] is True and doc["run"]["finished_runs"] == 4
        assert [(c["signal_hits"], [r["seed"] for r in c["runs"]]) for c in doc["configs"]] == [(20, [0])] * 4
        for config in doc["configs"]:
            assert_summary(config["runs"], config["mean"], config["sd"])
    else:
        assert len(_rows(out)) == 4
        assert "interrupted: 4 of 24 runs finished" in " ".join(out.split())


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_worker_processes_and_prints_what_finished():
    marker = f"ACBMSE_TEST_RUN={uuid.uuid4().hex}"
    name, value = marker.split("=")
    env = {**os.environ, name: value, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [*TINY_GRID[1:], "--steps", "200", "--seeds", "100", "--jobs", "2", "--format", "json"]
    argv.remove("-q")  # the estimate line says when the grid starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "acbmse_cli", "demo", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stderr.readline().startswith("grid: ")
        time.sleep(4.0)  # the workers start and some runs finish
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["acbmse: error: interrupted"]  # no worker's traceback
    doc = json.loads(out)
    assert doc["run"]["interrupted"] is True and doc["run"]["finished_runs"] < doc["run"]["runs"] == 300
    assert sum(len(c["runs"]) for c in doc["configs"]) == doc["run"]["finished_runs"]
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


def test_the_plan_checks_every_run_up_front():
    base = DemoOptions(steps=2, batch_size=2, eval_frames=2, height=16, width=24)
    plan = StudyPlan(base, hit_weights=(0.5, 2.0), nonhit_weights=(1.0, 4.0), signal_hits=(20, 40), seeds=3)
    assert len(plan.configs()) == 2 * (2 + 2 * 2) and len(plan.runs()) == 36
    assert {(c.hit_weight, c.nonhit_weight) for c in plan.configs() if c.loss == "acb_mse"} == {
        (0.5, 1.0), (0.5, 4.0), (2.0, 1.0), (2.0, 4.0)
    }  # fmt: skip
    assert [c.ratio for c in plan.configs()[:6]] == [None, None, 2.0, 8.0, 0.5, 2.0]
    options = plan.run_options(plan.configs()[3], 7)
    assert (options.losses, options.hit_weight, options.nonhit_weight, options.signal_hits) == (
        ("acb_mse",), 0.5, 4.0, 20)  # fmt: skip
    assert options.seed == 7 and options.threads == 1  # one torch thread per run unless told
    assert dataclasses.replace(base, threads=None) == base
    assert math.isinf(study.StudyConfig("acb_mse", 0.0, 1.0, None).ratio or 0.0)


def test_a_list_parsed_twice_keeps_its_items() -> None:
    """click 8.0 hands a list option's parsed default back to its parser: the items come through."""
    from acbmse_cli._checks import check_list, check_weight

    once = check_list("--nonhit-weight", "1,3,10", check_weight)
    assert once == (1.0, 3.0, 10.0)
    assert check_list("--nonhit-weight", once, check_weight) == once
    with pytest.raises(ValueError, match="twice"):
        check_list("--nonhit-weight", (1.0, 1.0), check_weight)
