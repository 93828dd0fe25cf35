"""Datasets of HDF5 files (``.h5``, ``.hdf5``), read through h5py in slabs of samples.

A dataset is read along dim 0 in bands of whole chunk-rows (the samples that one row of the
dataset's chunks holds), so that every compressed chunk is decompressed once; a contiguous
dataset in bands of whole samples.  A band holds about ``_BAND_BYTES``; a sample larger than
that is read slab by slab through HDF5's chunk cache.

Only data inside the file are read: external links, external raw-data storage and virtual
datasets that map other files are refused, and so are soft links that dangle or loop.  Strings,
variable-length data, object references, compound and opaque types are refused by their dtype
before any data are read.  h5py never unpickles anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from acbmse_cli.arrays import (
    _BAND_BYTES,
    ArraySource,
    Role,
    _check_numpy_dtype,
    _reason,
    _slab_index,
    _to_torch,
)
from acbmse_cli.errors import InputError

if TYPE_CHECKING:
    import torch

_MAX_CHUNK_ROW_BYTES = 64 << 20  # a band may grow to one chunk-row up to this size
_CHUNK_CACHE_BYTES = 16 << 20  # HDF5's chunk cache per dataset, for slabs inside a sample
_MAX_LISTED = 20  # datasets named when a key is missing or wrong
_MAX_LINK_DEPTH = 16  # soft links followed in a row before a path is taken to loop


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def open_hdf5(path: str, key: str | None, key_option: str, role: Role) -> ArraySource:
    """The dataset ``key`` (an HDF5 path such as ``/frames/pred``) of an HDF5 file, checked and opened."""
    h5py = _h5py()
    if h5py is None:
        raise InputError(f"{path}: reading HDF5 files needs h5py: pip install 'acbmse-cli[hdf5]'")
    try:
        file = h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?): {_reason(exc)}"
        ) from None
    try:
        name = key if key is not None else _only_dataset(h5py, file, path, key_option)
        label = f"{path}[{name}]"
        try:
            dataset = _resolve(h5py, file, path, name, key_option)
            _check_dataset(h5py, dataset, label, role)
        except (OSError, RuntimeError, KeyError) as exc:
            raise InputError(f"{label}: corrupt HDF5 file: {_reason(exc)}") from None
        return _Hdf5Source(label, file, dataset, role)
    except BaseException:
        file.close()
        raise


def _datasets(h5py: Any, file: Any, path: str) -> list[str]:
    """The file's datasets reachable by hard links, at most one more than ``_MAX_LISTED``."""
    found: list[str] = []

    def visit(name: str, obj: object) -> bool | None:
        if isinstance(obj, h5py.Dataset):
            found.append("/" + name)
        return True if len(found) > _MAX_LISTED else None

    try:
        file.visititems(visit)
    except (OSError, RuntimeError, KeyError) as exc:
        raise InputError(f"{path}: corrupt HDF5 file: cannot list its datasets: {_reason(exc)}") from None
    return found


def _listing(found: list[str]) -> str:
    if not found:
        return "no datasets"
    shown = ", ".join(found[:_MAX_LISTED])
    return shown + (", ..." if len(found) > _MAX_LISTED else "")


def _only_dataset(h5py: Any, file: Any, path: str, key_option: str) -> str:
    found = _datasets(h5py, file, path)
    if len(found) != 1:
        count = f"more than {_MAX_LISTED}" if len(found) > _MAX_LISTED else str(len(found))
        raise InputError(f"{path}: holds {count} datasets ({_listing(found)}): pick one with {key_option}")
    return found[0]


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _resolve(h5py: Any, file: Any, path: str, key: str, key_option: str) -> Any:
    """The dataset at ``key``, found link by link: soft links are followed inside the file, an
    external link is refused, a missing or dangling name lists the datasets the file has."""
    node, parts = file, _parts(key)
    soft: list[str] = []
    while parts:
        part = parts.pop(0)
        link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
        if isinstance(link, h5py.ExternalLink):
            raise InputError(
                f"{path}[{key}]: an external link to {link.filename}:{link.path}: refused "
                "(only data inside the file are read)"
            )
        if link is None:
            raise _missing(h5py, file, path, key, key_option, soft)
        if isinstance(link, h5py.SoftLink):
            soft.append(link.path)
            if len(soft) > _MAX_LINK_DEPTH:
                raise InputError(f"{path}[{key}]: soft links that loop ({' -> '.join(soft[:4])} -> ...)")
            parts = _parts(link.path) + parts
            node = file if link.path.startswith("/") else node
            continue
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        held = _listing(_datasets(h5py, file, path))
        raise InputError(f"{path}[{key}]: is a group, not a dataset (the file holds: {held})")
    return node


