"""acbmse_cli.arrays under faults: corrupt bytes (CRC-32), files that shrink while read, temporary
files that cannot be written, tensors that declare far more elements than they store, and the labels
key; every one an InputError of one line, or correct numbers, never another exception or a signal."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_run import run_cli as _run
from eval_reference import assert_close, reference_report

from acbmse_cli import arrays
from acbmse_cli.arrays import ArraySource, chunk_ranges, open_array
from acbmse_cli.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("truncation_worker.py")


def _read_as_eval(source: ArraySource, chunk: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The ranges of ``rows`` in order, then verify: what ``acbmse eval`` does with a source."""
    parts = [source.read(a, b).numpy().astype(np.float64) for a, b in chunk_ranges(source.shape, chunk, rows)]
    source.verify()
    return np.concatenate(parts) if parts else np.zeros(0)


def _member_data_offset(path: Path, member: str = "arr_0.npy") -> int:
    """Where a stored member's .npy bytes start in its archive."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset + 30 + name_len + extra_len)


def _flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _one_line_error(message: str, *names: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert name in message, message


# --------------------------------------------------------------------------- CRC-32 of stored members


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("chunk", [7, 50, 10_000])
def test_a_stored_member_with_one_flipped_bit_is_refused(tmp_path: Path, order: str, chunk: int) -> None:
    """A 0 that becomes 9e-44 reads without complaint as a number: only the CRC-32 tells."""
    data = np.asarray(np.zeros((20, 30)), order=order)
    path = tmp_path / "a.npz"
    np.savez(path, data)
    _flip_bit(path, _member_data_offset(path) + 128 + 8 * 123)  # the lowest bit of element 123
    with open_array(path) as source, pytest.raises(InputError, match="CRC-32") as error:
        _read_as_eval(source, chunk)
    _one_line_error(str(error.value), "a.npz[arr_0]", "corrupt")


def test_a_flipped_bit_in_a_stored_members_header_is_refused(tmp_path: Path) -> None:
    """'<f8' and '>f8' differ by one bit: the header still parses, and every number is byte-swapped."""
    path = tmp_path / "a.npz"
    np.savez(path, np.arange(10.0))
    _flip_bit(path, path.read_bytes().index(b"'<f8'", _member_data_offset(path)) + 1, 1)
    with open_array(path) as source, pytest.raises(InputError, match=r"a\.npz\[arr_0\]: corrupt: .*CRC-32"):
        assert source.dtype == "float64"
        _read_as_eval(source, 4)


def test_the_checksum_is_checked_by_the_read_that_completes_it(tmp_path: Path) -> None:
    """Read in order, the last chunk's read raises: nothing after it can use the data."""
    path = tmp_path / "a.npz"
    np.savez(path, np.arange(100.0))
    _flip_bit(path, _member_data_offset(path) + 128 + 8 * 3 + 7, 6)
    with open_array(path) as source:
        ranges = list(chunk_ranges(source.shape, 30))
        for start, stop in ranges[:-1]:
            source.read(start, stop)
        with pytest.raises(InputError, match=r"a\.npz\[arr_0\]: corrupt: .*CRC-32"):
            source.read(*ranges[-1])


@pytest.mark.parametrize("rows", [(30, 70), (0, 40), (90, 120), (50, 50)])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_verify_checks_the_bytes_another_rank_reads(tmp_path: Path, rows: tuple[int, int], save: Any) -> None:
    """One process of several reads its rows only; verify covers the rest, before any result."""
    data = np.random.default_rng(3).normal(size=(120, 250))  # incompressible: inflated as it is read
    save(tmp_path / "good.npz", data)
    with open_array(tmp_path / "good.npz") as source:
        got = _read_as_eval(source, 1000, rows)
    np.testing.assert_array_equal(got, data[rows[0] : rows[1]].reshape(-1))
    _corrupt_member(tmp_path / "good.npz", tmp_path / "bad.npz", compressed=save is np.savez_compressed)
    with open_array(tmp_path / "bad.npz") as source:
        if rows[1] < 120:  # the rank that reads the last row has its last read check the sum
            parts = [source.read(a, b) for a, b in chunk_ranges(source.shape, 1000, rows)]
            assert sum(len(p) for p in parts) == data[rows[0] : rows[1]].size
        with pytest.raises(InputError, match=r"bad\.npz\[arr_0\]: corrupt"):
            _read_as_eval(source, 1000, rows)


