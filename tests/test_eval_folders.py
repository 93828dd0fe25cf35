"""``acbmse eval PRED_DIR... TARGET_DIR``: folders of per-frame files against the float64 reference on
the concatenation of their arrays."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from eval_reference import assert_close, assert_worst_samples, reference_report, reference_sample_losses

from acbmse_cli.cli import main
from acbmse_cli.evaluate import EvalOptions, evaluate_many

ROOT = Path(__file__).resolve().parents[1]

# name -> shape: each file its own shape, and its own format
FRAMES = {"f0.npy": (3, 4, 5), "f1.npz": (2, 6), "f2.pt": (4, 3, 3), "f3.npy": (1, 7)}


def run(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *(str(a) for a in args), "--device", "cpu"])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def eval_json(args: list[Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run([*args, "--format", "json"], capsys)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def save(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".npz":
        np.savez(path, x=array)
    else:
        torch.save(torch.from_numpy(array), path)


def frames(seed: int, shapes: dict[str, tuple[int, ...]] = FRAMES) -> dict[str, np.ndarray]:
    """Sparse targets of hits up to 50, one per name."""
    rng = np.random.default_rng(seed)
    return {
        name: np.where(rng.random(shape) < 0.3, rng.uniform(1.0, 50.0, shape), 0.0).astype(np.float32)
        for name, shape in shapes.items()
    }


def noisy(targets: dict[str, np.ndarray], seed: int, sigma: float = 2.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (t + rng.normal(0.0, sigma, t.shape)).astype(np.float32) for n, t in targets.items()}


def write(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        save(folder / name, array)
    return folder


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The concatenation, flattened: enough for every pooled statistic."""
    return np.concatenate([arrays[n].astype(np.float64).ravel() for n in sorted(arrays)])


def sample_losses(
    preds: dict[str, np.ndarray], targets: dict[str, np.ndarray], weights: tuple[float, float]
) -> list[Any]:
    """Every sample's reference loss, in the order of the concatenation (file name, then index)."""
    return [
        loss
        for n in sorted(targets)
        for loss in reference_sample_losses(preds[n], targets[n], weights=weights)
    ]


def global_index(samples: list[dict[str, Any]], targets: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``{file, index}`` -> the sample's index in the concatenation."""
    offsets, start = {}, 0
    for name in sorted(targets):
        offsets[name] = start
        start += targets[name].shape[0]
    return [
        {**{k: v for k, v in s.items() if k != "file"}, "index": offsets[s["file"]] + s["index"]}
        for s in samples
    ]


def pooled(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("worst_samples", "run")}


def test_folders_equal_the_reference_on_the_concatenation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = frames(0)
    preds = noisy(targets, 1)
    p, t = write(tmp_path / "pred", preds), write(tmp_path / "target", targets)
    doc = eval_json([p, t, "--per-sample", "--top", "6", "--detect-threshold", "10", "--hit-weight", "3",
                     "--chunk-elements", "7"], capsys)  # fmt: skip
    expected = reference_report(
        flat(preds), flat(targets), weights=(1.0, 3.0), detect_threshold=10.0, paths=(p, t)
    )
    assert_close(pooled(doc), expected)
    worst = doc["worst_samples"]
    assert all(s["file"] in targets and 0 <= s["index"] < targets[s["file"]].shape[0] for s in worst)
    assert list(worst[0]) == ["file", "index", "acb_mse", "class_mse"]
    losses = sample_losses(preds, targets, (1.0, 3.0))
    assert_worst_samples(global_index(worst, targets), losses, 6, ("non-hit", "hit"))
    assert doc["run"]["files"] == 4 and doc["run"]["skipped"] == 0


def test_the_worst_sample_is_named_by_its_file_and_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = frames(2)
    preds = {n: t.copy() for n, t in targets.items()}  # perfect, but for one sample of one file
    preds["f2.pt"][3] += 5.0
    preds["f0.npy"][1] += 1.0
    p, t = write(tmp_path / "p", preds), write(tmp_path / "t", targets)
    worst = eval_json([p, t, "--per-sample", "--top", "2"], capsys)["worst_samples"]
    assert [(s["file"], s["index"]) for s in worst] == [("f2.pt", 3), ("f0.npy", 1)]
    code, out, _ = run([p, t, "--per-sample", "--top", "2", "--format", "csv"], capsys)
    assert code == 0 and "file,sample,acb_mse" in out and "f2.pt,3," in out


def test_several_prediction_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = frames(3)
    first, second = noisy(targets, 4, 1.0), noisy(targets, 5, 3.0)
    p1, p2 = write(tmp_path / "a", first), write(tmp_path / "b", second)
    t = write(tmp_path / "t", targets)
    doc = eval_json([p1, p2, t], capsys)
    assert doc["target"] == str(t)
    for report, preds, path in zip(doc["reports"], (first, second), (p1, p2), strict=True):
        assert_close(pooled(report), reference_report(flat(preds), flat(targets), paths=(path, t)))


def test_the_default_curve_grid_comes_from_every_target_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = frames(6)
    targets["f3.npy"][0, 2] = 90.0  # the largest hit, in the last file
    preds = noisy(targets, 7)
    p, t = write(tmp_path / "p", preds), write(tmp_path / "t", targets)
    np.save(tmp_path / "p.npy", flat(preds).astype(np.float32))
    np.save(tmp_path / "t.npy", flat(targets).astype(np.float32))
    folders = eval_json([p, t, "--detect-curve"], capsys)
    one_file = eval_json([tmp_path / "p.npy", tmp_path / "t.npy", "--detect-curve"], capsys)
    assert folders["detection_curve"] == one_file["detection_curve"]
    assert folders["detection_curve"]["threshold"][-1] >= 90.0


def test_a_mask_folder_goes_with_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = frames(8)
    preds = noisy(targets, 9)
    rng = np.random.default_rng(10)
    masks = {n: rng.random(a.shape) < 0.7 for n, a in targets.items()}
    p, t, m = (write(tmp_path / d, a) for d, a in (("p", preds), ("t", targets), ("m", masks)))
    doc = eval_json([p, t, "--mask", m], capsys)
    keep = flat(masks) != 0
    expected = reference_report(flat(preds)[keep], flat(targets)[keep], paths=(p, t))
    assert_close({k: v for k, v in pooled(doc).items() if k != "masked"}, expected)
    assert doc["masked"] == int((~keep).sum())


def test_files_of_one_side_only_are_an_error_or_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = frames(11)
    preds = noisy(targets, 12)
    p, t = write(tmp_path / "p", preds), write(tmp_path / "t", targets)
    extra = {f"extra{i}.npy": np.zeros((1, 2), np.float32) for i in range(7)}
    write(p, dict(list(extra.items())[:6]))
    write(t, dict(list(extra.items())[6:]))
    code, out, err = run([p, t], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert "7 files are not in every folder" in err and "extra0.npy (not in" in err and "and 2 more" in err
    assert "--skip-unmatched" in err
    code, out, err = run([p, t, "--skip-unmatched", "--format", "json"], capsys)
    assert code == 0 and "skipped 7 file names not in every folder" in err
    doc = json.loads(out)
    assert_close(pooled(doc), reference_report(flat(preds), flat(targets), paths=(p, t)))
    assert doc["run"]["files"] == 4 and doc["run"]["skipped"] == 7


def test_the_progress_counts_files_and_bytes(tmp_path: Path) -> None:
    targets = frames(13)
    p, t = write(tmp_path / "p", noisy(targets, 14)), write(tmp_path / "t", targets)
    size = sum(os.path.getsize(d / n) for d in (p, t) for n in targets)
    calls: list[tuple[int, int, int, int]] = []
    evaluate_many([p], t, EvalOptions(chunk_elements=5), file_progress=lambda *a: calls.append(a))
    assert calls[-1] == (4, 4, size, size)
    assert all(a[2] <= b[2] and a[0] <= b[0] for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty", "the folder holds no files"),
        ("pred-file", "is not: give files only, or folders of files only"),
        ("target-file", "is not: give files only, or folders of files only"),
        ("mask-file", "is not: give files only, or folders of files only"),
        ("shapes", "must match"),
        ("skip-files", "--skip-unmatched needs folders"),
    ],
)
def test_bad_folders_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, message: str
) -> None:
    targets = frames(15)
    p, t = write(tmp_path / "p", noisy(targets, 16)), write(tmp_path / "t", targets)
    np.save(tmp_path / "one.npy", np.zeros((3, 4, 5), np.float32))
    one = tmp_path / "one.npy"
    args: list[Any] = {
        "empty": [p, write(tmp_path / "none", {})],
        "pred-file": [one, t],
        "target-file": [p, one],
        "mask-file": [p, t, "--mask", one],
        "shapes": [p, t],
        "skip-files": [one, one, "--skip-unmatched"],
    }[layout]
    if layout == "shapes":
        save(p / "f1.npz", np.zeros((2, 5), np.float32))
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("acbmse: error: ") and message in err, err


