"""acbmse_cli.arrays: every format reads back exactly, in any chunking; bad files are refused safely."""

from __future__ import annotations

import gc
import io
import itertools
import math
import os
import pickle
import struct
import tempfile
import unittest.mock
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acbmse_cli import arrays
from acbmse_cli.arrays import _slab_index, chunk_ranges, open_array
from acbmse_cli.errors import InputError

# --------------------------------------------------------------------------- the chunk plan


@pytest.mark.parametrize(
    "shape",
    [(), (1,), (7,), (3, 4), (2, 3, 5), (4, 1, 3, 2), (2, 300), (5, 2, 2, 2)],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 1000])
def test_chunk_ranges_cover_the_array_in_slabs(shape: tuple[int, ...], chunk: int) -> None:
    size = math.prod(shape)
    ranges = list(chunk_ranges(shape, chunk))
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    row = math.prod(shape[1:]) if shape else 1
    reference = np.arange(size).reshape(shape)
    for start, stop in ranges:
        assert 0 < stop - start <= max(chunk, 1)
        # whole samples, or inside one sample
        whole = start % row == 0 and stop % row == 0
        assert whole or start // row == (stop - 1) // row
        # the slab index selects exactly these elements
        view = reference.reshape(1) if not shape else reference
        np.testing.assert_array_equal(
            view[_slab_index(shape, start, stop)].reshape(-1), np.arange(start, stop)
        )


def test_chunk_ranges_of_a_row_range() -> None:
    assert list(chunk_ranges((6, 2), 4, (2, 5))) == [(4, 8), (8, 10)]
    assert list(chunk_ranges((3, 5), 2, (1, 2))) == [(5, 7), (7, 9), (9, 10)]
    assert list(chunk_ranges((3, 5), 2, (2, 2))) == []


# --------------------------------------------------------------------------- reading back


def _read_all(path: Path, chunk: int, **kwargs: object) -> np.ndarray:
    with open_array(path, **kwargs) as source:  # type: ignore[arg-type]
        parts = [source.read(a, b).numpy().copy() for a, b in chunk_ranges(source.shape, chunk)]
        shape = source.shape
    return np.concatenate(parts).reshape(shape)


def _values(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.3
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(
            dtype
        )
    return (rng.normal(size=shape) * 10).astype(dtype)


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
              "float32", "float64", ">f4", ">i2"],
)  # fmt: skip
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_reads_back_exactly(tmp_path: Path, dtype: str, order: str) -> None:
    data = np.asarray(_values((4, 3, 5), dtype), order=order)
    np.save(tmp_path / "a.npy", data)
    for chunk in (1, 4, 7, 15, 1000):
        got = _read_all(tmp_path / "a.npy", chunk)
        np.testing.assert_array_equal(got, data.astype(np.float64))
        expected = np.float32 if np.dtype(dtype).kind == "f" and np.dtype(dtype).itemsize <= 4 else np.float64
        assert got.dtype == expected


def test_0d_and_1d_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.float32(2.5))
    assert _read_all(tmp_path / "s.npy", 3).shape == ()
    assert float(_read_all(tmp_path / "s.npy", 3)) == 2.5
    np.save(tmp_path / "v.npy", np.arange(10, dtype=np.int32))
    np.testing.assert_array_equal(_read_all(tmp_path / "v.npy", 3), np.arange(10))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npz_members_stored_or_compressed(tmp_path: Path, compressed: bool, order: str) -> None:
    a = np.asarray(_values((6, 7), "float32", 1), order=order)
    b = np.asarray(_values((6, 7), "int16", 2), order=order)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "two.npz", pred=a, target=b)
    save(tmp_path / "one.npz", a)
    for chunk in (1, 5, 7, 50):
        np.testing.assert_array_equal(_read_all(tmp_path / "two.npz", chunk, key="pred"), a)
        np.testing.assert_array_equal(_read_all(tmp_path / "two.npz", chunk, key="target"), b)
        np.testing.assert_array_equal(_read_all(tmp_path / "one.npz", chunk), a)


def test_compressed_member_read_out_of_order(tmp_path: Path) -> None:
    """A stream rewinds for a range before its position (and skips forward to a later one)."""
    a = np.arange(100, dtype=np.float64).reshape(10, 10)
    np.savez_compressed(tmp_path / "a.npz", a)
    with open_array(tmp_path / "a.npz") as source:
        np.testing.assert_array_equal(source.read(70, 80).numpy(), np.arange(70, 80))
        np.testing.assert_array_equal(source.read(10, 30).numpy(), np.arange(10, 30))
        np.testing.assert_array_equal(source.read(90, 100).numpy(), np.arange(90, 100))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.bool])
