"""Opening array files safely and reading them in chunks, never whole.

``acbmse eval`` reads ``.npy``, ``.npz`` and ``.pt`` files that may be far
larger than memory.  :func:`open_array` checks a file (format, header, dtype,
size) without reading its data and returns an :class:`ArraySource` whose
:meth:`~ArraySource.read` hands out any range of elements (in C order) as a
1-D CPU tensor.

Data are read with positional reads (``preadv``), never through a memory map: a file
that shrinks while it is read (``torch.save`` overwriting a checkpoint under
evaluation) is then one :class:`~acbmse_cli.errors.InputError`, where a map would
kill the process with SIGBUS.

- ``.npy``, and ``.npz`` members stored uncompressed (``np.savez``): each range's
  bytes at their offset, into a buffer of that range only.  Fortran-ordered ones are
  gathered from their strided runs, a band of samples (dim 0) at a time.
- ``.npz`` members that are compressed (``np.savez_compressed``) are decompressed as
  a stream into one reused buffer.  A Fortran-ordered one cannot be streamed in C
  order: it is decompressed first into an unnamed temporary file (gone on any exit,
  a kill included), which is refused, before anything is written, when the data
  exceed :data:`MAX_STAGED_BYTES`, the free space of the temporary directory or the
  file size limit (``ulimit -f``).
- ``.pt`` files are loaded by ``torch.load(weights_only=True)`` onto the ``meta``
  device: each tensor's shape, strides and place in the file, without its data, which
  are then read from the file like a ``.npy``'s.  A tensor that declares more than
  :data:`MAX_ELEMENTS_PER_STORED` times as many elements as its storage holds (an
  expanded view) is refused.  The legacy (pre-zip) format is loaded into memory.
- HDF5 files (``.h5``, ``.hdf5``) are read through h5py (the ``hdf5`` extra), imported only
  for them, in bands of samples aligned to the dataset's chunks (:mod:`acbmse_cli._hdf5`).

Every stored ``.npz`` member, and every ``.pt`` storage record that has one, has its
CRC-32 checked: folded in as the chunks are read in order, and completed by
:meth:`ArraySource.verify`, after the last read, for the bytes the reads left out.
Compressed members are checked by :mod:`zipfile` as they are decompressed.

Nothing is ever unpickled: ``.npy`` headers are read by :mod:`numpy.lib.format`
(a Python literal, parsed with :func:`ast.literal_eval`), object dtypes are refused
before any data is touched, and ``.pt`` files only go through PyTorch's weights-only
loader.
Every problem with a file raises :class:`~acbmse_cli.errors.InputError` with
one line that names the file.
"""

from __future__ import annotations

import functools
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
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from numpy.lib import format as npy_format
from numpy.lib.stride_tricks import as_strided

from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_ELEMENTS_PER_STORED", "MAX_STAGED_BYTES", "ArraySource", "Role", "chunk_ranges", "open_array"]

Role = Literal["values", "labels"]
"""What an array is read as: ``values`` (prediction, target) or integer ``labels``."""

MAX_STAGED_BYTES = 2 << 30
"""The most bytes a Fortran-ordered compressed ``.npz`` member may decompress to (2 GiB):
it is staged whole in the temporary directory before it can be read in C order."""

MAX_ELEMENTS_PER_STORED = 16
"""A ``.pt`` tensor may declare at most this many times the elements its storage holds
(an expanded view repeats them): more would take far longer to read than its file's size says."""

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_HEADER = 1 << 20
_STREAM_BLOCK = 1 << 24
_GATHER_BLOCK = 1 << 22  # the most bytes one positional read of a strided gather takes
_GATHER_GAP = 1 << 14  # unwanted bytes between two wanted runs that one read takes along
_BAND_BYTES = 1 << 25  # the samples a strided source gathers at once, for the chunks that follow
_STAGING_MARGIN = 64 << 20  # free space left in the temporary directory after staging


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


# --------------------------------------------------------------------------- positional reads