def _corrupt_member(good: Path, bad: Path, *, compressed: bool) -> None:
    """A copy of ``good`` whose member fails its CRC-32: a flipped bit in element 119 where stored; where
    compressed, the recorded CRC-32 changed (a flipped bit would break the deflate stream instead)."""
    shutil.copy(good, bad)
    if not compressed:
        _flip_bit(bad, _member_data_offset(bad) + 128 + 8 * 119)
        return
    with zipfile.ZipFile(bad) as archive:
        crc = archive.getinfo("arr_0.npy").CRC
    raw = bad.read_bytes()
    assert raw.count(struct.pack("<I", crc)) == 2  # the local header and the central directory
    bad.write_bytes(raw.replace(struct.pack("<I", crc), struct.pack("<I", crc ^ 1)))


@pytest.mark.parametrize("order", ["C", "F"])
def test_compressed_members_are_checked_by_zipfile_as_they_stream(tmp_path: Path, order: str) -> None:
    np.savez_compressed(tmp_path / "good.npz", np.asarray(np.arange(400.0).reshape(20, 20), order=order))
    _corrupt_member(tmp_path / "good.npz", tmp_path / "bad.npz", compressed=True)
    pattern = r"bad\.npz\[arr_0\]: corrupt.*CRC-32"
    with pytest.raises(InputError, match=pattern) as error, open_array(tmp_path / "bad.npz") as source:
        _read_as_eval(source, 30)
    _one_line_error(str(error.value))


def test_pt_storage_records_are_crc_checked(tmp_path: Path) -> None:
    tensor = torch.arange(300, dtype=torch.float32).reshape(10, 30)
    torch.save({"x": tensor, "y": tensor.t()}, tmp_path / "t.pt")
    data = tmp_path / "t.pt"
    with zipfile.ZipFile(data) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    _flip_bit(data, _member_data_offset(data, record.filename) + 4 * 17 + 2)
    for key in ("x", "y"):  # contiguous, read in order; strided, checked by verify
        with (
            open_array(data, key=key) as source,
            pytest.raises(InputError, match=rf"t\.pt\[{key}\]: .*CRC-32"),
        ):
            _read_as_eval(source, 64)


