"""The plain numpy baseline that ``acbmse eval`` is compared with (see eval_bench.py).

What one would write by hand: memory-map both .npy files, walk them in chunks of
1000 images, and add up per class (non-hit ``|target| <= threshold``, hit) the
element count and the float64 sum of squared error.  Of the obvious ways to sum
per class (boolean indexing, ``np.bincount`` with weights, ``np.sum(where=)``),
this uses the fastest one measured on the benchmark machine, ``np.sum(where=)``.

Usage: ``python benchmarks/numpy_eval_baseline.py PRED.npy TARGET.npy [HIT_THRESHOLD]``
prints ``{"count": [non-hit, hit], "sse": [non-hit, hit]}`` as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np

CHUNK_IMAGES = 1000


def class_sums(pred_path: str, target_path: str, hit_threshold: float = 0.0) -> tuple[list[int], list[float]]:
    """Per-class element counts and sums of squared error: ([non-hit, hit], [non-hit, hit])."""
    pred = np.load(pred_path, mmap_mode="r")
    target = np.load(target_path, mmap_mode="r")
    if pred.shape != target.shape:
        raise SystemExit(f"shapes differ: {pred.shape} and {target.shape}")
    count = np.zeros(2, dtype=np.int64)
    sse = np.zeros(2, dtype=np.float64)
    for start in range(0, len(target), CHUNK_IMAGES):
        t = target[start : start + CHUNK_IMAGES]
        squared = pred[start : start + CHUNK_IMAGES].astype(np.float64)
        squared -= t
        squared *= squared
        hit = np.abs(t) > hit_threshold
        hits = np.count_nonzero(hit)
        count += (hit.size - hits, hits)
        sse[1] += np.sum(squared, where=hit)
        sse[0] += np.sum(squared, where=~hit)
    return count.tolist(), sse.tolist()


if __name__ == "__main__":
    threshold = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    counts, sums = class_sums(sys.argv[1], sys.argv[2], threshold)
    print(json.dumps({"count": counts, "sse": sums}))