class _File:
    """An open file, read with positional reads; closed with its owner, or when collected."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path: str, name: str) -> _File:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
        return cls(name, fd)

    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read: {exc.strerror or exc}") from None

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        data = bytearray(size)
        view = memoryview(data)
        done = 0
        while done < size:
            n = self._read(view[done:], offset + done)
            if n == 0:
                break
            done += n
        return bytes(data[:done])

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the bytes at ``offset``; a file that ends first is an InputError."""
        done = 0
        while done < len(view):
            n = self._read(view[done:], offset + done)
            if n == 0:
                raise InputError(f"{self.name}: cannot read the data: the file is shorter than when opened")
            done += n

    def _read(self, view: memoryview, offset: int) -> int:
        try:
            if hasattr(os, "preadv"):
                return os.preadv(self.fd, [view], offset)
            os.lseek(self.fd, offset, os.SEEK_SET)  # no positional reads here: the fd is this file's own
            data = os.read(self.fd, len(view))
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read the data: {exc}") from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._close()


class _FileStream:
    """A file read from ``position`` on, as a stream (for numpy's header reader)."""

    def __init__(self, file: _File, position: int) -> None:
        self._file = file
        self._position = position

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (numpy's header reader always says how many)."""
        data = self._file.read_at(self._position, max(size, 0))
        self._position += len(data)
        return data


class _Crc32:
    """The CRC-32 of a zip member, the bytes ``[begin, end)`` of a file, checked as they are read.

    A read that continues the bytes folded so far is folded in; any other (a rewind, another
    rank's part, a strided gather) is left out, and :meth:`finish` reads whatever the fold has
    not reached.  The sum is compared as soon as the fold reaches ``end``.
    """

    def __init__(self, name: str, expected: int, begin: int, end: int) -> None:
        self._name = name
        self._expected = expected
        self._position = begin
        self._end = end
        self._crc = 0
        self._checked = False

    def fold(self, offset: int, data: memoryview) -> None:
        if self._checked or offset != self._position:
            return
        data = data[: self._end - offset]
        self._crc = zlib.crc32(data, self._crc)
        self._position += len(data)
        if self._position >= self._end:
            self._check()

    def finish(self, file: _File) -> None:
        block = memoryview(bytearray(min(_STREAM_BLOCK, max(self._end - self._position, 0))))
        while self._position < self._end:
            view = block[: self._end - self._position]
            file.read_into(view, self._position)
            self.fold(self._position, view)
        if not self._checked:
            self._check()

    def _check(self) -> None:
        self._checked = True
        if self._crc != self._expected:
            raise InputError(
                f"{self._name}: corrupt: its bytes do not match the archive's CRC-32 "
                f"({self._crc:08x}, recorded {self._expected:08x})"
            )


# --------------------------------------------------------------------------- strided gathers


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-ordered array."""
    return tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))


def _f_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a Fortran-ordered array."""
    return tuple(math.prod(shape[:i]) for i in range(len(shape)))


def _span(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Elements from a strided view's first to its last, both included."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))


def _is_c_order(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether element strides are those of a C-ordered array of this shape."""
    return all(n == 1 or s == c for n, s, c in zip(shape, strides, _c_strides(shape), strict=True))


def _read_whole_from(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """How a view (strides descending) is read: ``(k, group)``, where one read takes the axes from
    ``k`` on whole, and ``group`` indices of axis ``k - 1`` (if any) together.

    An axis joins the read while the bytes between its runs stay within ``_GATHER_GAP`` and
    the read within ``_GATHER_BLOCK``.
    """
    block = max(_GATHER_BLOCK // itemsize, 1)
    covered = 1  # elements that one read of the axes from k on spans
    for k in range(len(shape), 0, -1):
        n, s = shape[k - 1], strides[k - 1]
        if n > 1 and (s - covered) * itemsize > _GATHER_GAP:
            return k, 1
        if covered + (n - 1) * s > block:
            return k, max((block - covered) // s + 1, 1)
        covered += (n - 1) * s
    return 0, 1


def _gather(
    file: _File, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], out: np.ndarray
) -> None:
    """Fill ``out`` (C-ordered) with the strided view of the file at byte ``offset`` (element
    strides, descending): runs that lie close together in one read, others one read each."""
    k, group = _read_whole_from(shape, strides, out.itemsize)
    if k == 0:
        _read_block(file, offset, shape, strides, out)
    else:
        _gather_axes(file, offset, shape, strides, out, k - 1, group)


def _gather_axes(
    file: _File, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], out: np.ndarray,
    lead: int, group: int,
) -> None:  # fmt: skip
    """One index at a time of the axes before ``lead``, then ``group`` indices of ``lead`` per read."""
    step = strides[0] * out.itemsize
    if lead > 0:
        for i in range(shape[0]):
            _gather_axes(file, offset + i * step, shape[1:], strides[1:], out[i], lead - 1, group)
        return
    for i in range(0, shape[0], group):
        n = min(group, shape[0] - i)
        _read_block(file, offset + i * step, (n, *shape[1:]), strides, out[i : i + n])


def _read_block(
    file: _File, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], out: np.ndarray
) -> None:
    """One read of a strided view: straight into ``out`` when the view is C-ordered, else
    into a buffer of its span, picked from there."""
    if out.flags.c_contiguous and _is_c_order(shape, strides):
        file.read_into(memoryview(out.reshape(-1).view(np.uint8)), offset)  # type: ignore[arg-type]
        return
    buffer = np.empty(_span(shape, strides), out.dtype)
    file.read_into(memoryview(buffer.view(np.uint8)), offset)  # type: ignore[arg-type]
    out[...] = as_strided(buffer, shape, tuple(s * out.itemsize for s in strides))


@dataclass(frozen=True)
class _Layout:
    """Where an array lies in a file: element ``i`` (a multi-index) at byte
    ``offset + dot(i, strides) * dtype.itemsize``."""

    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements

    @property
    def c_contiguous(self) -> bool:
        return _is_c_order(self.shape, self.strides)

    def slab(self, start: int, stop: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """The slab ``[start, stop)`` (C order) as a view: its byte offset, shape and strides."""
        dims, strides = (self.shape, self.strides) if self.shape else ((1,), (1,))
        index = _slab_index(dims, start, stop)
        fixed, part = [i for i in index[:-1] if not isinstance(i, slice)], index[-1]
        assert isinstance(part, slice) and len(fixed) == len(index) - 1
        axis = len(fixed)
        first = sum(i * s for i, s in zip(fixed, strides[:axis], strict=True)) + part.start * strides[axis]
        shape = (part.stop - part.start, *dims[axis + 1 :])
        return self.offset + first * self.dtype.itemsize, shape, strides[axis:]


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
        may share memory with the source's buffers: never write to it.

        Raises:
            InputError: the file cannot be read (it shrank, an I/O error), its data are
                corrupt, or, on the read that completes it, its checksum does not match.
        """
        raise NotImplementedError

    def verify(self) -> None:
        """Complete the data's checksum (CRC-32) over the bytes no read has covered, and check it.

        Called once after the last read, before any result is used: the reads of one
        process of several, or of a Fortran-ordered array, leave bytes out.  Nothing to do
        where the format has no checksum or the reads have already checked it.

        Raises:
            InputError: the checksum does not match, or the file cannot be read.
        """

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> ArraySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape}, dtype={self.dtype})"


Convert = Callable[[np.ndarray], "torch.Tensor"]
"""Turns a chunk as stored (a numpy array) into the tensor a source hands out."""


class _FileSource(ArraySource):
    """An array in a file (see :class:`_Layout`), read with positional reads.

    A C-ordered array is read range by range; any other layout (Fortran order, a strided
    tensor) in bands of whole samples, gathered from the file's strided runs and kept for the
    chunks that follow, or slab by slab where one sample is larger than a band.
    """

    def __init__(
        self, name: str, file: _File, layout: _Layout, role: Role, convert: Convert,
        *, dtype: str | None = None, crc: _Crc32 | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, layout.shape, dtype or str(layout.dtype.newbyteorder("=")), role)
        self._file: _File | None = file
        self._layout = layout
        self._contiguous = layout.c_contiguous
        self._convert = convert
        self._crc = crc
        self._band: tuple[int, int, np.ndarray] | None = None  # (start, stop, elements)

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._file is None:
            raise ValueError(f"{self.name} is closed")
        if self._contiguous:
            return self._convert(self._read_range(self._file, start, stop))
        band = self._band
        if band is None or not band[0] <= start < stop <= band[1]:
            band = self._band = self._gather_band(self._file, start, stop)
        return self._convert(band[2][start - band[0] : stop - band[0]])

    def _read_range(self, file: _File, start: int, stop: int) -> np.ndarray:
        chunk = np.empty(stop - start, dtype=self._layout.dtype)
        view = memoryview(chunk.view(np.uint8))  # type: ignore[arg-type]
        offset = self._layout.offset + start * chunk.itemsize
        file.read_into(view, offset)
        if self._crc is not None:
            self._crc.fold(offset, view)
        return chunk

    def _gather_band(self, file: _File, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        dims = self.shape or (1,)
        row = self.size // dims[0]
        budget = max(_BAND_BYTES // self._layout.dtype.itemsize, 1)
        if row > budget:  # a sample larger than a band: this slab alone
            return start, stop, self._gather_slab(file, start, stop)
        first = start // row
        last = min(dims[0], max(-(-stop // row), first + budget // row))
        return first * row, last * row, self._gather_slab(file, first * row, last * row)

    def _gather_slab(self, file: _File, start: int, stop: int) -> np.ndarray:
        """The slab ``[start, stop)``, gathered in the file's order and laid out in C order."""
        offset, shape, strides = self._layout.slab(start, stop)
        order = sorted(range(len(shape)), key=lambda axis: -strides[axis])
        out = np.empty(tuple(shape[a] for a in order), self._layout.dtype)
        _gather(file, offset, tuple(shape[a] for a in order), tuple(strides[a] for a in order), out)
        return np.ascontiguousarray(out.transpose(np.argsort(order))).reshape(-1)

    def verify(self) -> None:
        if self._crc is not None and self._file is not None:
            self._crc.finish(self._file)

    def close(self) -> None:
        self._band = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _StreamSource(ArraySource):
    """A C-ordered array in a compressed archive member, decompressed as a stream.

    :mod:`zipfile` checks the member's CRC-32 where its stream ends: the read of the last
    range reads on to that end, and :meth:`verify` decompresses whatever no read reached.
    """

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
        self._checked = False

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
            raise _stream_error(self.name, exc) from None

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._stream is None or start < self._position:
            self._rewind()
        self._skip_to(start)
        data = bytearray((stop - start) * self._np_dtype.itemsize)  # fresh: the caller may hold the last
        self._read_exactly(len(data), memoryview(data))
        self._position = stop
        if stop == self.size:
            self._read_end()
        return _to_torch(np.frombuffer(data, dtype=self._np_dtype), self.role)

    def _skip_to(self, start: int) -> None:
        """Decompress up to element ``start`` (another rank's part of the file, or what is left)."""
        itemsize = self._np_dtype.itemsize
        while self._position < start:
            n = min(start - self._position, max(_STREAM_BLOCK // itemsize, 1))
            if len(self._buffer) < n * itemsize:
                self._buffer = bytearray(n * itemsize)
            self._read_exactly(n * itemsize, memoryview(self._buffer))
            self._position += n

    def _read_end(self) -> None:
        """Read past the last byte: zipfile compares the member's CRC-32 where its stream ends."""
        assert self._stream is not None
        if self._checked:
            return
        try:
            extra = self._stream.read(1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise _stream_error(self.name, exc) from None
        if extra:  # zipfile stops at the member's recorded size: never here
            raise InputError(f"{self.name}: corrupt: data after the array's end")
        self._checked = True

    def verify(self) -> None:
        if self._checked:
            return
        if self._stream is None:
            self._rewind()
        self._skip_to(self.size)
        self._read_end()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._close_archive()


def _stream_error(name: str, exc: Exception) -> InputError:
    if isinstance(exc, EOFError):  # zipfile: the file ends before the member's compressed bytes do
        return InputError(f"{name}: truncated: the file ends inside this member")
    return InputError(f"{name}: corrupt compressed data: {exc}")


class _TorchSource(ArraySource):
    """A tensor in memory, from a ``.pt`` file of the legacy (pre-zip) format."""

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

    # Only a plain dense tensor can be read from its storage: refuse the rest by name.
    if tensor.is_nested:
        raise InputError(f"{name}: nested tensors are not supported: need a dense tensor")
    if tensor.layout != torch.strided:
        raise InputError(f"{name}: {tensor.layout} tensors are not supported: need a dense tensor")
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


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HeaderReader:
    """The first ``limit`` bytes of a stream, read by numpy's header reader.

    It counts the bytes read (the header's length), and notes whether a read came up short
    at the stream's end (a truncated file) or at ``limit`` (a header too long to be one).
    """

    def __init__(self, stream: _Readable, limit: int) -> None:
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


def _read_npy_header(stream: _Readable, name: str) -> _NpyHeader:
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
    file = _File.open(path, name)
    try:
        header = _read_npy_header(_FileStream(file, 0), name)
        _check_numpy_dtype(name, header.dtype, role)
        _check_size(name, header, file.size() - header.size)
        return _numpy_source(name, file, header, header.size, role)
    except BaseException:
        file.close()
        raise


def _numpy_source(
    name: str, file: _File, header: _NpyHeader, offset: int, role: Role, crc: _Crc32 | None = None
) -> ArraySource:
    """The array that ``header`` describes, at byte ``offset`` of ``file``."""
    strides = _f_strides(header.shape) if header.fortran_order else _c_strides(header.shape)
    layout = _Layout(offset, header.dtype, header.shape, strides)
    return _FileSource(name, file, layout, role, functools.partial(_to_torch, role=role), crc=crc)


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


def _local_data_offset(file: _File, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose extra field may differ."""
    local = file.read_at(info.header_offset, 30)
    if len(local) < 30 or local[:4] != _ZIP_MAGIC:
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset + 30 + name_len + extra_len)


def _stored_member(
    path: str, label: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, role: Role
) -> ArraySource:
    archive.close()
    file = _File.open(path, label)
    try:
        start = _local_data_offset(file, info)
        header = _read_npy_header(_FileStream(file, start), label)
        _check_numpy_dtype(label, header.dtype, role)
        if start + info.file_size > file.size():
            raise InputError(f"{label}: truncated: the archive ends inside this member")
        _check_size(label, header, info.file_size - header.size)
        crc = _Crc32(label, info.CRC, start, start + info.file_size)
        crc.fold(start, memoryview(file.read_at(start, header.size)))
        return _numpy_source(label, file, header, start + header.size, role, crc)
    except BaseException:
        file.close()
        raise


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
    return _staged_member(label, archive, info, header, role)


def _staged_member(
    label: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: _NpyHeader, role: Role
) -> ArraySource:
    """A Fortran-ordered compressed member, which cannot be streamed in C order: decompressed
    (and CRC-checked by zipfile) into an unnamed temporary file, then read from there."""
    try:
        _check_staging_room(label, info.file_size - header.size)
        with tempfile.TemporaryFile(prefix="acbmse-") as staged:  # no name (or unlinked at once)
            with archive.open(info) as stream:
                stream.read(header.size)
                shutil.copyfileobj(stream, staged, _STREAM_BLOCK)
            staged.flush()
            file = _File(label, os.dup(staged.fileno()))
    except OSError as exc:  # a full disk, the file size limit, an unwritable temporary directory
        raise InputError(
            f"{label}: cannot decompress this Fortran-ordered member into {tempfile.gettempdir()}: "
            f"{exc.strerror or exc}"
        ) from None
    finally:
        archive.close()
    return _numpy_source(label, file, header, 0, role)


def _check_staging_room(label: str, nbytes: int) -> None:
    """Refuse, before writing anything, a member that the temporary directory cannot hold."""
    directory = tempfile.gettempdir()
    limits = [(MAX_STAGED_BYTES, "the limit on staged data")]
    limits.append((shutil.disk_usage(directory).free - _STAGING_MARGIN, f"the free space in {directory}"))
    size_limit = _file_size_limit()
    if size_limit is not None:
        limits.append((size_limit, "the file size limit (ulimit -f)"))
    for limit, what in limits:
        if nbytes > limit:
            raise InputError(
                f"{label}: a Fortran-ordered compressed member is decompressed to a temporary file first, "
                f"and its {nbytes:,} bytes exceed {what} ({max(limit, 0):,} bytes): "
                "save it in C order (np.ascontiguousarray) or uncompressed (np.savez)"
            )


def _file_size_limit() -> int | None:
    """The soft limit on the size of a file this process writes (``ulimit -f``), if any."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


# --------------------------------------------------------------------------- .pt

_NUMPY_TWINS = {"bool": "?", "uint8": "u1", "int8": "i1", "int16": "i2", "uint16": "u2", "int32": "i4",
                "uint32": "u4", "int64": "i8", "uint64": "u8", "float16": "f2", "bfloat16": "u2",
                "float32": "f4", "float64": "f8"}  # fmt: skip
"""The numpy dtype of each tensor dtype read, by its bytes (bfloat16 is read as uint16, then viewed)."""


def _open_pt(
    path: str, name: str, key: str | None, key_option: str, role: Role, *, archive: bool
) -> ArraySource:
    if not archive:
        return _legacy_source(path, name, key, key_option, role)
    tensor, label = _archive_tensor(path, name, key, key_option, role)
    _check_not_empty(label, tensor)
    offset = getattr(tensor.untyped_storage(), "_checkpoint_offset", None)
    if offset is None:  # saved from the meta device: no data in the file
        raise InputError(f"{label}: holds a meta tensor (a shape without data): need a tensor with values")
    _check_storage_use(label, tensor)
    return _record_source(path, label, tensor, int(offset), role)


def _legacy_source(path: str, name: str, key: str | None, key_option: str, role: Role) -> ArraySource:
    """A tensor of the legacy (pre-zip) format, which cannot be located in its file: loaded into memory."""
    tensor, label = _pick_tensor(_torch_load(path, name, "memory"), name, key, key_option)
    if tensor.is_meta:
        raise InputError(f"{label}: holds a meta tensor (a shape without data): need a tensor with values")
    if tensor.device.type != "cpu":
        raise InputError(f"{label}: a tensor on {tensor.device} after loading: need a CPU tensor")
    _check_tensor(label, tensor, role)
    _check_not_empty(label, tensor)
    _check_storage_use(label, tensor)
    return _TorchSource(label, tensor.detach(), role)


def _check_not_empty(label: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        raise InputError(f"{label}: empty array (shape {tuple(tensor.shape)})")


def _archive_tensor(
    path: str, name: str, key: str | None, key_option: str, role: Role
) -> tuple[torch.Tensor, str]:
    """The tensor that ``key`` names, loaded onto the meta device: shape, strides and storage, no data."""
    try:
        obj = _torch_load(path, name, "meta")
    except NotImplementedError as exc:  # a tensor type without meta kernels (nested...): say which
        tensor, label = _pick_tensor(_torch_load(path, name, "mmap"), name, key, key_option)
        _check_tensor(label, tensor, role)  # the data stay in the file, unread
        raise InputError(f"{name}: cannot be read without loading it whole: {_reason(exc)}") from None
    tensor, label = _pick_tensor(obj, name, key, key_option)
    _check_tensor(label, tensor, role)
    return tensor, label


def _torch_load(path: str, name: str, how: Literal["meta", "mmap", "memory"]) -> object:
    """The file's object, by PyTorch's weights-only loader: onto the meta device, memory-mapped or
    in memory.  ``meta`` lets a NotImplementedError through (a tensor type with no meta kernels)."""
    import torch

    try:
        with warnings.catch_warnings():  # a refused pickle is reported below, once
            warnings.simplefilter("ignore")
            location = "meta" if how == "meta" else "cpu"
            return torch.load(path, map_location=location, weights_only=True, mmap=how == "mmap")
    except pickle.UnpicklingError:
        raise InputError(
            f"{name}: holds Python objects other than tensors; refused without running them "
            "(only weights-only .pt files are read)"
        ) from None
    except NotImplementedError:
        if how == "meta":
            raise
        raise InputError(f"{name}: not a readable .pt file (truncated or corrupt?)") from None
    except Exception as exc:  # torch.load reports corruption with many exception types
        raise InputError(f"{name}: not a readable .pt file (truncated or corrupt?): {_reason(exc)}") from None


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


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _check_storage_use(label: str, tensor: torch.Tensor) -> None:
    """The tensor lies inside its storage, and does not repeat it far beyond its size."""
    stored = tensor.untyped_storage().nbytes() // tensor.element_size()
    last = tensor.storage_offset() + sum(
        (n - 1) * s for n, s in zip(tensor.shape, tensor.stride(), strict=True)
    )
    if min(tensor.stride(), default=0) < 0 or last >= stored:
        raise InputError(f"{label}: corrupt: the tensor reaches outside its storage of {stored:,} elements")
    if tensor.numel() > MAX_ELEMENTS_PER_STORED * stored:
        raise InputError(
            f"{label}: declares {tensor.numel():,} elements over a storage of {stored:,} (an expanded view, "
            f"more than {MAX_ELEMENTS_PER_STORED}x its data): refused; save tensor.contiguous() instead"
        )


def _record_source(path: str, label: str, tensor: torch.Tensor, offset: int, role: Role) -> ArraySource:
    """The tensor read from its storage record, which starts at byte ``offset`` of the file."""
    file = _File.open(path, label)
    try:
        nbytes = tensor.untyped_storage().nbytes()
        info, byteorder = _storage_record(path, label, file, offset)
        if info.file_size != nbytes:
            raise InputError(
                f"{label}: corrupt: a storage of {nbytes:,} bytes in a record of {info.file_size:,}"
            )
        if offset + nbytes > file.size():
            raise InputError(f"{label}: truncated: the file ends inside the tensor's data")
        dtype = str(tensor.dtype).removeprefix("torch.")
        np_dtype = np.dtype(_NUMPY_TWINS[dtype]).newbyteorder("<" if byteorder == b"little" else ">")
        start = offset + int(tensor.storage_offset()) * tensor.element_size()
        layout = _Layout(start, np_dtype, tuple(map(int, tensor.shape)), tuple(map(int, tensor.stride())))
        # torch.save(..., set_crc32_options(False)) writes 0 for "not computed"
        crc = _Crc32(label, info.CRC, offset, offset + nbytes) if info.CRC else None
        convert = functools.partial(_tensor_chunk, dtype=tensor.dtype, role=role)
        return _FileSource(label, file, layout, role, convert, dtype=dtype, crc=crc)
    except BaseException:
        file.close()
        raise


def _storage_record(path: str, label: str, file: _File, offset: int) -> tuple[zipfile.ZipInfo, bytes]:
    """The stored record whose data start at ``offset``, and the archive's byte order."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = max((i for i in archive.infolist() if i.header_offset < offset),
                       key=lambda i: i.header_offset, default=None)  # fmt: skip
            prefix = info.filename.rpartition("/data/")[0] if info is not None else ""
            byteorder = _byteorder(archive, file, prefix)
        located = info is not None and _local_data_offset(file, info) == offset
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{label}: truncated or corrupt zip archive: {exc}") from None
    if info is None or not located or not prefix or info.compress_type != zipfile.ZIP_STORED:
        raise InputError(f"{label}: corrupt: the tensor's data are not a stored record of the archive")
    if byteorder not in (b"little", b"big"):
        raise InputError(f"{label}: corrupt: unknown byte order {byteorder[:20]!r}")
    return info, byteorder


def _byteorder(archive: zipfile.ZipFile, file: _File, prefix: str) -> bytes:
    """What ``torch.save`` recorded as its byte order (little-endian without a record, as torch.load).

    Read as stored, unchecked: a file saved without CRC-32s records 0 for each, which zipfile refuses.
    """
    try:
        info = archive.getinfo(f"{prefix}/byteorder")
    except KeyError:
        return b"little"
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > 16:
        return b"?"
    return file.read_at(_local_data_offset(file, info), info.file_size)


def _tensor_chunk(chunk: np.ndarray, *, dtype: torch.dtype, role: Role) -> torch.Tensor:
    """A chunk as read (the tensor dtype's numpy twin, in the file's byte order) as that tensor dtype."""
    import torch

    if not chunk.dtype.isnative:
        chunk = chunk.astype(chunk.dtype.newbyteorder("="))
    tensor = torch.from_numpy(chunk)
    return _convert_tensor(tensor.view(dtype) if tensor.dtype != dtype else tensor, role)


# --------------------------------------------------------------------------- entry point


def open_array(path: str | os.PathLike[str], *, key: str | None = None, role: Role = "values",
               key_option: str = "a key") -> ArraySource:  # fmt: skip
    """Check an array file and open it for chunked reading.

    The format comes from the file's content, not its name: a NumPy header
    means ``.npy``; a zip archive of ``.npy`` members means ``.npz``; the HDF5
    signature (or the name ``*.h5`` / ``*.hdf5``) means HDF5; anything else is
    handed to PyTorch's weights-only loader as a ``.pt`` file.

    Args:
        path: the file.
        key: which array of an ``.npz`` archive (or of a dict in a ``.pt`` file), or the
            path of an HDF5 dataset (``/frames/pred``).
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
    if lead.startswith(_HDF5_MAGIC) or path.lower().endswith((".h5", ".hdf5")):
        from acbmse_cli._hdf5 import open_hdf5

        return open_hdf5(path, key, key_option, role)
    if not (lead.startswith(_ZIP_MAGIC) or lead[:1] == b"\x80"):  # neither a zip nor a pickle
        raise InputError(f"{path}: not an array file (need .npy, .npz, .pt or .h5)")
    return _open_pt(path, path, key, key_option, role, archive=lead.startswith(_ZIP_MAGIC))


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
