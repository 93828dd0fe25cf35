"""The plain numpy script that people write instead of ``acbmse eval`` (see eval_bench.py).

Memory-map both .npy files, walk them in chunks of 1000 images, take ``(p - t) ** 2`` in
float32 and add it up per class (non-hit ``|target| <= threshold``, hit) in float64 with a
boolean index.  Unlike ``numpy_eval_baseline.py`` nothing is converted to float64 first: the
squares are float32, so the sums agree with eval's to about 1e-7, not 1e-9.

``--read-only`` instead reads both files and sums each chunk (float32 values, float64 sums):
the floor of any evaluation, reading every byte once.

Usage: ``python benchmarks/numpy_plain_baseline.py PRED.npy TARGET.npy [HIT_THRESHOLD] [--read-only]``
prints ``{"count": [non-hit, hit], "sse": [non-hit, hit]}`` as JSON (``{"sum": ...}`` with
``--read-only``).
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
    count = np.zeros(2, dtype=np.int64)
    sse = np.zeros(2, dtype=np.float64)
    for start in range(0, len(target), CHUNK_IMAGES):
        t = target[start : start + CHUNK_IMAGES]
        squared = (pred[start : start + CHUNK_IMAGES] - t) ** 2
        hit = np.abs(t) > hit_threshold
        hits = np.count_nonzero(hit)
        count += (hit.size - hits, hits)
        sse[1] += squared[hit].sum(dtype=np.float64)
        sse[0] += squared[~hit].sum(dtype=np.float64)
    return count.tolist(), sse.tolist()


def read_and_sum(pred_path: str, target_path: str) -> float:
    """Both files read once, chunk by chunk, into one reused buffer each (as eval reads them), and
    summed."""
    total = 0.0
    for path in (pred_path, target_path):
        array = np.load(path, mmap_mode="r")
        offset, chunk = array.offset, CHUNK_IMAGES * int(np.prod(array.shape[1:]))
        buffer = np.empty(chunk, dtype=array.dtype)
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while n := f.readinto(memoryview(buffer).cast("B")):
                total += float(buffer[: n // buffer.itemsize].sum(dtype=np.float64))
    return total


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--read-only"]
    if "--read-only" in sys.argv:
        print(json.dumps({"sum": read_and_sum(args[0], args[1])}))
    else:
        counts, sums = class_sums(args[0], args[1], float(args[2]) if len(args) > 2 else 0.0)
        print(json.dumps({"count": counts, "sse": sums}))
