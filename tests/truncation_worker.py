"""Files cut short before and while they are read, in a process of their own (a SIGBUS kills it, not pytest).

``python truncation_worker.py FORMAT DIR CASES SEED`` writes one file of ``FORMAT`` in ``DIR`` per case,
reads it in chunks as ``acbmse eval`` does (every range in order, then ``verify``) and prints one JSON line
per case: ``{"mode": ..., "case": ..., "outcome": "ok" | "input_error" | "wrong" | "other", "message": ...}``.
``ok`` means every chunk equals the float64 reference of the array written.

The first case (mode ``shrink``) cuts the file to its first 64 bytes after the first chunk; the ``CASES``
others (mode ``fuzz``) cut it at a random offset, before opening or after a random number of chunks.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from acbmse_cli import arrays
from acbmse_cli.arrays import chunk_ranges, open_array
from acbmse_cli.errors import InputError

SHAPE = (24, 25, 20)
CHUNK = 97  # less than a sample: chunks inside samples, and across their ends

# Bands and gathers a few chunks long, as a file many bands long would have them
arrays._BAND_BYTES = 4096  # type: ignore[attr-defined]
arrays._GATHER_BLOCK = 1024  # type: ignore[attr-defined]


def _array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _pt_legacy(path: Path, a: np.ndarray) -> None:
    torch.save(torch.from_numpy(a), path, _use_new_zipfile_serialization=False)


WRITERS: dict[str, tuple[str, Callable[[Path, np.ndarray], None], Callable[[np.ndarray], np.ndarray]]] = {
    "npy-C": ("a.npy", lambda p, a: np.save(p, a), lambda a: a),
    "npy-F": ("a.npy", lambda p, a: np.save(p, np.asfortranarray(a)), lambda a: a),
    "npz-stored-C": ("a.npz", lambda p, a: np.savez(p, a), lambda a: a),
    "npz-stored-F": ("a.npz", lambda p, a: np.savez(p, np.asfortranarray(a)), lambda a: a),
    "npz-compressed-C": ("a.npz", lambda p, a: np.savez_compressed(p, a), lambda a: a),
    "npz-compressed-F": ("a.npz", lambda p, a: np.savez_compressed(p, np.asfortranarray(a)), lambda a: a),
    "pt": ("a.pt", lambda p, a: torch.save(torch.from_numpy(a), p), lambda a: a),
    "pt-strided": (
        "a.pt",
        lambda p, a: torch.save(torch.from_numpy(a).permute(2, 0, 1), p),
        lambda a: a.transpose(2, 0, 1),
    ),
    "pt-legacy": ("a.pt", _pt_legacy, lambda a: a),
}


def _read(path: Path, cut: tuple[int, int] | None) -> list[np.ndarray]:
    """Every chunk in order, then verify; ``cut = (after_chunks, size)`` truncates the file on the way."""
    with open_array(path) as source:
        chunks = []
        for i, (start, stop) in enumerate(chunk_ranges(source.shape, CHUNK)):
            if cut is not None and i == cut[0]:
                os.truncate(path, cut[1])
            chunks.append(source.read(start, stop).numpy().astype(np.float64))
        source.verify()
    return chunks


def _case(fmt: str, directory: Path, seed: int, when: int | None, fraction: float) -> dict[str, object]:
    """``when``: None to cut before opening, else the number of chunks read before the cut."""
    filename, write, expect = WRITERS[fmt]
    path = directory / f"{seed}-{filename}"
    array = _array(seed)
    write(path, array)
    size = path.stat().st_size
    offset = int(fraction * size)
    case = {"seed": seed, "when": when, "offset": offset, "size": size}
    try:
        if when is None:
            os.truncate(path, offset)
        got = np.concatenate(_read(path, None if when is None else (when, offset)))
    except InputError as exc:
        return {"case": case, "outcome": "input_error", "message": str(exc)}
    except Exception:
        return {"case": case, "outcome": "other", "message": traceback.format_exc()}
    reference = expect(array).astype(np.float64).reshape(-1)
    outcome = "ok" if np.array_equal(got, reference) else "wrong"
    return {"case": case, "outcome": outcome, "message": ""}


def main() -> None:
    fmt, directory = sys.argv[1], Path(sys.argv[2])
    count, seed = int(sys.argv[3]), int(sys.argv[4])
    cases: list[tuple[str, int, int | None, float]] = [("shrink", 0, 1, 64 / _probe(fmt, directory))]
    rng = np.random.default_rng(seed)
    chunks = len(list(chunk_ranges(SHAPE, CHUNK)))
    for i in range(count):
        when = None if rng.random() < 0.3 else int(rng.integers(0, chunks))
        cases.append(("fuzz", seed * 1000 + i, when, float(rng.random())))
    for mode, case_seed, when, fraction in cases:
        print(json.dumps({"mode": mode, **_case(fmt, directory, case_seed, when, fraction)}), flush=True)


def _probe(fmt: str, directory: Path) -> int:
    """The size of the file that ``fmt`` writes."""
    filename, write, _ = WRITERS[fmt]
    path = directory / f"probe-{filename}"
    write(path, _array(0))
    return path.stat().st_size


if __name__ == "__main__":
    main()
