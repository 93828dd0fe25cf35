"""Opening array files safely and reading them in chunks, never whole.

``acbmse eval`` reads ``.npy``, ``.npz`` and ``.pt`` files that may be far
larger than memory.  :func:`open_array` checks a file (format, header, dtype,
size) without reading its data and returns an :class:`ArraySource` whose
:meth:`~ArraySource.read` hands out any range of elements (in C order) as a
1-D CPU tensor:

- ``.npy``, and ``.npz`` members stored uncompressed (``np.savez``), are
  read by positional reads (``preadv``) of each range's bytes at their data
  offset, into a buffer of that range only; Fortran-ordered ones, through a
  memory map.
- ``.npz`` members that are compressed (``np.savez_compressed``) are
  decompressed as a stream into one reused buffer.
- ``.pt`` files are loaded with ``torch.load(weights_only=True, mmap=True)``.

Nothing is ever unpickled: ``.npy`` headers are read by :mod:`numpy.lib.format`
(a Python literal, parsed with :func:`ast.literal_eval`), object dtypes are refused
before any data is touched, and ``.pt`` files only go through PyTorch's weights-only
loader.
Every problem with a file raises :class:`~acbmse_cli.errors.InputError` with
one line that names the file.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import stat
import struct
import tempfile
import warnings
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.lib import format as npy_format

from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["ArraySource", "Role", "chunk_ranges", "open_array"]

Role = Literal["values", "labels"]
"""What an array is read as: ``values`` (prediction, target) or integer ``labels``."""

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER = 1 << 20
_STREAM_BLOCK = 1 << 24


# --------------------------------------------------------------------------- chunk plan


def chunk_ranges(
    shape: tuple[int, ...], chunk_elements: int, rows: tuple[int, int] | None = None
) -> Iterator[tuple[int, int]]:
    """Element ranges ``[start, stop)`` (C order) that cover ``rows`` of an array in slabs.

    Every range is a slab ``a[i0, ..., ik, j:j2]`` of at most ``chunk_elements``
    elements (at least one element along the last axis), so an array of any
    memory layout can hand it out with one slice.  A range either holds whole
    samples (dim 0) or lies inside one sample; ranges come in increasing order.

    >>> list(chunk_ranges((4, 3), 7))
    [(0, 6), (6, 12)]
    >>> list(chunk_ranges((2, 5), 3))
    [(0, 3), (3, 5), (5, 8), (8, 10)]
    """
    dims = shape if shape else (1,)
    first, last = rows if rows is not None else (0, dims[0])
    yield from _slabs(dims, chunk_elements, 0, first, last)


def _slabs(
    dims: tuple[int, ...], chunk: int, offset: int, first: int, last: int
) -> Iterator[tuple[int, int]]:
    inner = math.prod(dims[1:])
    if inner <= chunk or len(dims) == 1:
        step = max(chunk // max(inner, 1), 1)
        for i in range(first, last, step):
            yield offset + i * inner, offset + min(i + step, last) * inner
        return
    for i in range(first, last):
        yield from _slabs(dims[1:], chunk, offset + i * inner, 0, dims[1])


def _slab_index(shape: tuple[int, ...], start: int, stop: int) -> tuple[int | slice, ...]:
    """The index ``(i0, ..., ik, slice(j, j2))`` of the slab ``[start, stop)`` in C order."""
    dims = shape if shape else (1,)
    inner = math.prod(dims)
    for axis, size in enumerate(dims):
        block, inner = inner, inner // size
        if start % inner == 0 and stop % inner == 0 and start // block == (stop - 1) // block:
            prefix = np.unravel_index(start // block, dims[:axis]) if axis else ()
            j = (start % block) // inner
            return (*(int(i) for i in prefix), slice(j, j + (stop - start) // inner))
    raise ValueError(f"[{start}, {stop}) is not a slab of shape {shape}")  # chunk_ranges never asks this


# --------------------------------------------------------------------------- sources


class ArraySource:
    """One array in a file, read in element ranges.

    Attributes:
        name: the file as the user named it (with ``[key]`` for an archive member).
        shape: the array's shape.
        dtype: the stored dtype, as text (``float32``, ``int16``, ``bfloat16``...).
        size: the number of elements.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: str, role: Role) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.size = math.prod(shape)
        self.role = role

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Elements ``[start, stop)`` in C order as a 1-D CPU tensor.

        Values come as float32 (float16, bfloat16 and float32 files) or
        float64 (float64, integer and bool files); labels as an integer
        dtype.  The range must be one of :func:`chunk_ranges`.  The tensor
        may share memory with the file (a memory map): never write to it.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> ArraySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class _NumpySource(ArraySource):
    """A numpy array (a memory map of the file), read by slicing; or, C-ordered in a file
    at ``data_offset``, read with ``preadv`` into a fresh buffer.

    ``preadv`` copies from the page cache in one call; slicing the map faults every page in
    one by one, which costs more than the copy (about 15% of an eval's time here).
    """

    def __init__(
        self,
        name: str,
        array: np.ndarray,
        role: Role,
        cleanup: Callable[[], None] | None = None,
        *,
        path: str | None = None,
        data_offset: int = 0,
    ):
        super().__init__(name, tuple(array.shape), str(array.dtype.newbyteorder("=")), role)
        self._array: np.ndarray | None = array
        self._flat = array.reshape(-1) if array.flags.c_contiguous else None
        self._cleanup = cleanup
        self._fd: int | None = None
        self._data_offset = data_offset
        if path is not None and self._flat is not None and hasattr(os, "preadv"):
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = None  # the memory map still reads it
            else:  # closed with the source, or when it is collected unclosed
                self._close_fd = weakref.finalize(self, os.close, self._fd)

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._array is None:
            raise ValueError(f"{self.name} is closed")
        try:
            if self._fd is not None:
                chunk = self._pread(start, stop)
            elif self._flat is not None:
                chunk = np.asarray(self._flat[start:stop])
            else:
                chunk = np.ascontiguousarray(self._array[_slab_index(self.shape, start, stop)]).reshape(-1)
            return _to_torch(chunk, self.role)
        except OSError as exc:  # a file that shrank under the memory map, an I/O error
            raise InputError(f"{self.name}: cannot read the data: {exc}") from None

    def _pread(self, start: int, stop: int) -> np.ndarray:
        assert self._fd is not None and self._array is not None
        chunk = np.empty(stop - start, dtype=self._array.dtype)
        view = memoryview(chunk.view(np.uint8))  # type: ignore[arg-type]
        position = self._data_offset + start * chunk.itemsize
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], position + done)
            if n == 0:
                raise InputError(f"{self.name}: cannot read the data: the file is shorter than when opened")
            done += n
        return chunk

    def close(self) -> None:
        self._array = self._flat = None
        if self._fd is not None:
            self._close_fd()
            self._fd = None
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


