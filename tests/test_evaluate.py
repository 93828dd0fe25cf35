"""acbmse_cli.evaluate: the same result whatever the chunking, against the numpy reference."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_reference import assert_close, reference_detection, reference_report, reference_worst

from acbmse_cli.errors import InputError
from acbmse_cli.evaluate import evaluate_files
from acbmse_cli.report import DelayedProgress, render_csv, render_json, render_table, stdout_console


def _pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.1, rng.uniform(1, 30, shape), 0.0).astype(np.float32)
    pred = (target + rng.normal(0, 1, shape)).astype(np.float32)
    return pred, target


@pytest.mark.parametrize("layout", ["npy", "fortran", "npz-compressed", "pt-strided"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_chunked_equals_unchunked(tmp_path: Path, layout: str, per_sample: bool) -> None:
    """Chunks of 1 element, part-samples, several samples, or the whole file: one result."""
    pred, target = _pair((9, 4, 5), seed=1)
    pred[3, 1, 2] = np.nan
    target[6, 0, 0] = np.inf
    paths = []
    for name, array in (("p", pred), ("t", target)):
        if layout == "npy":
            np.save(tmp_path / f"{name}.npy", array)
            paths.append(tmp_path / f"{name}.npy")
        elif layout == "fortran":
            np.save(tmp_path / f"{name}.npy", np.asfortranarray(array))
            paths.append(tmp_path / f"{name}.npy")
        elif layout == "npz-compressed":
            np.savez_compressed(tmp_path / f"{name}.npz", array)
            paths.append(tmp_path / f"{name}.npz")
        else:
            torch.save(
                torch.from_numpy(array.transpose(2, 1, 0).copy()).permute(2, 1, 0), tmp_path / f"{name}.pt"
            )
            paths.append(tmp_path / f"{name}.pt")
    options = dict(
        per_sample=per_sample, top=9 if per_sample else None, detect_threshold=3.0, nan_policy="omit"
    )
    whole = evaluate_files(*paths, **options, chunk_elements=10**6).to_dict()  # type: ignore[arg-type]
    expected = reference_report(
        pred, target, omit_nonfinite=True, detect_threshold=3.0, top=9 if per_sample else None, paths=paths
    )
    assert_close(whole, expected)
    assert whole["omitted"] == 2
    for chunk in (1, 3, 7, 19, 20, 21, 45, 100):
        got = evaluate_files(*paths, **options, chunk_elements=chunk).to_dict()  # type: ignore[arg-type]
        assert_close(got, whole, rel=1e-12)


def test_file_much_larger_than_a_chunk(tmp_path: Path) -> None:
    pred, target = _pair((300, 70), seed=2)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    calls: list[tuple[int, int]] = []
    result = evaluate_files(
        tmp_path / "p.npy",
        tmp_path / "t.npy",
        chunk_elements=1000,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert len(calls) == 300 // 14 + 1  # 14 rows of 70 per chunk
    assert [d for d, _ in calls] == sorted({d for d, _ in calls}) and calls[-1] == (21000, 21000)
    assert_close(
        result.to_dict(), reference_report(pred, target, paths=(tmp_path / "p.npy", tmp_path / "t.npy"))
    )


def test_per_sample_with_samples_larger_than_a_chunk(tmp_path: Path) -> None:
    pred, target = _pair((6, 50, 3), seed=3)
    labels = np.random.default_rng(0).integers(0, 3, size=target.shape).astype(np.uint8)
    for name, array in (("p", pred), ("t", target), ("l", labels)):
        np.save(tmp_path / f"{name}.npy", array)
    weights = (0.5, 1.0, 2.0)
    for chunk in (7, 50, 149, 150, 151):
        result = evaluate_files(
            tmp_path / "p.npy", tmp_path / "t.npy", labels=tmp_path / "l.npy", class_weights=weights,
            per_sample=True, top=4, chunk_elements=chunk,
        )  # fmt: skip
        assert result.worst_samples is not None
        worst = reference_worst(pred, target, 4, weights=weights, labels=labels)
        assert [s.index for s in result.worst_samples] == [w[0] for w in worst]
        for sample, (_, loss, mses) in zip(result.worst_samples, worst, strict=True):
            assert_close(sample.acb_mse, loss)
            assert_close(list(sample.class_mse), mses)
        expected = reference_report(
            pred,
            target,
            weights=weights,
            labels=labels,
            top=4,
            paths=(tmp_path / "p.npy", tmp_path / "t.npy"),
        )
        assert_close(result.to_dict(), expected)


@pytest.mark.parametrize("per_sample", [False, True])
def test_sums_of_millions_of_elements_stay_float64_exact(tmp_path: Path, per_sample: bool) -> None:
    """2**21 elements in one chunk: a float32 running sum of the squares is off by more than 1e-6
    (checked here), the float64 sums are within 1e-9."""
    rng = np.random.default_rng(5)
    shape = (2, 2**20)
    target = np.where(rng.random(shape) < 0.1, rng.uniform(1000, 1001, shape), 0.0).astype(np.float32)
    pred = (target + rng.uniform(0.09, 0.11, shape)).astype(np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    squared = (pred.astype(np.float64) - target) ** 2
    exact = math.fsum(squared.ravel().tolist())
    in_float32 = float(np.cumsum(squared.astype(np.float32).ravel(), dtype=np.float32)[-1])
    assert abs(in_float32 - exact) > 1e-6 * exact
    result = evaluate_files(
        tmp_path / "p.npy", tmp_path / "t.npy", per_sample=per_sample, top=2 if per_sample else None,
        chunk_elements=2**21,
    )  # fmt: skip
    expected = reference_report(
        pred, target, top=2 if per_sample else None, paths=(tmp_path / "p.npy", tmp_path / "t.npy")
    )
    assert_close(result.to_dict(), expected)


def test_detection_over_chunks(tmp_path: Path) -> None:
    pred, target = _pair((40, 9), seed=4)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    for chunk in (5, 1000):
        result = evaluate_files(
            tmp_path / "p.npy",
            tmp_path / "t.npy",
            detect_threshold=2.0,
            hit_threshold=1.0,
            chunk_elements=chunk,
        )
        assert_close(result.to_dict()["detection"], reference_detection(pred, target, 2.0, 1.0))


def test_per_sample_needs_a_batch_dimension(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.float32(1.0))
    with pytest.raises(InputError, match="--per-sample needs a batch dimension"):
        evaluate_files(tmp_path / "s.npy", tmp_path / "s.npy", per_sample=True)


def test_all_elements_omitted(tmp_path: Path) -> None:
    """Nothing left after omitting NaN/Inf is bad input, not a score of 0 that passes a gate."""
    np.save(tmp_path / "p.npy", np.full((2, 2), np.nan, np.float32))
    np.save(tmp_path / "t.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match=r"every element \(4\) was NaN/Inf .* nothing left to score"):
        evaluate_files(tmp_path / "p.npy", tmp_path / "t.npy", nan_policy="omit", per_sample=True)


def test_sample_with_every_element_omitted(tmp_path: Path) -> None:
    """One sample left empty by the omission, the other not: the empty one scores 0 with no class MSE."""
    pred = np.array([[np.nan, np.nan], [1.0, 5.0]], np.float32)
    target = np.array([[0.0, 2.0], [0.0, 3.0]], np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    result = evaluate_files(tmp_path / "p.npy", tmp_path / "t.npy", nan_policy="omit", per_sample=True)
    assert result.elements == 2 and result.omitted == 2
    # reference: sample 1 alone, non-hit error 1 (1 element), hit error 2 (1 element), weights 1
    assert result.acb_mse == pytest.approx(1.0**2 + 2.0**2)
    assert result.worst_samples is not None
    assert [(s.index, s.acb_mse, s.class_mse) for s in result.worst_samples] == [
        (1, pytest.approx(5.0), (pytest.approx(1.0), pytest.approx(4.0))),
        (0, 0.0, (None, None)),
    ]
    render_json(result)
    render_csv(result)
    render_table(result, stdout_console(io.StringIO()))


def test_renderers_carry_the_same_numbers(tmp_path: Path) -> None:
    pred, target = _pair((5, 8), seed=5)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    result = evaluate_files(
        tmp_path / "p.npy", tmp_path / "t.npy", per_sample=True, top=2, detect_threshold=1.0
    )
    out = io.StringIO()
    render_table(result, stdout_console(out))
    text = out.getvalue()
    assert f"{result.acb_mse:.6g}" in text and "worst 2 samples" in text and "prediction > 1" in text
    csv_text = render_csv(result)
    assert csv_text.split("\n\n")[1].splitlines()[1].startswith(f"1.0,{result.detection.true_positives},")  # type: ignore[union-attr]


def test_delayed_progress_stays_silent_for_quick_work(capsys: pytest.CaptureFixture[str]) -> None:
    with DelayedProgress(delay=60.0) as bar:
        for done in range(0, 101, 10):
            bar(done, 100)
    assert capsys.readouterr().err == ""
    with DelayedProgress(delay=0.0) as bar:  # past the delay: a bar is drawn (and removed at the end)
        bar(10, 100)
        assert bar._progress is not None
        bar(100, 100)
    assert bar._progress is None


def test_leaves_torch_thread_count_as_it_was(tmp_path: Path) -> None:
    pred, target = _pair((3, 4), seed=6)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    threads = torch.get_num_threads()
    evaluate_files(tmp_path / "p.npy", tmp_path / "t.npy")
    assert torch.get_num_threads() == threads
