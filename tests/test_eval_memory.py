"""Memory of ``acbmse eval`` with many labelled classes: bounded whatever the number of classes K, with
the values of an independent float64 reference.

The peak is read from the kernel (``VmHWM`` of ``/proc/self/status``, which sees torch's allocations,
unlike tracemalloc), in a fresh process that first evaluates the same files with two classes, so that
only what the K classes add is measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_reference import assert_close, reference_report

from acbmse_cli.evaluate import evaluate_files
from acbmse_cli.stats import class_stats

K = 1000
SHAPE = (4000, 50)  # 200,000 elements: about one default chunk
GROWTH_LIMIT = 120 << 20  # bytes; with K x chunk temporaries the peak grew by 1.6 GB at K = 1000

MEASURE = """
import json, sys
from acbmse_cli.evaluate import evaluate_files

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

folder, per_sample = sys.argv[1], sys.argv[2] == "per-sample"
files = (folder + "/pred.npy", folder + "/target.npy")
extra = {"per_sample": True, "top": 5} if per_sample else {}
evaluate_files(*files, device="cpu", **extra)  # everything loaded and warmed up with two classes
before = peak()
weights = json.load(open(folder + "/weights.json"))
result = evaluate_files(*files, labels=folder + "/labels.npy", class_weights=weights, device="cpu", **extra)
print(json.dumps({"growth": peak() - before, "result": result.to_dict()}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("many-classes")
    rng = np.random.default_rng(11)
    labels = rng.integers(0, K, SHAPE)
    labels[:, :3] = rng.integers(0, 40, (SHAPE[0], 3))  # some classes large, some empty or nearly
    target = np.where(rng.random(SHAPE) < 0.3, rng.uniform(1, 100, SHAPE), 0.0).astype(np.float32)
    pred = (target + rng.normal(0, 3, SHAPE)).astype(np.float32)
    weights = rng.uniform(0.1, 3.0, K).round(3)
    np.save(folder / "pred.npy", pred)
    np.save(folder / "target.npy", target)
    np.save(folder / "labels.npy", labels)
    (folder / "weights.json").write_text(json.dumps(weights.tolist()))
    return folder, {"pred": pred, "target": target, "labels": labels, "weights": weights}


def measured(folder: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), mode],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sample_losses(data: dict[str, np.ndarray]) -> np.ndarray:
    """Every sample's ACB-MSE, by sums per (sample, class) with np.bincount, in float64."""
    pred, target, labels = (data[k].astype(np.float64) for k in ("pred", "target", "labels"))
    n = pred.shape[0]
    cell = (np.arange(n)[:, None] * K + labels.astype(np.int64)).ravel()
    sse = np.bincount(cell, weights=((pred - target) ** 2).ravel(), minlength=n * K).reshape(n, K)
    count = np.bincount(cell, minlength=n * K).reshape(n, K)
    return (np.where(count > 0, sse / np.maximum(count, 1), 0.0) * data["weights"]).sum(axis=1)


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")


@needs_proc
def test_pooled_classes_take_bounded_memory_and_the_reference_values(files) -> None:
    folder, data = files
    got = measured(folder, "pooled")
    assert got["growth"] < GROWTH_LIMIT, f"peak memory grew by {got['growth'] / 2**20:.0f} MiB"
    weights = data["weights"].tolist()
    expected = reference_report(data["pred"], data["target"], weights=weights, labels=data["labels"])
    result = {k: v for k, v in got["result"].items() if k not in ("pred", "target")}
    assert_close(result, expected)


@needs_proc
def test_per_sample_classes_take_bounded_memory_and_the_reference_values(files) -> None:
    folder, data = files
    got = measured(folder, "per-sample")
    assert got["growth"] < GROWTH_LIMIT, f"peak memory grew by {got['growth'] / 2**20:.0f} MiB"
    losses = sample_losses(data)
    order = sorted(range(len(losses)), key=lambda i: (-losses[i], i))[:5]
    worst = got["result"]["worst_samples"]
    assert [w["index"] for w in worst] == order
    for w in worst:
        assert math.isclose(w["acb_mse"], losses[w["index"]], rel_tol=1e-9)


def test_chunks_of_tiny_samples_shrink_with_the_classes(files, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan itself: with ``per_sample`` a chunk of whole samples holds at most about a chunk's
    worth of (sample, class) statistics."""
    import acbmse_cli.evaluate as evaluate

    folder, data = files
    sizes: list[int] = []
    original = evaluate.chunk_ranges

    def recorded(shape, chunk, rows=None):
        for start, stop in original(shape, chunk, rows):
            sizes.append(stop - start)
            yield start, stop

    monkeypatch.setattr(evaluate, "chunk_ranges", recorded)
    evaluate_files(
        folder / "pred.npy", folder / "target.npy", labels=folder / "labels.npy",
        class_weights=data["weights"].tolist(), per_sample=True, device="cpu",
    )  # fmt: skip
    samples = max(sizes) // SHAPE[1]
    assert samples * K <= evaluate.DEFAULT_CHUNK_ELEMENTS


@pytest.mark.parametrize("per_sample", [False, True])
def test_sums_by_index_match_a_reference_with_out_of_range_labels_and_infinities(per_sample: bool) -> None:
    from acbmse_cli.stats import Membership, _stats_by_index

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(0, 2, (3, 200)))
    y = torch.from_numpy(rng.normal(0, 2, (3, 200)))
    labels = torch.from_numpy(rng.integers(-2, 9, (3, 200)))  # -2, -1 and 7, 8 are in no class of 7
    x[0, 5], labels[0, 5] = math.inf, 3  # an infinite error stays in its class
    views = (x, y, labels) if per_sample else (x.reshape(1, -1), y.reshape(1, -1), labels.reshape(1, -1))
    stats = _stats_by_index(views[0], views[1], Membership(views[1], labels=views[2], num_classes=7))
    for g in range(views[0].shape[0]):
        xg, yg, lg = (v[g].numpy() for v in views)
        for c in range(7):
            m = lg == c
            d = (xg - yg)[m]
            assert int(stats.count[g, c]) == m.sum()
            for got, want in (
                (stats.sse[g, c], np.sum(d * d)),
                (stats.sae[g, c], np.sum(np.abs(d))),
                (stats.max_abs_error[g, c], np.abs(d).max() if d.size else 0.0),
                (stats.sum_target[g, c], yg[m].sum()),
                (stats.sum_input[g, c], xg[m].sum()),
            ):
                assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-12)
    assert math.isinf(float(stats.sse[0, 3])) and all(math.isfinite(float(v)) for v in stats.sse[0, :3])


def test_sums_by_index_are_differentiable() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(0, 1, (2, 30))).requires_grad_()
    y = torch.from_numpy(rng.normal(0, 1, (2, 30)))
    labels = torch.from_numpy(rng.integers(0, 4, (2, 30)))
    stats = class_stats(x, y, labels=labels, num_classes=4, per_sample=True)
    stats.sse.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, 2 * (x - y).detach())