class _StreamSource(ArraySource):
    """A C-ordered array in a compressed archive member, decompressed as a stream."""

    def __init__(
        self,
        name: str,
        opener: Callable[[], IO[bytes]],
        data_skip: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        role: Role,
        close_archive: Callable[[], None],
    ) -> None:
        super().__init__(name, shape, str(dtype.newbyteorder("=")), role)
        self._opener = opener
        self._data_skip = data_skip
        self._np_dtype = dtype
        self._close_archive = close_archive
        self._stream: IO[bytes] | None = None
        self._position = 0  # in elements
        self._buffer = bytearray()

    def _rewind(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = self._opener()
        self._read_exactly(self._data_skip, memoryview(bytearray(self._data_skip)))
        self._position = 0

    def _read_exactly(self, nbytes: int, into: memoryview) -> None:
        assert self._stream is not None
        got = 0
        try:
            while got < nbytes:
                n = self._stream.readinto(into[got:nbytes])  # type: ignore[attr-defined]
                if not n:
                    raise InputError(f"{self.name}: truncated: the archive member ends before its data does")
                got += n
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise InputError(f"{self.name}: corrupt compressed data: {exc}") from None

    def read(self, start: int, stop: int) -> torch.Tensor:
        itemsize = self._np_dtype.itemsize
        if self._stream is None or start < self._position:
            self._rewind()
        while self._position < start:  # skip forward (another rank's part of the file)
            n = min(start - self._position, max(_STREAM_BLOCK // itemsize, 1))
            self._ensure_buffer(n * itemsize)
            self._read_exactly(n * itemsize, memoryview(self._buffer))
            self._position += n
        data = bytearray((stop - start) * itemsize)  # fresh: the caller may still use the previous chunk
        self._read_exactly(len(data), memoryview(data))
        self._position = stop
        return _to_torch(np.frombuffer(data, dtype=self._np_dtype), self.role)

    def _ensure_buffer(self, nbytes: int) -> None:
        if len(self._buffer) < nbytes:
            self._buffer = bytearray(nbytes)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._close_archive()


class _TorchSource(ArraySource):
    """A tensor from a ``.pt`` file (memory-mapped when the file format allows)."""

    def __init__(self, name: str, tensor: torch.Tensor, role: Role) -> None:
        super().__init__(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), role)
        self._tensor: torch.Tensor | None = tensor
        self._flat = tensor.reshape(-1) if tensor.is_contiguous() else None

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._tensor is None:
            raise ValueError(f"{self.name} is closed")
        if self._flat is not None:
            chunk = self._flat[start:stop]
        else:
            view = self._tensor.reshape(1) if self._tensor.ndim == 0 else self._tensor
            chunk = view[_slab_index(self.shape, start, stop)].reshape(-1)
        return _convert_tensor(chunk, self.role)

    def close(self) -> None:
        self._tensor = self._flat = None


# --------------------------------------------------------------------------- dtypes


def _check_numpy_dtype(name: str, dtype: np.dtype[Any], role: Role) -> None:
    if dtype.hasobject:
        raise InputError(
            f"{name}: holds Python objects (dtype {dtype}), i.e. a pickle; refused without loading it"
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(f"{name}: structured dtype {dtype} is not supported: need a plain numeric array")
    if dtype.kind == "c":
        raise InputError(f"{name}: complex dtype {dtype} is not supported: need real numbers")
    if role == "labels":
        if dtype.kind not in "iu":
            raise InputError(f"{name}: labels must be integers, got dtype {dtype}")
    elif not (dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8))):
        raise InputError(f"{name}: unsupported dtype {dtype}: need bool, an integer or float16/32/64")


def _to_torch(chunk: np.ndarray, role: Role) -> torch.Tensor:
    import torch

    if not chunk.dtype.isnative:
        chunk = chunk.astype(chunk.dtype.newbyteorder("="))
    kind, size = chunk.dtype.kind, chunk.dtype.itemsize
    if role == "labels":
        if not (kind == "i" or (kind == "u" and size == 1)):
            chunk = chunk.astype(np.int64)
    elif kind == "f" and size == 2:
        chunk = chunk.astype(np.float32)
    elif kind != "f":
        chunk = chunk.astype(np.float64)
    return torch.from_numpy(chunk)


_TORCH_VALUE_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                       "float16", "bfloat16", "float32", "float64")  # fmt: skip


