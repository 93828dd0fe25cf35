"""HDF5 input for ``acbmse eval``: datasets read in chunk-aligned bands, equal to the same arrays as
``.npy`` and to the float64 reference; everything that is not plain numeric data in the file refused
in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import eval_json
from cli_run import run_cli as run
from eval_reference import assert_close, reference_report
from hypothesis import given, settings
from hypothesis import strategies as st

from acbmse_cli import _hdf5
from acbmse_cli.arrays import chunk_ranges, open_array
from acbmse_cli.errors import InputError

h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def sparse_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hits = rng.random(shape) < 0.2
    target = np.where(hits, rng.uniform(0.5, 5.0, shape), 0.0)
    pred = target + rng.normal(0.0, 0.3, shape)
    return pred.astype(np.float32), target.astype(np.float32)


def read_all(path: Path, key: str | None, chunk: int, role: Any = "values") -> np.ndarray:
    with open_array(path, key=key, role=role) as source:
        parts = [source.read(a, b).numpy() for a, b in chunk_ranges(source.shape, chunk)]
        source.verify()
    return np.concatenate(parts)


LAYOUTS: list[dict[str, Any]] = [
    {},  # contiguous
    {"chunks": (3, 5, 4), "compression": "gzip", "compression_opts": 4},
    {"chunks": (2, 2, 7), "compression": "lzf", "shuffle": True},
    {"chunks": (11, 5, 7), "compression": "gzip", "fletcher32": True},
    {"chunks": True},
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["contiguous", "gzip", "lzf", "gzip-one-chunk", "auto"])
@pytest.mark.parametrize("dtype", ["float32", ">f8", "float16", "int16", "uint8", "bool"])
def test_reads_equal_the_array(tmp_path: Path, layout: dict[str, Any], dtype: str) -> None:
    rng = np.random.default_rng(3)
    array = (rng.normal(0.0, 3.0, (11, 5, 7)) * 10).astype(dtype)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("frames/x", data=array, **layout)
    for chunk in (1, 6, 35, 36, 400, 1 << 20):
        got = read_all(tmp_path / "a.h5", "/frames/x", chunk)
        np.testing.assert_array_equal(got, array.astype(np.float64).ravel())
    with open_array(tmp_path / "a.h5", key="frames/x") as source:
        assert source.shape == (11, 5, 7) and source.dtype == str(np.dtype(dtype).newbyteorder("="))
        assert source.name == f"{tmp_path / 'a.h5'}[frames/x]"


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    chunk_rows=st.integers(1, 7),
    chunk=st.integers(1, 80),
    band_bytes=st.sampled_from([8, 64, 300, 1 << 20]),
    max_chunk_row=st.sampled_from([8, 1 << 20]),
    compressed=st.booleans(),
)
def test_bands_follow_the_chunks(
    shape: tuple[int, ...], chunk_rows: int, chunk: int, band_bytes: int, max_chunk_row: int, compressed: bool
) -> None:
    """Whatever the band size and the chunking, every read covers whole chunk-rows of samples (or,
    where a chunk-row is too large, whole samples, or for a sample larger than a band one slab
    inside it), and the values come out in C order."""
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    chunks = (min(chunk_rows, shape[0]), *shape[1:])
    reads: list[tuple[Any, ...]] = []
    original = _hdf5._Hdf5Source._read

    def spy(self: Any, index: tuple[Any, ...]) -> np.ndarray:
        reads.append(index)
        return original(self, index)

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_hdf5, "_BAND_BYTES", band_bytes)
        mp.setattr(_hdf5, "_MAX_CHUNK_ROW_BYTES", max_chunk_row)
        mp.setattr(_hdf5._Hdf5Source, "_read", spy)
        path = Path(folder) / "a.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=array, chunks=chunks, compression="gzip" if compressed else None)
        got = read_all(path, None, chunk)
    np.testing.assert_array_equal(got, array.ravel())
    aligned = array[: chunks[0]].nbytes <= max_chunk_row
    for index in reads:
        first = index[0]
        if isinstance(first, slice) and len(index) == 1:
            rows = chunks[0] if aligned else 1
            assert first.start % rows == 0, (index, chunks)
            assert first.stop % rows == 0 or first.stop == shape[0], (index, chunks)
        else:  # one slab of a sample larger than a band, in a chunk-row too large to read whole
            assert array[0].nbytes > band_bytes and not aligned, (index, band_bytes)


def test_a_large_dataset_is_never_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    array = np.random.default_rng(1).normal(size=(64, 10, 10)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=array, chunks=(4, 10, 10), compression="gzip")
    monkeypatch.setattr(_hdf5, "_BAND_BYTES", 8 * 100 * 4)  # eight samples
    reads: list[int] = []
    original = _hdf5._Hdf5Source._read

    def spy(self: Any, index: tuple[Any, ...]) -> np.ndarray:
        data = original(self, index)
        reads.append(data.size)
        return data

    monkeypatch.setattr(_hdf5._Hdf5Source, "_read", spy)
    np.testing.assert_array_equal(read_all(tmp_path / "a.h5", None, 100), array.ravel())
    assert reads == [8 * 100] * 8


def test_a_sample_larger_than_a_band_is_read_in_slabs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array = np.random.default_rng(2).normal(size=(3, 20, 30)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=array, chunks=(1, 8, 8), compression="gzip")
    monkeypatch.setattr(_hdf5, "_BAND_BYTES", 1000)
    monkeypatch.setattr(_hdf5, "_MAX_CHUNK_ROW_BYTES", 1000)
    reads: list[tuple[Any, ...]] = []
    original = _hdf5._Hdf5Source._read

    def spy(self: Any, index: tuple[Any, ...]) -> np.ndarray:
        reads.append(index)
        return original(self, index)

    monkeypatch.setattr(_hdf5._Hdf5Source, "_read", spy)
    np.testing.assert_array_equal(read_all(tmp_path / "a.h5", None, 90), array.ravel())
    assert reads[:2] == [(0, slice(0, 3)), (0, slice(3, 6))]
    assert len(reads) == 3 * 7


def test_scalar_and_labels(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["s"] = np.float64(2.5)
        f["lab"] = np.array([[0, 2], [1, 1]], np.int16)
    np.testing.assert_array_equal(read_all(tmp_path / "a.h5", "s", 4), [2.5])
    np.testing.assert_array_equal(read_all(tmp_path / "a.h5", "/lab", 3, "labels"), [0, 2, 1, 1])


@pytest.mark.parametrize("chunk", [None, "7", "50"])
def test_eval_h5_equals_npy_and_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, chunk: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    pred, target = sparse_pair((9, 6, 5), seed=4)
    labels = (target > 0).astype(np.int64) + (np.abs(pred) > 1.5)
    with h5py.File("run.h5", "w") as f:
        f.create_dataset("/frames/pred", data=pred, chunks=(2, 6, 5), compression="gzip")
        f.create_dataset("/frames/target", data=target, chunks=(4, 3, 5), compression="lzf")
        f.create_dataset("/frames/labels", data=labels.astype(np.uint8))
    np.save("p.npy", pred)
    np.save("t.npy", target)
    np.save("l.npy", labels)
    extra = ["--per-sample", "--top", "3", "--hit-threshold", "0.25"] + (
        ["--chunk-elements", chunk] if chunk else []
    )
    keys = ["--pred-key", "/frames/pred", "--target-key", "frames/target"]
    got = eval_json(["run.h5", "run.h5", *keys, *extra], capsys)
    npy = eval_json(["p.npy", "t.npy", *extra], capsys)
    expected = reference_report(pred, target, hit_threshold=0.25, top=3, paths=("run.h5", "run.h5"))
    assert_close(got, expected)
    assert {k: v for k, v in got.items() if k not in ("pred", "target", "run")} == {
        k: v for k, v in npy.items() if k not in ("pred", "target", "run")
    }
    labelled = ["--labels", "run.h5", "--labels-key", "/frames/labels", "--class-weights", "1,2,3"]
    got = eval_json(["run.h5", "run.h5", *keys, *labelled], capsys)
    npy = eval_json(["p.npy", "t.npy", "--labels", "l.npy", "--class-weights", "1,2,3"], capsys)
    expected = reference_report(pred, target, weights=(1, 2, 3), labels=labels, paths=("run.h5", "run.h5"))
    assert_close(got, expected)
    assert got["classes"] == npy["classes"] and got["acb_mse"] == npy["acb_mse"]
    keep = np.random.default_rng(6).random(pred.shape) < 0.8
    with h5py.File("mask.h5", "w") as f:
        f.create_dataset("dead/pixels", data=keep, chunks=(3, 6, 5), compression="gzip")
        f["other"] = np.zeros(3)
    got = eval_json(["run.h5", "run.h5", *keys, "--mask", "mask.h5", "--mask-key", "/dead/pixels"], capsys)
    expected = reference_report(pred[keep], target[keep], paths=("run.h5", "run.h5"))
    assert got["masked"] == int((~keep).sum())
    assert_close({k: v for k, v in got.items() if k != "masked"}, expected)


def test_one_dataset_needs_no_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((4, 8), seed=5)
    for name, array in (("p.hdf5", pred), ("t.h5", target)):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("deep/inside/x", data=array, chunks=(1, 8), compression="gzip")
    got = eval_json([tmp_path / "p.hdf5", tmp_path / "t.h5"], capsys)
    assert_close(got, reference_report(pred, target, paths=(tmp_path / "p.hdf5", tmp_path / "t.h5")))


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, Path]:
    """A good target, and files each holding one kind of data that is refused."""
    _, target = sparse_pair((4, 6), seed=9)
    np.save(tmp_path / "t.npy", target)
    (tmp_path / "raw.bin").write_bytes(np.zeros(24, np.float32).tobytes())
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["y"] = target
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["good"] = target
        f["shape"] = np.zeros((4, 5), np.float32)
        f["group/x"] = target
        f["strings"] = np.array([[b"ab"] * 6] * 4)
        f["text"] = ["a", "bb", "c", "d"]
        f.create_dataset("vlen", (4,), dtype=h5py.vlen_dtype("f4"))
        f.create_dataset("refs", (4,), dtype=h5py.ref_dtype)
        f["compound"] = np.zeros((4, 6), [("a", "f4"), ("b", "i4")])
        f["float_labels"] = target
        f["complex"] = np.zeros((4, 6), np.complex64)
        f["nothing"] = h5py.Empty("f4")
        f.create_dataset("external", (4, 6), "f4", external=[(str(tmp_path / "raw.bin"), 0, 96)])
        f["elink"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/y")
        f["dangling"] = h5py.SoftLink("/gone")
        f["loop"] = h5py.SoftLink("/loop")
        f["soft"] = h5py.SoftLink("/group/x")
    return {p.stem: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("nope", ["bad.h5: has no dataset 'nope' (it holds: /complex, /compound", "--pred-key"]),
        ("group", ["bad.h5[group]: is a group, not a dataset"]),
        ("strings", ["bad.h5[strings]: holds strings"]),
        ("text", ["bad.h5[text]: holds strings"]),
        ("vlen", ["bad.h5[vlen]: holds variable-length data"]),
        ("refs", ["bad.h5[refs]: holds object references"]),
        ("compound", ["bad.h5[compound]: structured dtype"]),
        ("complex", ["bad.h5[complex]: complex dtype complex64"]),
        ("nothing", ["bad.h5[nothing]: an empty dataset"]),
        ("external", ["bad.h5[external]: its data are stored in external files", "raw.bin"]),
        ("elink", ["bad.h5[elink]: an external link to", "other.h5:/y: refused"]),
        ("dangling", ["bad.h5[dangling]: a soft link to /gone that dangles"]),
        ("loop", ["bad.h5[loop]: soft links that loop"]),
        ("shape", ["bad.h5[shape] has shape (4, 5)"]),
    ],
)
def test_refusals(
    bad: dict[str, Path], capsys: pytest.CaptureFixture[str], key: str, fragments: list[str]
) -> None:
    one_error_line(*run(["eval", bad["bad"], bad["t"], "--pred-key", key], capsys), *fragments)


def test_soft_link_inside_the_file_and_labels_dtype(
    bad: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = sparse_pair((4, 6), seed=9)
    got = eval_json([bad["bad"], bad["t"], "--pred-key", "/soft"], capsys)
    assert got["mse"] == 0.0 and got["elements"] == target.size
    args = [
        "eval",
        bad["t"],
        bad["t"],
        "--labels",
        bad["bad"],
        "--labels-key",
        "float_labels",
        "--class-weights",
        "1,1",
    ]
    one_error_line(*run(args, capsys), "bad.h5[float_labels]: labels must be integers")
    one_error_line(
        *run(["eval", bad["bad"], bad["t"]], capsys),
        "bad.h5: holds 1",
        "datasets (",
        "pick one with --pred-key",
    )


def test_many_datasets_are_listed_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with h5py.File(tmp_path / "many.h5", "w") as f:
        for i in range(40):
            f[f"d{i:02d}"] = np.zeros(3)
    code, out, err = run(["eval", tmp_path / "many.h5", tmp_path / "many.h5"], capsys)
    one_error_line(
        code, out, err, "holds more than 20 datasets (/d00, /d01", "/d19, ...)", "pick one with --"
    )
    assert "/d20" not in err


def test_truncated_and_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, target = sparse_pair((64, 32), seed=2)
    np.save(tmp_path / "t.npy", target)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("x", data=pred, chunks=(8, 32), compression="gzip")
        offset = f["x"].id.get_chunk_info(3).byte_offset
    raw = (tmp_path / "p.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "head.h5").write_bytes(raw[:100])
    corrupt = bytearray(raw)
    corrupt[offset : offset + 64] = bytes(64)
    (tmp_path / "corrupt.h5").write_bytes(bytes(corrupt))
    (tmp_path / "text.h5").write_text("not hdf5\n")
    for name in ("cut", "head", "text"):
        one_error_line(*run(["eval", tmp_path / f"{name}.h5", tmp_path / "t.npy"], capsys), f"{name}.h5")
    one_error_line(
        *run(["eval", tmp_path / "corrupt.h5", tmp_path / "t.npy"], capsys),
        "corrupt.h5[/x]: cannot read the data",
    )


def test_missing_h5py_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pred, _ = sparse_pair((4, 6), seed=9)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["x"] = pred
    monkeypatch.setitem(sys.modules, "h5py", None)
    one_error_line(
        *run(["eval", tmp_path / "p.h5", tmp_path / "p.h5"], capsys), "p.h5: reading HDF5 files needs h5py",
        "pip install 'acbmse-cli[hdf5]'",
    )  # fmt: skip
    with pytest.raises(InputError, match="needs h5py"):
        open_array(tmp_path / "p.h5")


def test_import_and_help_do_not_import_h5py() -> None:
    script = (
        "import sys, acbmse_cli, acbmse_cli.arrays\n"
        "from acbmse_cli.cli import main\n"
        "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('h5py' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
