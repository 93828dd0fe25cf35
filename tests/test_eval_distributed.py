"""``acbmse eval`` under torchrun (2 processes, gloo on CPU) against a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from eval_reference import assert_close, reference_report

from acbmse_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*command, "-m", "acbmse_cli", "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def single(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


def test_torchrun_eval_equals_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    # the hits sit mostly in the first samples: the two ranks see very different classes
    target = np.where(rng.random((23, 4, 6)) < np.linspace(0.6, 0.0, 23)[:, None, None], 40.0, 0.0)
    pred = (target + rng.normal(0, 2, target.shape)).astype(np.float32)
    pred[17, 2, 3] = np.nan  # on the second rank's share
    target[2, 0, 0] = np.inf  # on the first rank's share
    np.save(tmp_path / "p.npy", pred)
    np.savez_compressed(tmp_path / "t.npz", target=target)
    args = ["p.npy", "t.npz", "--format", "json", "--per-sample", "--top", "23", "--detect-threshold", "20"]
    args += ["--nan-policy", "omit", "--hit-weight", "3", "--chunk-elements", "50", "--device", "cpu"]
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("acbmse: left out 2 elements") == 1  # rank 0 speaks, once
    distributed = json.loads(done.stdout)  # one document: only rank 0 printed
    monkeypatch.chdir(tmp_path)
    alone = json.loads(single(args, capsys))
    assert distributed["elements"] == alone["elements"] and distributed["omitted"] == alone["omitted"] == 2
    assert [c["count"] for c in distributed["classes"]] == [c["count"] for c in alone["classes"]]
    assert distributed["detection"] == alone["detection"]  # integer counts: exact
    assert [s["index"] for s in distributed["worst_samples"]] == [s["index"] for s in alone["worst_samples"]]
    assert_close(distributed, alone, rel=1e-9)
    expected = reference_report(
        pred, target, weights=(1.0, 3.0), omit_nonfinite=True, detect_threshold=20.0, top=23,
        paths=("p.npy", "t.npz"),
    )  # fmt: skip
    assert_close(distributed, expected, rel=1e-9)


def test_torchrun_eval_with_labels_and_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    target = rng.normal(size=(10, 30)).astype(np.float32)
    pred = (target + rng.normal(size=target.shape)).astype(np.float32)
    labels = rng.integers(0, 3, size=target.shape)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "l.npy", labels)
    args = ["p.npy", "t.npy", "--labels", "l.npy", "--class-weights", "1,2,0.5", "--format", "csv",
            "--chunk-elements", "40", "--device", "cpu"]  # fmt: skip
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    alone = single(args, capsys)
    got = [r.split(",") for r in done.stdout.splitlines()]
    want = [r.split(",") for r in alone.splitlines()]
    assert [r[:2] for r in got] == [r[:2] for r in want]  # names and counts: exact
    for a, b in zip(got[1:], want[1:], strict=True):
        assert_close([float(v) if v else None for v in a[2:]], [float(v) if v else None for v in b[2:]])

    # a label out of range on the second rank's share only: every rank stops, rank 0 says why, once
    labels[8, 5] = 7
    np.save(tmp_path / "l.npy", labels)
    done = torchrun(args, tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("acbmse: error: l.npy: label 7 at index (8, 5) is outside 0..2") == 1


def test_torchrun_curve_denoising_and_several_predictions_equal_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    # the largest hit on the second rank's share: the default grid needs both ranks' ranges
    target = np.where(rng.random((21, 5, 6)) < 0.1, rng.uniform(20, 60, (21, 5, 6)), 0.0).astype(np.float32)
    target[19, 1, 1] = 97.0
    noisy = np.where((target == 0) & (rng.random(target.shape) < 0.05), 40.0, target).astype(np.float32)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "n.npy", noisy)
    for name, scale in (("a", 1.0), ("b", 0.6)):
        np.save(
            tmp_path / f"{name}.npy", (scale * target + rng.normal(0, 5, target.shape)).astype(np.float32)
        )
    args = ["a.npy", "b.npy", "t.npy", "--detect-curve", "--detect-threshold", "15", "--input", "n.npy",
            "--format", "json", "--chunk-elements", "45", "--device", "cpu"]  # fmt: skip
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    distributed = json.loads(done.stdout)
    monkeypatch.chdir(tmp_path)
    alone = json.loads(single(args, capsys))
    assert [r["pred"] for r in distributed["reports"]] == ["a.npy", "b.npy"]
    for d, a in zip(distributed["reports"], alone["reports"], strict=True):
        assert d["detection_curve"]["threshold"][-1] == 100.0  # 97, rounded up
        for key in ("detection", "denoising", "detection_curve", "denoising_curve"):
            assert d[key] == a[key], key  # integer counts and ratios of them: exact
        assert_close(d, a, rel=1e-9)


@pytest.mark.parametrize("largest_on", ["first rank, last chunk", "second rank, last chunk"])
def test_torchrun_curve_on_a_grid_found_during_the_pass_equals_the_reference(
    tmp_path: Path, largest_on: str
) -> None:
    """Each rank guesses the default grid from its first chunk and widens it as it reads; the ranks
    then agree on the grid of the largest hit of all, and count again what they counted on another:
    the counts at every threshold equal numpy's."""
    rng = np.random.default_rng(4)
    shape = (20, 3, 4)
    target = np.where(rng.random(shape) < 0.2, rng.uniform(1, 9, shape), 0.0).astype(np.float32)
    target[9 if largest_on.startswith("first") else 19, 2, 3] = 730.0
    pred = (target + rng.normal(0, 2, shape)).astype(np.float32)
    np.save(tmp_path / "t.npy", target)
    np.save(tmp_path / "p.npy", pred)
    args = ["p.npy", "t.npy", "--detect-curve", "--format", "json", "--chunk-elements", "24"]
    args += ["--device", "cpu"]
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    curve = json.loads(done.stdout)["detection_curve"]
    grid = np.linspace(0.0, 800.0, 201)  # 730, rounded up
    assert curve["threshold"] == pytest.approx(grid.tolist(), abs=1e-12)
    p, truth = pred.astype(np.float64).ravel(), target.ravel() > 0
    thresholds = np.array(curve["threshold"])
    detected = p[:, None] > thresholds[None, :]
    assert curve["tp"] == (detected & truth[:, None]).sum(axis=0).tolist()
    assert curve["fp"] == (detected & ~truth[:, None]).sum(axis=0).tolist()