def test_pt_written_without_checksums_is_read(tmp_path: Path) -> None:
    """``torch.serialization.set_crc32_options(False)`` records 0: no checksum to compare."""
    tensor = torch.arange(50, dtype=torch.float64)
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(tensor, tmp_path / "t.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    with open_array(tmp_path / "t.pt") as source:
        np.testing.assert_array_equal(_read_as_eval(source, 7), tensor.numpy())


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_eval_of_a_corrupt_stored_member_prints_no_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    rng = np.random.default_rng(1)
    target = np.where(rng.random((40, 16)) < 0.1, 100.0, 0.0).astype(np.float32)
    np.savez(tmp_path / "t.npz", target=target)
    np.save(tmp_path / "p.npy", target + 1)
    _flip_bit(tmp_path / "t.npz", _member_data_offset(tmp_path / "t.npz", "target.npy") + 128 + 4 * 300)
    args = ["eval", tmp_path / "p.npy", tmp_path / "t.npz", "--format", fmt, "--device", "cpu"]
    for chunk in (None, 64):
        code, out, err = _run(args + ([] if chunk is None else ["--chunk-elements", chunk]), capsys)
        assert (code, out) == (2, "")
        assert err.startswith("acbmse: error: ") and err.count("\n") == 1, err
        assert "t.npz[target]" in err and "CRC-32" in err


# --------------------------------------------------------------------------- files that shrink while read


READ_FROM_THE_FILE = [
    "npy-C",
    "npy-F",
    "npz-stored-C",
    "npz-stored-F",
    "npz-compressed-C",
    "pt",
    "pt-strided",
]
HELD_IN_MEMORY = ["npz-compressed-F", "pt-legacy"]  # staged in a temporary file, or loaded whole
FUZZ_CASES = 30


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[dict[str, Any]]]:
    """The worker's results for a format: its process runs once, for both tests below."""

    @functools.cache
    def results(fmt: str) -> list[dict[str, Any]]:
        directory = tmp_path_factory.mktemp(fmt)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent)])}
        done = subprocess.run(
            [sys.executable, str(WORKER), fmt, str(directory), str(FUZZ_CASES), str(sum(map(ord, fmt)))],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"the worker died (exit {done.returncode}):\n{done.stderr[-3000:]}"
        return [json.loads(line) for line in done.stdout.splitlines()]

    return results


@pytest.mark.parametrize("fmt", READ_FROM_THE_FILE + HELD_IN_MEMORY)
def test_a_file_that_shrinks_between_reads_is_one_input_error(
    truncated: Callable[[str], list[dict[str, Any]]], fmt: str
) -> None:
    """``torch.save`` over a checkpoint being read: a memory map would die of SIGBUS (exit 135)."""
    (result,) = [r for r in truncated(fmt) if r["mode"] == "shrink"]
    if fmt in HELD_IN_MEMORY:
        assert result["outcome"] == "ok", result
        return
    assert result["outcome"] == "input_error", result
    _one_line_error(result["message"], "a.")
    assert "shorter than when opened" in result["message"] or "truncated" in result["message"], result


@pytest.mark.parametrize("fmt", READ_FROM_THE_FILE + HELD_IN_MEMORY)
def test_truncation_at_random_offsets_before_and_while_reading(
    truncated: Callable[[str], list[dict[str, Any]]], fmt: str
) -> None:
    """Cut anywhere, before opening or after any chunk: the right numbers, or one InputError."""
    results = [r for r in truncated(fmt) if r["mode"] == "fuzz"]
    assert len(results) == FUZZ_CASES
    for result in results:
        assert result["outcome"] in ("ok", "input_error"), result
        if result["outcome"] == "input_error":
            _one_line_error(result["message"], f"{result['case']['seed']}-a.")
    cut_short = [r for r in results if r["case"]["offset"] < r["case"]["size"] and r["case"]["when"] is None]
    assert cut_short and all(r["outcome"] == "input_error" for r in cut_short)


# --------------------------------------------------------------------------- staging Fortran-ordered members


@pytest.fixture
def tmpdir_for_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(arrays.tempfile, "tempdir", str(staging))
    return staging


def _fortran_npz(path: Path, shape: tuple[int, ...] = (64, 64)) -> np.ndarray:
    data = np.asfortranarray(np.arange(np.prod(shape), dtype=np.float64).reshape(shape))
    np.savez_compressed(path, data)
    return data


def test_a_staged_member_over_the_limit_is_refused_before_writing(
    tmp_path: Path, tmpdir_for_staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fortran_npz(tmp_path / "f.npz")
    monkeypatch.setattr(arrays, "MAX_STAGED_BYTES", 1000)
    with pytest.raises(InputError, match=r"f\.npz\[arr_0\]: .*32,768 bytes exceed the limit") as error:
        open_array(tmp_path / "f.npz")
    _one_line_error(str(error.value), "C order")
    assert os.listdir(tmpdir_for_staging) == []


def test_a_staged_member_larger_than_the_free_space_is_refused(
    tmp_path: Path, tmpdir_for_staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fortran_npz(tmp_path / "f.npz")
    real = shutil.disk_usage
    monkeypatch.setattr(arrays.shutil, "disk_usage", lambda p: real(p)._replace(free=(64 << 20) + 30_000))
    with pytest.raises(InputError, match=r"exceed the free space in .*tmp") as error:
        open_array(tmp_path / "f.npz")
    _one_line_error(str(error.value))
    assert os.listdir(tmpdir_for_staging) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EIO])
def test_a_write_error_while_staging_is_one_line_and_leaves_nothing(
    tmp_path: Path, tmpdir_for_staging: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    _fortran_npz(tmp_path / "f.npz")
    seen: list[list[str]] = []

    def copy_then_fail(src: Any, dst: Any, length: int = 0) -> None:
        dst.write(src.read(1000))
        seen.append(os.listdir(tmpdir_for_staging))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(arrays.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(
        InputError, match=rf"f\.npz\[arr_0\]: cannot decompress .*{os.strerror(code)}"
    ) as error:
        open_array(tmp_path / "f.npz")
    _one_line_error(str(error.value))
    assert seen == [[]], "the temporary file has a name while it is written"
    assert os.listdir(tmpdir_for_staging) == []


def test_a_staged_member_reads_back_and_leaves_nothing(tmp_path: Path, tmpdir_for_staging: Path) -> None:
    data = _fortran_npz(tmp_path / "f.npz", (9, 5, 7))
    with open_array(tmp_path / "f.npz") as source:
        assert os.listdir(tmpdir_for_staging) == []
        np.testing.assert_array_equal(_read_as_eval(source, 11), data.reshape(-1))
    assert os.listdir(tmpdir_for_staging) == []


_STAGING_SCRIPT = """
import os, resource, signal, sys
from acbmse_cli import arrays
from acbmse_cli.errors import InputError
mode, path = sys.argv[1], sys.argv[2]
if mode == "ulimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
else:  # killed by SIGTERM halfway through staging, with the default action
    real = arrays.shutil.copyfileobj
    def copy(src, dst, length=0):
        dst.write(src.read(10_000)); dst.flush()
        os.kill(os.getpid(), signal.SIGTERM)
    arrays.shutil.copyfileobj = copy
try:
    arrays.open_array(path)
except InputError as exc:
    print(exc)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX limits and signals")
@pytest.mark.parametrize("mode", ["ulimit", "sigterm"])
def test_staging_under_ulimit_f_and_sigterm(tmp_path: Path, mode: str) -> None:
    _fortran_npz(tmp_path / "f.npz")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    done = subprocess.run(
        [sys.executable, "-c", _STAGING_SCRIPT, mode, str(tmp_path / "f.npz")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    if mode == "ulimit":
        assert done.returncode == 0, done.stderr
        assert "exceed the file size limit (ulimit -f)" in done.stdout and done.stdout.count("\n") == 1
    else:
        assert done.returncode == -signal.SIGTERM, done.stderr
    assert os.listdir(tmp_path / "tmp") == []


# --------------------------------------------------------------------------- expanded .pt tensors


def test_a_tiny_pt_declaring_2_to_the_40_elements_is_refused(tmp_path: Path) -> None:
    torch.save(torch.zeros(1).expand(1 << 40), tmp_path / "huge.pt")
    assert (tmp_path / "huge.pt").stat().st_size < 4096
    with pytest.raises(
        InputError, match=r"huge\.pt: declares 1,099,511,627,776 elements over a storage of 1"
    ):
        open_array(tmp_path / "huge.pt")
    torch.save({"x": torch.arange(3.0).expand(17, 3)}, tmp_path / "dict.pt")  # 51 elements over 3
    with pytest.raises(InputError, match=r"dict\.pt\[x\]: .*expanded view") as error:
        open_array(tmp_path / "dict.pt", key="x")
    _one_line_error(str(error.value), "contiguous()")
    torch.save(torch.arange(3.0).expand(17, 3), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match="expanded view"):
        open_array(tmp_path / "old.pt")


def test_a_moderately_expanded_pt_reads_back(tmp_path: Path) -> None:
    base = torch.arange(5.0)
    torch.save(base.expand(16, 5), tmp_path / "e.pt")  # 80 elements over 5: at the limit
    torch.save(base[:, None].expand(5, 3).t(), tmp_path / "t.pt")
    with open_array(tmp_path / "e.pt") as source:
        np.testing.assert_array_equal(_read_as_eval(source, 7), np.tile(np.arange(5.0), 16))
    with open_array(tmp_path / "t.pt") as source:
        np.testing.assert_array_equal(_read_as_eval(source, 4), np.tile(np.arange(5.0), 3))


# --------------------------------------------------------------------------- --labels-key


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    target = np.where(rng.random((30, 8)) < 0.2, rng.uniform(10, 50, (30, 8)), 0.0).astype(np.float32)
    pred = (target + rng.normal(0, 2, target.shape)).astype(np.float32)
    labels = rng.integers(0, 3, target.shape).astype(np.int16)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", target)
    np.savez(tmp_path / "l.npz", classes=labels, other=labels[::-1].copy())
    torch.save({"classes": torch.from_numpy(labels), "mask": torch.ones(3)}, tmp_path / "l.pt")
    return pred, target, labels


@pytest.mark.parametrize("name", ["l.npz", "l.pt"])
def test_labels_key_picks_the_labels_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labelled: tuple[np.ndarray, ...], name: str
) -> None:
    pred, target, labels = labelled
    args = ["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--labels", tmp_path / name]
    args += ["--class-weights", "0.5,1,2", "--device", "cpu", "--format", "json"]
    code, out, err = _run(args, capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert f"{name}: holds" in err and "pick one with --labels-key" in err
    code, out, err = _run([*args, "--labels-key", "classes"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["run"]["labels_key"] == "classes"
    expected = reference_report(
        pred, target, weights=(0.5, 1.0, 2.0), labels=labels, paths=(args[1], args[2])
    )
    assert_close(doc, expected)


def test_labels_key_needs_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str], labelled: Any) -> None:
    code, out, err = _run(["eval", tmp_path / "p.npy", tmp_path / "t.npy", "--labels-key", "x"], capsys)
    assert (code, out) == (2, "")
    assert err == "acbmse: error: --labels-key needs --labels: it picks the array of a labels .npz or .pt\n"


# --------------------------------------------------------------------------- under torchrun


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_torchrun_eval_of_a_corrupt_stored_member_prints_no_report(tmp_path: Path) -> None:
    """The flipped bit lies in the second rank's rows: the first rank's verify finds it too, and no
    rank prints a report."""
    rng = np.random.default_rng(4)
    target = np.where(rng.random((20, 50)) < 0.2, 30.0, 0.0).astype(np.float32)
    np.save(tmp_path / "p.npy", target + 1)
    np.savez(tmp_path / "t.npz", target=target)
    _flip_bit(tmp_path / "t.npz", _member_data_offset(tmp_path / "t.npz", "target.npy") + 128 + 4 * 900)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, "-m", "acbmse_cli", "eval", "p.npy", "t.npz", "--format", "json", "--chunk-elements", "64",
         "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("acbmse: error: t.npz[target]: corrupt: its bytes do not match") == 1, (
        done.stderr
    )
