"""Output folders and all-or-nothing file writing, for the commands that write files.

:class:`OutputDir` is an output folder that has been checked: on creation it refuses an empty name (which
would mean the current folder), a file or a broken symbolic link where the folder or one of its parents
should be, and a folder that cannot be written.  The folder may not exist yet; writing creates it.

:func:`write_files` writes a set of files together or not at all, as far as the file system allows:

1. every destination is checked (not a folder, in a writable folder where that folder exists), so that a
   destination known to be unusable stops the write before anything is written;
2. every file is written by its writer into a temporary file beside its destination, with the permissions
   that the umask gives a new file;
3. only when all of them are complete are they renamed into place.

On a failure, an interruption included (SIGINT, and under the command line SIGTERM and SIGHUP too: see
:mod:`acbmse_cli._signals`), the temporary files and the folders that the write created are removed
again, so no file is left half-written and none is replaced.  The renames at the end hold such a signal
back until they are all done, so a signal there leaves every file written.  Should a rename itself fail
(a race with another process), the files renamed before it stay replaced.

No torch, numpy or matplotlib here: the writers bring whatever they draw or save with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acbmse_cli._signals import deferred
from acbmse_cli.errors import InputError

__all__ = ["OutputDir", "Writer", "as_output_dir", "check_destinations", "write_files"]

#: Writes one file's bytes into the open binary stream that it is given.
Writer = Callable[[BinaryIO], None]


@dataclass(frozen=True)
class OutputDir:
    """An output folder named by a command-line option; checked on creation (:class:`InputError`).

    Args:
        name: the folder as given; it is created when files are written into it.
        option: the option that named it (``--out``), for the messages.
    """

    name: str | os.PathLike[str]
    option: str

    def __post_init__(self) -> None:
        _check_output_dir(self.name, self.option)

    @property
    def path(self) -> Path:
        """The folder as a :class:`~pathlib.Path`."""
        return Path(self.name)

    def __fspath__(self) -> str:
        return os.fspath(self.name)

    def __str__(self) -> str:
        return str(self.path)


def as_output_dir(folder: str | os.PathLike[str] | OutputDir, *, option: str) -> OutputDir:
    """``folder`` as an :class:`OutputDir`: checked now unless it is one already."""
    return folder if isinstance(folder, OutputDir) else OutputDir(folder, option)


def _check_output_dir(name: str | os.PathLike[str], option: str) -> None:
    if os.fspath(name) == "":
        raise InputError(f"{option} is empty: name a folder (use . for the current folder)")
    path = Path(name)
    existing = _nearest_existing(path, option)
    if not existing.is_dir():
        where = "is" if existing == path else f"lies under {existing}, which is"
        raise InputError(f"{option} {path} {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the folder {existing} is not writable")


def _nearest_existing(path: Path, option: str) -> Path:
    """``path`` or its nearest parent that exists; a broken symbolic link on the way is refused."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"{option} {path}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def write_files(writers: Mapping[Path, Writer], *, context: str | None = None) -> list[Path]:
    """Write every ``destination: writer`` of ``writers``, all together or not at all (see the module).

    Missing folders on the way are created.  ``context`` (e.g. ``"--out Images"``) starts every message.
    Returns the destinations, in the order given.

    Raises:
        InputError: a destination is a folder or lies in a folder that cannot be written, or writing or
            renaming failed (the message names the file and the system's reason).
    """
    prefix = "" if context is None else f"{context}: "
    destinations = list(writers)
    _check_destinations(destinations, prefix)
    mask = _umask()
    created: list[Path] = []
    temporaries: list[Path] = []
    destination = destinations[0] if destinations else Path()
    try:
        _make_folders(destinations, created)
        for destination, write in writers.items():
            _write_temporary(destination, write, temporaries, mode=0o666 & ~mask)
        with deferred():  # a signal waits until every file is in place: all of them, or none
            for destination, temporary in zip(destinations, temporaries, strict=True):
                os.replace(temporary, destination)
    except OSError as exc:
        _remove(temporaries, created)
        raise InputError(f"{prefix}cannot write {destination}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temporaries, created)
        raise
    return destinations


def check_destinations(destinations: Sequence[Path], *, context: str | None = None) -> None:
    """Refuse now what :func:`write_files` would refuse of these destinations: a destination that is a
    folder, or one in a folder that cannot be written (for a command to check before its long work).

    Raises:
        InputError: naming the destination, after ``context`` as in :func:`write_files`.
    """
    _check_destinations(destinations, "" if context is None else f"{context}: ")


def _check_destinations(destinations: Sequence[Path], prefix: str) -> None:
    for path in destinations:
        if path.is_dir():
            raise InputError(f"{prefix}cannot write {path}: it is a folder")
        parent = path.parent  # a missing one is created on writing
        if parent.exists() and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
            raise InputError(f"{prefix}cannot write {path}: {parent} is not a writable folder")


def _make_folders(destinations: Sequence[Path], created: list[Path]) -> None:
    """Create the destinations' missing folders, listing each in ``created`` (in the order of creation)
    before it exists, so that a signal after a ``mkdir`` still finds it listed."""
    for parent in dict.fromkeys(path.parent for path in destinations):
        missing: list[Path] = []
        probe = parent
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            created.append(folder)
            try:
                folder.mkdir()
            except FileExistsError:  # made meanwhile by someone else: not ours to remove
                created.pop()
                if not folder.is_dir():
                    raise


def _write_temporary(destination: Path, write: Writer, temporaries: list[Path], *, mode: int) -> None:
    """Write ``destination``'s bytes into a new temporary file beside it, listed in ``temporaries``."""
    handle = _new_temporary(destination, temporaries)
    with os.fdopen(handle, "wb") as stream:
        write(stream)
    os.chmod(temporaries[-1], mode)  # made 0600: give the file the permissions of any new file


def _new_temporary(destination: Path, temporaries: list[Path]) -> int:
    """A new, empty file ``.NAME.XXXXXXXX.tmp`` beside ``destination``, open for writing.

    Its name is listed in ``temporaries`` before the file exists, so that a signal arriving at any
    moment (:mod:`acbmse_cli._signals`) leaves nothing that the cleanup does not know of; a listed
    name that was never created costs the cleanup nothing.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporaries.append(destination.parent / f".{destination.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporaries[-1], flags, 0o600)
        except FileExistsError:  # someone else's file: never ours to remove
            temporaries.pop()
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(destination.parent))


def _remove(temporaries: Sequence[Path], created: Sequence[Path]) -> None:
    """Remove the temporaries that are left and the created folders that are empty, deepest first."""
    for temporary in temporaries:
        temporary.unlink(missing_ok=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):  # it holds a file renamed into place before the failure
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