def _missing(h5py: Any, file: Any, path: str, key: str, key_option: str, soft: list[str]) -> InputError:
    held = _listing(_datasets(h5py, file, path))
    if soft:
        return InputError(f"{path}[{key}]: a soft link to {soft[-1]} that dangles (the file holds: {held})")
    return InputError(f"{path}: has no dataset {key!r} (it holds: {held}): pick one with {key_option}")


def _check_dataset(h5py: Any, dataset: Any, label: str, role: Role) -> None:
    """Refuse, before any data are read, what is not a plain numeric array stored in this file."""
    dtype = dataset.dtype
    if h5py.check_string_dtype(dtype) is not None:
        raise InputError(f"{label}: holds strings (dtype {dtype}): need a numeric dataset")
    if h5py.check_vlen_dtype(dtype) is not None:
        raise InputError(f"{label}: holds variable-length data: need a numeric dataset of fixed shape")
    if h5py.check_ref_dtype(dtype) is not None:
        raise InputError(f"{label}: holds object references: need a numeric dataset")
    _check_numpy_dtype(label, dtype, role)
    if dataset.shape is None:
        raise InputError(f"{label}: an empty dataset (no dataspace): need an array")
    if math.prod(dataset.shape) == 0:
        raise InputError(f"{label}: empty array (shape {dataset.shape})")
    _check_storage(h5py, dataset, label)


def _check_storage(h5py: Any, dataset: Any, label: str) -> None:
    """The data lie in this file, and every filter they went through can be undone here."""
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        outside = plist.get_external(0)[0].decode(errors="replace")
        raise InputError(
            f"{label}: its data are stored in external files ({outside}...): refused "
            "(only data inside the file are read)"
        )
    if dataset.is_virtual:
        others = sorted({s.file_name for s in dataset.virtual_sources() if s.file_name != "."})
        if others:
            raise InputError(
                f"{label}: a virtual dataset mapping other files ({', '.join(others[:3])}): refused "
                "(only data inside the file are read)"
            )
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            what = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            raise InputError(
                f"{label}: compressed with filter {code} ({what}), which this HDF5 library lacks "
                "(a plugin such as hdf5plugin may provide it)"
            )


class _Hdf5Source(ArraySource):
    """A dataset read in bands of whole samples, aligned to its chunking along dim 0 and kept
    for the ranges that follow; a sample larger than a band is read slab by slab."""

    def __init__(self, name: str, file: Any, dataset: Any, role: Role) -> None:
        np_dtype = np.dtype(dataset.dtype)
        super().__init__(name, tuple(int(n) for n in dataset.shape), str(np_dtype.newbyteorder("=")), role)
        self._file: Any = file
        self._dataset: Any = dataset
        self._band: tuple[int, int, np.ndarray] | None = None  # (start, stop, elements)
        dims = self.shape or (1,)
        self._row = self.size // dims[0]
        chunks = dataset.chunks
        self._rows_per_band = _band_rows(dims[0], self._row * np_dtype.itemsize, chunks[0] if chunks else 1)

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self._file is None:
            raise ValueError(f"{self.name} is closed")
        band = self._band
        if band is None or not band[0] <= start < stop <= band[1]:
            band = self._band = self._read_band(start, stop)
        return _to_torch(band[2][start - band[0] : stop - band[0]], self.role)

    def _read_band(self, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        if self._rows_per_band == 0:  # a sample larger than a band: this slab alone
            return start, stop, self._read(_slab_index(self.shape, start, stop))
        dims = self.shape or (1,)
        first = start // self._row // self._rows_per_band * self._rows_per_band
        last = first + self._rows_per_band
        while last * self._row < stop:
            last += self._rows_per_band
        last = min(last, dims[0])
        index: tuple[slice, ...] = (slice(first, last),) if self.shape else ()
        return first * self._row, last * self._row, self._read(index)

    def _read(self, index: tuple[int | slice, ...]) -> np.ndarray:
        try:
            data = self._dataset[() if not self.shape else index]
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(
                f"{self.name}: cannot read the data (truncated or corrupt?): {_reason(exc)}"
            ) from None
        return np.ascontiguousarray(data).reshape(-1)

    def close(self) -> None:
        self._band = None
        if self._file is not None:
            self._file.close()
            self._file = self._dataset = None


def _band_rows(samples: int, row_bytes: int, chunk_rows: int) -> int:
    """How many samples a band holds: a multiple of the chunk's rows that fits ``_BAND_BYTES``, at
    least one chunk-row where that stays within ``_MAX_CHUNK_ROW_BYTES``; else the samples that fit a
    band; 0 where one sample is larger than a band."""
    chunk_rows = max(min(chunk_rows, samples), 1)
    chunk_row_bytes = chunk_rows * row_bytes
    if chunk_row_bytes <= _MAX_CHUNK_ROW_BYTES:
        return chunk_rows * max(_BAND_BYTES // chunk_row_bytes, 1)
    return _BAND_BYTES // row_bytes
