"""Nanoseconds per element of one eval chunk: the torch passes against the fused numba pass.

One chunk of the eval benchmark's data (float32, 2% hits, 3 << 16 elements, 17 whole samples
of 1x88x128 and a bit), computed in isolation the way ``acbmse eval`` runs it: one torch
thread, inside ``_recycled_temporaries()`` and ``torch.inference_mode()``.

    python benchmarks/fused_chunk_bench.py [--repeats 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from fused_prototype import fused_class_stats

from acbmse_cli.evaluate import (
    EvalOptions,
    _chunk_class_stats,
    _hit_classes,
    _recycled_temporaries,
    _sums_are_finite,
)
from acbmse_cli.histograms import default_grid, detection_stats

ROW = 88 * 128
ROWS = 17


@numba.njit(cache=True, nogil=True)
def _curve_bins(
    x: np.ndarray, y: np.ndarray, threshold: float, edges: np.ndarray, bins: np.ndarray,
    inverse_step: float, offset: float,
) -> None:  # fmt: skip
    """The detection bins of a linear grid (``edges``: its thresholds, then +inf) in one pass,
    without a branch: count_below's linear guess (NaN to 0), corrected by one comparison, into 8
    interleaved histograms (``bins`` ``(8, 2, G + 1)``) so that repeated bins do not wait on each
    other."""
    n = edges.shape[0] - 1
    top = np.float64(n)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        guess = v * inverse_step + offset
        guess = guess if guess > 0.0 else 0.0
        guess = guess if guess < top else top
        g = np.int64(guess)
        g += np.int64(v > edges[g])
        hit = np.int64(abs(np.float64(y[i])) > threshold)
        bins[i & 7, hit, g] += 1


def make_chunk(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = ROWS * ROW
    hits = rng.random(n, dtype=np.float32) < 0.02
    y = np.where(hits, rng.uniform(20.0, 100.0, n).astype(np.float32), np.float32(0.0))
    x = y + rng.standard_normal(n, dtype=np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def time_per_element(fn: Callable[[], object], n: int, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / n * 1e9


def contenders(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    classes = _hit_classes(EvalOptions())
    grid = default_grid(0.0, 100.0)
    edges = np.array([*grid.values, np.inf], dtype=np.float64)
    xn, yn = x.numpy(), y.numpy()

    def torch_stats(per_sample: bool) -> Callable[[], object]:
        def run() -> object:
            xs, ys = (x.reshape(ROWS, ROW), y.reshape(ROWS, ROW)) if per_sample else (x, y)
            stats = _chunk_class_stats(xs, ys, None, classes, per_sample=per_sample)
            return _sums_are_finite(stats)

        return run

    def fused_stats(per_sample: bool) -> Callable[[], object]:
        def run() -> object:
            groups = ROWS if per_sample else 1
            stats = fused_class_stats(x.reshape(groups, -1), y.reshape(groups, -1), None, 2, 0.0)
            return _sums_are_finite(stats)

        return run

    def numba_curve() -> object:
        bins = np.zeros((8, 2, len(edges)), np.int64)
        _curve_bins(xn, yn, 0.0, edges, bins, (len(grid) - 1) / 100.0, 1.0 - 0.125)
        return bins

    return {
        "torch stats, pooled": torch_stats(False),
        "torch stats, per sample": torch_stats(True),
        "torch detect-curve (201)": lambda: detection_stats(x, y, grid, hit_threshold=0.0),
        "fused stats, pooled": fused_stats(False),
        "fused stats, per sample": fused_stats(True),
        "numba detect-curve (201)": numba_curve,
    }


def check_agreement(x: torch.Tensor, y: torch.Tensor) -> None:
    """The fused statistics within 1e-9 of the torch ones, the curve's bins equal to them."""
    for groups in (1, ROWS):
        ours = fused_class_stats(x.reshape(groups, -1), y.reshape(groups, -1), None, 2, 0.0)
        theirs = _chunk_class_stats(
            x.reshape(groups, -1), y.reshape(groups, -1), None, _hit_classes(EvalOptions()),
            per_sample=groups > 1,
        )  # fmt: skip
        for name in ("count", "sse", "sae", "max_abs_error", "sum_target", "sum_input"):
            a, b = getattr(ours, name).double(), getattr(theirs, name).double()
            assert torch.allclose(a, b, rtol=1e-9, atol=0), name
    grid = default_grid(0.0, 100.0)
    edges = np.array([*grid.values, np.inf], dtype=np.float64)
    bins = np.zeros((8, 2, len(edges)), np.int64)
    _curve_bins(x.numpy(), y.numpy(), 0.0, edges, bins, (len(grid) - 1) / 100.0, 1.0 - 0.125)
    reference = detection_stats(x, y, grid, hit_threshold=0.0)
    assert (bins.sum(0)[0] == reference.nonhits.numpy()).all() and (
        bins.sum(0)[1] == reference.hits.numpy()
    ).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    x, y = make_chunk()
    torch.set_num_threads(1)
    check_agreement(x, y)
    results: dict[str, list[float]] = {}
    with _recycled_temporaries(), torch.inference_mode():
        runs = contenders(x, y)
        for _ in range(args.rounds):
            for name, fn in runs.items():
                results.setdefault(name, []).append(time_per_element(fn, x.numel(), args.repeats))
    for name, values in results.items():
        spread = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name:28s} median {statistics.median(values):.3f} ns/element  ({spread})")


if __name__ == "__main__":
    main()