def _check_tensor(name: str, tensor: torch.Tensor, role: Role) -> None:
    import torch

    # Only a plain dense tensor in CPU memory can be sliced and read: refuse the rest by name.
    if tensor.is_meta:
        raise InputError(f"{name}: holds a meta tensor (a shape without data): need a tensor with values")
    if tensor.is_nested:
        raise InputError(f"{name}: nested tensors are not supported: need a dense tensor")
    if tensor.layout != torch.strided:
        raise InputError(f"{name}: {tensor.layout} tensors are not supported: need a dense tensor")
    if tensor.device.type != "cpu":
        raise InputError(f"{name}: a tensor on {tensor.device} after loading: need a CPU tensor")
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_complex():
        raise InputError(f"{name}: complex dtype {dtype} is not supported: need real numbers")
    if role == "labels":
        if tensor.is_floating_point() or tensor.dtype == torch.bool or dtype not in _TORCH_VALUE_DTYPES:
            raise InputError(f"{name}: labels must be integers, got dtype {dtype}")
    elif dtype not in _TORCH_VALUE_DTYPES:
        raise InputError(f"{name}: unsupported dtype {dtype}: need bool, an integer or float16/32/64")


def _convert_tensor(chunk: torch.Tensor, role: Role) -> torch.Tensor:
    import torch

    if role == "labels":
        if chunk.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            return chunk.to(torch.int64)
        return chunk
    if chunk.dtype in (torch.float16, torch.bfloat16):
        return chunk.to(torch.float32)
    if chunk.dtype in (torch.float32, torch.float64):
        return chunk
    return chunk.to(torch.float64)