def test_pt_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5) - 17
    tensor = (base > 0) if dtype == torch.bool else base.to(dtype)
    torch.save(tensor, tmp_path / "t.pt")
    torch.save(tensor.transpose(0, 2), tmp_path / "strided.pt")  # not contiguous
    torch.save({"only": tensor}, tmp_path / "dict1.pt")
    torch.save({"x": tensor, "y": tensor * 2}, tmp_path / "dict2.pt")
    reference = tensor.to(torch.float64).numpy()
    for chunk in (1, 6, 13, 100):
        np.testing.assert_array_equal(_read_all(tmp_path / "t.pt", chunk), reference)
        np.testing.assert_array_equal(_read_all(tmp_path / "strided.pt", chunk), reference.transpose(2, 1, 0))
        np.testing.assert_array_equal(_read_all(tmp_path / "dict1.pt", chunk), reference)
        np.testing.assert_array_equal(_read_all(tmp_path / "dict2.pt", chunk, key="y"), (tensor * 2).double())


@st.composite
def strided_cases(draw: st.DrawFn) -> tuple[str, torch.Tensor, int, dict[str, int]]:
    """A Fortran-ordered array, or a tensor that is a strided view (steps, a permutation, a size-1 axis),
    with a chunk size, and bands and gather reads of a few bytes (so that a small file has many)."""
    kind = draw(st.sampled_from(["npy-F", "npz-F", "pt"]))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=4)))
    steps = tuple(draw(st.integers(1, 3)) for _ in shape)
    base = torch.arange(math.prod(n * k for n, k in zip(shape, steps, strict=True)), dtype=torch.float64)
    tensor = base.reshape([n * k for n, k in zip(shape, steps, strict=True)])
    tensor = tensor[tuple(slice(None, None, k) for k in steps)] if shape else tensor
    tensor = tensor.permute(*draw(st.permutations(range(len(shape))))) if shape else tensor
    limits = {
        "_BAND_BYTES": draw(st.sampled_from([8, 64, 400, 1 << 25])),
        "_GATHER_BLOCK": draw(st.sampled_from([8, 40, 256, 1 << 22])),
        "_GATHER_GAP": draw(st.sampled_from([0, 8, 64, 1 << 14])),
    }
    return kind, tensor, draw(st.integers(1, 50)), limits


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=strided_cases())
def test_strided_layouts_read_back_exactly(case: tuple[str, torch.Tensor, int, dict[str, int]]) -> None:
    kind, tensor, chunk, limits = case
    reference = tensor.numpy().copy()  # C order, float64
    with tempfile.TemporaryDirectory() as directory, unittest.mock.patch.multiple(arrays, **limits):
        path = Path(directory) / ("a.pt" if kind == "pt" else f"a.{kind[:3]}")
        if kind == "pt":
            torch.save(tensor, path)
        else:
            (np.save if kind == "npy-F" else np.savez)(path, np.asfortranarray(reference))
        with open_array(path) as source:
            got = [source.read(a, b).numpy().copy() for a, b in chunk_ranges(source.shape, chunk)]
            again = source.read(*next(chunk_ranges(source.shape, chunk)))  # back to the start
            source.verify()
    np.testing.assert_array_equal(np.concatenate(got).reshape(reference.shape), reference)
    np.testing.assert_array_equal(again.numpy(), got[0])


def test_legacy_pt_format(tmp_path: Path) -> None:
    tensor = torch.arange(12.0).reshape(3, 4)
    torch.save(tensor, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(_read_all(tmp_path / "old.pt", 5), tensor.numpy())


def test_labels_role(tmp_path: Path) -> None:
    np.save(tmp_path / "l.npy", np.array([[0, 2], [1, 65535]], dtype=np.uint16))
    got = _read_all(tmp_path / "l.npy", 3, role="labels")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[0, 2], [1, 65535]])
    np.save(tmp_path / "f.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match=r"f\.npy: labels must be integers, got dtype float32"):
        open_array(tmp_path / "f.npy", role="labels")
    np.save(tmp_path / "b.npy", np.zeros((2, 2), bool))
    with pytest.raises(InputError, match="labels must be integers, got dtype bool"):
        open_array(tmp_path / "b.npy", role="labels")


@pytest.mark.skipif(not hasattr(os, "preadv"), reason="needs os.preadv")
def test_reads_only_the_bytes_of_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .npy and a stored .npz member are read by positional reads of the range's bytes alone."""
    data = np.arange(1000, dtype=np.float32)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "a.npz", data)
    real_preadv = os.preadv
    reads: list[tuple[int, int]] = []

    def spy(fd: int, buffers: list[memoryview], offset: int) -> int:
        reads.append((offset, sum(len(b) for b in buffers)))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", spy)
    for name in ("a.npy", "a.npz"):
        with open_array(tmp_path / name) as source:
            reads.clear()  # opening reads the header
            chunk = source.read(100, 200)
            np.testing.assert_array_equal(chunk.numpy(), data[100:200])
            assert len(reads) == 1 and reads[0][1] == 100 * 4
            with open(tmp_path / name, "rb") as f:  # the offset is that of element 100 in the file
                f.seek(reads[0][0])
                assert f.read(400) == data[100:200].tobytes()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_sources_release_their_files_closed_or_dropped(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(10.0))
    np.savez(tmp_path / "a.npz", np.arange(10.0))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for name in ("a.npy", "a.npz"):
            with open_array(tmp_path / name) as source:
                source.read(0, 5)
            dropped = open_array(tmp_path / name)
            dropped.read(0, 5)
            del dropped
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.skipif(not hasattr(os, "preadv"), reason="needs os.preadv")
def test_a_file_that_shrinks_after_opening_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(1000, dtype=np.float32))
    with open_array(path) as source:
        os.truncate(path, 2000)
        np.testing.assert_array_equal(source.read(0, 100).numpy(), np.arange(100, dtype=np.float32))
        with pytest.raises(InputError, match=r"a\.npy: cannot read the data: the file is shorter"):
            source.read(900, 1000)