def test_a_nan_names_its_file_and_its_index_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = frames(19)
    preds = noisy(targets, 20)
    preds["f2.pt"][2, 1, 0] = np.nan
    p, t = write(tmp_path / "p", preds), write(tmp_path / "t", targets)
    code, out, err = run([p, t], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"{p / 'f2.pt'}: 1 NaN/Inf value, the first at index (2, 1, 0)" in err


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*command, "-m", "acbmse_cli", "eval", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )  # fmt: skip


def one_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_torchrun_with_fewer_files_than_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = frames(21, {"only.npy": (5, 6)})
    write(tmp_path / "p", noisy(targets, 22))
    write(tmp_path / "t", targets)
    args = ["p", "t", "--format", "json", "--per-sample", "--detect-curve", "--device", "cpu"]
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    assert_close(json.loads(done.stdout), one_process(args, capsys), rel=1e-9)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_torchrun_shares_the_files_and_equals_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = {**FRAMES, "g0.npy": (9, 8), "g1.npy": (1, 1), "g2.pt": (5, 2, 2)}  # uneven sizes
    targets = frames(17, shapes)
    preds = noisy(targets, 18)
    preds["g0.npy"][4, 1] = np.nan
    write(tmp_path / "p", preds)
    write(tmp_path / "t", targets)
    args = [
        "p",
        "t",
        "--format",
        "json",
        "--per-sample",
        "--top",
        "30",
        "--detect-curve",
        "--nan-policy",
        "omit",
    ]
    args += ["--chunk-elements", "11", "--device", "cpu"]
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    distributed = json.loads(done.stdout)
    monkeypatch.chdir(tmp_path)
    alone = one_process(args, capsys)
    assert distributed["detection_curve"] == alone["detection_curve"]  # integer counts: exact
    assert [(s["file"], s["index"]) for s in distributed["worst_samples"]] == [
        (s["file"], s["index"]) for s in alone["worst_samples"]
    ]
    assert_close(distributed, alone, rel=1e-9)
    keep = np.isfinite(flat(preds))
    expected = reference_report(flat(preds)[keep], flat(targets)[keep], paths=("p", "t"))
    assert_close(
        {k: v for k, v in pooled(distributed).items() if k not in ("omitted", "detection_curve")}, expected
    )
    assert distributed["omitted"] == 1