# --------------------------------------------------------------------------- .npy


class _HeaderReader:
    """The first ``limit`` bytes of a stream, read by numpy's header reader.

    It counts the bytes read (the header's length), and notes whether a read came up short
    at the stream's end (a truncated file) or at ``limit`` (a header too long to be one).
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._left = limit
        self.consumed = 0
        self.at_limit = False
        self.at_end = False

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            self.at_limit = True
            size = self._left
        data = self._stream.read(size)
        if len(data) < size:
            self.at_end = True
        self._left -= len(data)
        self.consumed += len(data)
        return data


# Format 3.0 is 2.0 with the header in UTF-8 rather than latin-1: for the dtypes read here
# the header is ASCII, the same in both.
_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
    (3, 0): npy_format.read_array_header_2_0,
}


@dataclass(frozen=True)
class _NpyHeader:
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    size: int  # bytes, from the magic string to the data


def _read_npy_header(stream: IO[bytes], name: str) -> _NpyHeader:
    """The header of a .npy file at the start of ``stream``, read by :mod:`numpy.lib.format`.

    numpy parses the header with :func:`ast.literal_eval`: nothing is unpickled.
    """
    reader = _HeaderReader(stream, 12 + _MAX_HEADER)
    try:
        version = npy_format.read_magic(reader)
    except ValueError:
        raise InputError(f"{name}: not a .npy array (no NumPy header)") from None
    read_header = _HEADER_READERS.get(version)
    if read_header is None:
        raise InputError(f"{name}: unsupported .npy format version {version[0]}.{version[1]}")
    try:
        with warnings.catch_warnings():  # a header written by Python 2 is read with a warning
            warnings.simplefilter("ignore")
            shape, fortran_order, dtype = read_header(reader, max_header_size=_MAX_HEADER)
    except Exception:  # any malformed header, whatever the parser makes of it
        if reader.at_limit:
            raise InputError(f"{name}: corrupt header (longer than {_MAX_HEADER} bytes)") from None
        if reader.at_end:
            raise InputError(f"{name}: truncated: the file ends inside its header") from None
        raise InputError(f"{name}: corrupt .npy header") from None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise InputError(f"{name}: corrupt .npy header")
    return _NpyHeader(dtype, tuple(shape), bool(fortran_order), reader.consumed)


def _check_size(name: str, header: _NpyHeader, available: int) -> int:
    """The size of the data in bytes, which must be ``available``; an empty array is refused."""
    nbytes = math.prod(header.shape) * header.dtype.itemsize
    if math.prod(header.shape) == 0:
        raise InputError(f"{name}: empty array (shape {header.shape})")
    if available < nbytes:
        raise InputError(
            f"{name}: truncated: the header promises {nbytes} bytes of data, the file holds {available}"
        )
    if available > nbytes:
        raise InputError(f"{name}: corrupt: {available} bytes of data where the header promises {nbytes}")
    return nbytes


def _open_npy(path: str, name: str, role: Role) -> ArraySource:
    with open(path, "rb") as f:
        header = _read_npy_header(f, name)
        _check_numpy_dtype(name, header.dtype, role)
        file_size = os.fstat(f.fileno()).st_size
    _check_size(name, header, file_size - header.size)
    array = _memmap(path, name, header, header.size)
    return _NumpySource(name, array, role, path=path, data_offset=header.size)


def _memmap(path: str, name: str, header: _NpyHeader, offset: int) -> np.ndarray:
    """The data described by ``header``, at ``offset`` in the file."""
    try:
        # Copy-on-write: writable for torch.from_numpy, and the file is never written.
        return np.memmap(path, dtype=header.dtype, mode="c", offset=offset, shape=header.shape or (1,),
                         order="F" if header.fortran_order else "C").reshape(header.shape)  # fmt: skip
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot map the data: {exc}") from None


# --------------------------------------------------------------------------- .npz


def _open_npz(path: str, name: str, key: str | None, key_option: str, role: Role) -> ArraySource:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{name}: not a valid .npz archive: {exc}") from None
    try:
        return _open_npz_member(path, name, archive, key, key_option, role)
    except BaseException:
        archive.close()
        raise


def _open_npz_member(
    path: str, name: str, archive: zipfile.ZipFile, key: str | None, key_option: str, role: Role
) -> ArraySource:
    members = {info.filename.removesuffix(".npy"): info for info in archive.infolist() if not info.is_dir()}
    arrays = sorted(members)
    if key is None:
        if len(arrays) != 1:
            listed = ", ".join(arrays) if arrays else "nothing"
            raise InputError(f"{name}: holds {len(arrays)} arrays ({listed}): pick one with {key_option}")
        key = arrays[0]
    elif key not in members:
        raise InputError(f"{name}: has no array {key!r} (it holds: {', '.join(arrays) or 'nothing'})")
    info = members[key]
    label = f"{name}[{key}]"
    if info.flag_bits & 0x1:
        raise InputError(f"{label}: encrypted archive members are not supported")
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            return _stored_member(path, label, archive, info, role)
        return _compressed_member(label, archive, info, role)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InputError(f"{label}: corrupt archive member: {exc}") from None


def _local_data_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose extra field may differ."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != _ZIP_MAGIC:
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset + 30 + name_len + extra_len)


def _stored_member(
    path: str, label: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, role: Role
) -> ArraySource:
    start = _local_data_offset(path, info)
    with open(path, "rb") as f:
        f.seek(start)
        header = _read_npy_header(f, label)
        file_size = os.fstat(f.fileno()).st_size
    _check_numpy_dtype(label, header.dtype, role)
    if start + info.file_size > file_size:
        raise InputError(f"{label}: truncated: the archive ends inside this member")
    _check_size(label, header, info.file_size - header.size)
    archive.close()
    offset = start + header.size
    return _NumpySource(label, _memmap(path, label, header, offset), role, path=path, data_offset=offset)


def _compressed_member(
    label: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, role: Role
) -> ArraySource:
    with archive.open(info) as stream:
        header = _read_npy_header(stream, label)
    _check_numpy_dtype(label, header.dtype, role)
    _check_size(label, header, info.file_size - header.size)
    if not header.fortran_order:
        return _StreamSource(
            label, lambda: archive.open(info), header.size, header.shape, header.dtype, role, archive.close
        )
    # Fortran order cannot be streamed in C order: decompress to a temporary file and map that.
    fd, tmp = tempfile.mkstemp(prefix="acbmse-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as out, archive.open(info) as stream:
            stream.read(header.size)
            shutil.copyfileobj(stream, out, _STREAM_BLOCK)
        array = _memmap(tmp, label, header, 0)
    finally:
        os.unlink(tmp)  # the map keeps the data until it is closed
        archive.close()
    return _NumpySource(label, array, role)


# --------------------------------------------------------------------------- .pt


def _open_pt(path: str, name: str, key: str | None, key_option: str, role: Role) -> ArraySource:
    tensor, label = _pick_tensor(_torch_load(path, name), name, key, key_option)
    _check_tensor(label, tensor, role)
    if tensor.numel() == 0:
        raise InputError(f"{label}: empty array (shape {tuple(tensor.shape)})")
    return _TorchSource(label, tensor.detach(), role)


def _torch_load(path: str, name: str) -> object:
    """The file's object, by PyTorch's weights-only loader (memory-mapped where the format allows)."""
    import torch

    def load(*, mmap: bool) -> object:
        with warnings.catch_warnings():  # a refused pickle is reported below, once
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return load(mmap=False)  # the legacy (non-zip) format cannot be memory-mapped
    except pickle.UnpicklingError:
        raise InputError(
            f"{name}: holds Python objects other than tensors; refused without running them "
            "(only weights-only .pt files are read)"
        ) from None
    except Exception as exc:  # torch.load reports corruption with many exception types
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{name}: not a readable .pt file (truncated or corrupt?): {reason}") from None


def _pick_tensor(obj: object, name: str, key: str | None, key_option: str) -> tuple[torch.Tensor, str]:
    """The tensor that ``key`` names in a loaded object (a tensor, or a dict of them), and its label."""
    import torch

    if isinstance(obj, dict):
        return _dict_entry(obj, name, key, key_option)
    if key is not None:
        raise InputError(f"{name}: holds a single tensor, not a dict: {key_option} does not apply")
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{name}: holds a {type(obj).__name__}, not a tensor")
    return obj, name


def _dict_entry(obj: dict[Any, Any], name: str, key: str | None, key_option: str) -> tuple[torch.Tensor, str]:
    import torch

    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if key is None:
        if len(obj) != 1 or len(tensors) != 1:
            listed = ", ".join(sorted(map(str, obj))) or "nothing"
            raise InputError(
                f"{name}: holds a dict of {len(obj)} entries ({listed}): pick one with {key_option}"
            )
        key = next(iter(tensors))
    elif key not in tensors:
        raise InputError(f"{name}: has no tensor {key!r} (it holds: {', '.join(sorted(tensors)) or 'none'})")
    return tensors[key], f"{name}[{key}]"


# --------------------------------------------------------------------------- entry point


def open_array(path: str | os.PathLike[str], *, key: str | None = None, role: Role = "values",
               key_option: str = "a key") -> ArraySource:  # fmt: skip
    """Check an array file and open it for chunked reading.

    The format comes from the file's content, not its name: a NumPy header
    means ``.npy``; a zip archive of ``.npy`` members means ``.npz``; anything
    else is handed to PyTorch's weights-only loader as a ``.pt`` file.

    Args:
        path: the file.
        key: which array of an ``.npz`` archive (or of a dict in a ``.pt`` file).
        role: ``"values"`` accepts bool, integer and float16/32/64 (and
            bfloat16 in ``.pt``); ``"labels"`` accepts integers only.
        key_option: how the user picks a key, for the message when one is needed.

    Raises:
        InputError: one line naming the file: missing, a directory, a FIFO or device, not an
            array, truncated or corrupt, a pickle, an unsupported dtype, empty.
    """
    path = os.fspath(path)
    lead = _read_lead(path)
    if lead.startswith(_NPY_MAGIC):
        if key is not None:
            raise InputError(f"{path}: is a .npy file holding one array: {key_option} does not apply")
        return _open_npy(path, path, role)
    if lead.startswith(_ZIP_MAGIC) and not _is_torch_archive(path, path):
        return _open_npz(path, path, key, key_option, role)
    if not (lead.startswith(_ZIP_MAGIC) or lead[:1] == b"\x80"):  # neither a zip nor a pickle
        raise InputError(f"{path}: not an array file (need .npy, .npz or .pt)")
    return _open_pt(path, path, key, key_option, role)


def _read_lead(path: str) -> bytes:
    """The first bytes of a regular file that is not empty."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, not an array file")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block the reads below, or never end
        raise InputError(f"{path}: not a regular file ({_file_kind(mode)}): need an array file")
    try:
        with open(path, "rb") as f:
            lead = f.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not lead:
        raise InputError(f"{path}: empty file, not an array")
    return lead


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a plain file"


def _is_torch_archive(path: str, name: str) -> bool:
    """A zip written by ``torch.save`` (it holds ``<archive>/data.pkl``), not an ``.npz``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{name}: truncated or corrupt zip archive (.npz or .pt): {exc}") from None