# --------------------------------------------------------------------------- bad files


def _npy_bytes(descr: object, shape: tuple[int, ...], payload: bytes, fortran: bool = False) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


class _Marker:
    """Unpickling this creates a file: a payload whose execution a test would notice."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickle_payload_in_npy_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(np.array([_Marker(marker)], dtype=object))
    # the payload is live: unpickling it does create the marker
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    (tmp_path / "evil.npy").write_bytes(_npy_bytes("|O", (1,), payload))
    with pytest.raises(InputError, match=r"evil\.npy: holds Python objects .*refused without loading it"):
        open_array(tmp_path / "evil.npy")
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as z:
        z.writestr("arr_0.npy", _npy_bytes("|O", (1,), payload))
    with pytest.raises(InputError, match=r"evil\.npz\[arr_0\]: holds Python objects"):
        open_array(tmp_path / "evil.npz")
    assert not marker.exists()


def test_pickle_payload_in_pt_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"x": _Marker(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(InputError, match=r"evil\.pt: holds Python objects other than tensors; refused"):
        open_array(tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(InputError, match=r"evil\.pkl: holds Python objects"):
        open_array(tmp_path / "evil.pkl")
    assert not marker.exists()


def _truncate(path: Path, drop: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-drop])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, r"missing\.npy: no such file"),
        (lambda p: p.mkdir(), r"missing\.npy: is a directory"),
        (lambda p: p.write_text("hello, I am text\n"), r"missing\.npy: not an array file"),
        (lambda p: p.write_bytes(b""), r"missing\.npy: empty file"),
        (
            lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10"),
            r"missing\.npy: truncated: the file ends inside its header",
        ),
        (
            lambda p: p.write_bytes(_npy_bytes("<f4", (2, 2), b"\0" * 12)),
            r"truncated: the header promises 16 bytes",
        ),
        (lambda p: p.write_bytes(_npy_bytes("<f4", (2, 2), b"\0" * 20)), r"corrupt: 20 bytes of data"),
        (
            lambda p: p.write_bytes(_npy_bytes("<f4", (2, 2), b"")[:-4] + b"((((" + b"\0" * 16),
            r"corrupt \.npy header",
        ),
        (
            lambda p: p.write_bytes(_npy_bytes("<c8", (2,), b"\0" * 16)),
            r"complex dtype complex64 is not supported",
        ),
        (lambda p: p.write_bytes(_npy_bytes("<U3", (2,), b"\0" * 24)), r"unsupported dtype <U3"),
        (lambda p: p.write_bytes(_npy_bytes("<M8[s]", (2,), b"\0" * 16)), r"unsupported dtype datetime64"),
        (
            lambda p: p.write_bytes(_npy_bytes([("a", "<f4"), ("b", "<f4")], (2,), b"\0" * 16)),
            r"structured dtype",
        ),
        (lambda p: p.write_bytes(_npy_bytes("<f4", (0, 3), b"")), r"empty array \(shape \(0, 3\)\)"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x09\x00" + b"\0" * 30), r"unsupported \.npy format version 9"),
    ],
)
def test_bad_npy_files(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "missing.npy"
    make(path)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        open_array(path)


def test_bad_npz_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.ones(3))
    with pytest.raises(InputError, match=r"two\.npz: holds 2 arrays \(a, b\): pick one with --pred-key"):
        open_array(tmp_path / "two.npz", key_option="--pred-key")
    with pytest.raises(InputError, match=r"two\.npz: has no array 'c' \(it holds: a, b\)"):
        open_array(tmp_path / "two.npz", key="c")
    # a zip that ends early
    np.savez(tmp_path / "cut.npz", np.arange(1000.0))
    _truncate(tmp_path / "cut.npz", 600)
    with pytest.raises(InputError, match=r"cut\.npz: truncated or corrupt zip archive"):
        open_array(tmp_path / "cut.npz")
    # flipped bytes inside a compressed member: the stream or its CRC check fails
    np.savez_compressed(tmp_path / "flip.npz", np.random.default_rng(0).normal(size=5000))
    raw = bytearray((tmp_path / "flip.npz").read_bytes())
    for i in range(2000, 2040):
        raw[i] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    with (
        pytest.raises(InputError, match=r"flip\.npz\[arr_0\]: corrupt"),
        open_array(tmp_path / "flip.npz") as s,
    ):
        for a, b in chunk_ranges(s.shape, 1000):
            s.read(a, b)
    # a zip with no arrays at all
    with zipfile.ZipFile(tmp_path / "none.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(InputError, match=r"none\.npz\[notes\.txt\]: not a \.npy array"):
        open_array(tmp_path / "none.npz")


def test_truncated_stored_npz_member(tmp_path: Path) -> None:
    """A stored member whose bytes are cut short (the archive is otherwise readable)."""
    buffer = io.BytesIO()
    np.save(buffer, np.arange(100, dtype=np.float64))
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:
        z.writestr("arr_0.npy", buffer.getvalue()[:-80])
    with pytest.raises(InputError, match=r"short\.npz\[arr_0\]: truncated"):
        open_array(tmp_path / "short.npz")


def test_bad_pt_files(tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(InputError, match=r"list\.pt: holds a list, not a tensor"):
        open_array(tmp_path / "list.pt")
    torch.save(torch.zeros(3, dtype=torch.complex64), tmp_path / "c.pt")
    with pytest.raises(InputError, match=r"c\.pt: complex dtype complex64 is not supported"):
        open_array(tmp_path / "c.pt")
    torch.save(torch.zeros(0, 4), tmp_path / "e.pt")
    with pytest.raises(InputError, match=r"e\.pt: empty array \(shape \(0, 4\)\)"):
        open_array(tmp_path / "e.pt")
    torch.save({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / "d.pt")
    with pytest.raises(
        InputError, match=r"d\.pt: holds a dict of 2 entries \(a, b\): pick one with --target-key"
    ):
        open_array(tmp_path / "d.pt", key_option="--target-key")
    with pytest.raises(InputError, match=r"d\.pt: has no tensor 'z'"):
        open_array(tmp_path / "d.pt", key="z")
    torch.save(torch.zeros(2, 2).to_sparse(), tmp_path / "s.pt")
    with pytest.raises(InputError, match=r"s\.pt: .*sparse.* not supported"):
        open_array(tmp_path / "s.pt")
    torch.save(torch.arange(1000.0), tmp_path / "cut.pt")
    _truncate(tmp_path / "cut.pt", 500)
    with pytest.raises(InputError, match=r"cut\.pt: truncated or corrupt zip archive"):
        open_array(tmp_path / "cut.pt")
    np.save(tmp_path / "a.npy", np.zeros(2))
    with pytest.raises(
        InputError, match=r"a\.npy: is a \.npy file holding one array: --pred-key does not apply"
    ):
        open_array(tmp_path / "a.npy", key="x", key_option="--pred-key")


def test_pt_tensors_without_plain_cpu_data_are_refused(tmp_path: Path) -> None:
    """A meta tensor (no data) or a nested tensor: one line naming the file, not a traceback."""
    torch.save(torch.empty(3, device="meta"), tmp_path / "meta.pt")
    with pytest.raises(InputError, match=r"meta\.pt: holds a meta tensor"):
        open_array(tmp_path / "meta.pt")
    with pytest.warns(UserWarning, match="prototype"):  # torch's own note on the strided nested layout
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    torch.save({"x": nested}, tmp_path / "nested.pt")
    with pytest.raises(InputError, match=r"nested\.pt\[x\]: nested tensors are not supported"):
        open_array(tmp_path / "nested.pt", key="x")


def test_fifo_is_refused_without_reading(tmp_path: Path) -> None:
    """A FIFO would block the read (or never end): refused by its file type, before any read."""
    import os

    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    # Hold both ends open with bytes waiting, so that a reader that does open it gets
    # junk back instead of blocking: the test fails on the message, it never hangs.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"junk" * 4)
        with pytest.raises(InputError, match=r"pipe\.npy: not a regular file \(a FIFO\)"):
            open_array(fifo)
        assert os.read(reader, 100) == b"junk" * 4  # nothing was consumed
    finally:
        os.close(writer)
        os.close(reader)
