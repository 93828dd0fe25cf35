"""Folders of per-frame files for ``acbmse eval``: which paths are folders, which files pair up
(the same file name in every folder), and how the pairs are shared between processes.

Messages hold the names as they are: the command line escapes the line it prints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from acbmse_cli.errors import InputError

__all__ = ["FileGroup", "FolderSet", "are_folders", "match_folders", "share_by_size"]

SHOWN_NAMES = 5
"""How many unmatched file names an error lists."""


@dataclass(frozen=True)
class FileGroup:
    """The files of one name: one path per folder, in the folders' order, and their bytes in all."""

    name: str
    paths: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class FolderSet:
    """The file groups evaluated, in file-name order, and how many names were skipped."""

    groups: tuple[FileGroup, ...]
    skipped: int


def are_folders(paths: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether the paths are folders (all of them) or files (none); a mix is an :class:`InputError`."""
    dirs = [os.path.isdir(p) for p in paths]
    if all(dirs):
        return True
    if any(dirs):
        folder = next(p for p, d in zip(paths, dirs, strict=True) if d)
        other = next(p for p, d in zip(paths, dirs, strict=True) if not d)
        raise InputError(
            f"{os.fspath(folder)}: is a directory, but {os.fspath(other)} is not: "
            "give files only, or folders of files only"
        )
    return False


def _file_names(folder: str) -> dict[str, int]:
    """The regular files directly in ``folder`` (hidden ones left out), with their sizes."""
    try:
        with os.scandir(folder) as entries:
            names = {e.name: e.stat().st_size for e in entries if not e.name.startswith(".") and e.is_file()}
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror})") from None
    if not names:
        raise InputError(f"{folder}: the folder holds no files")
    return names


def match_folders(folders: Sequence[str | os.PathLike[str]], *, skip_unmatched: bool) -> FolderSet:
    """The files of the same name in every folder.

    Raises:
        InputError: a folder that cannot be listed or holds no files; a file name that is not in
            every folder (unless ``skip_unmatched``); no name common to all the folders.
    """
    paths = [os.fspath(f) for f in folders]
    listings = [_file_names(f) for f in paths]
    everywhere = set.intersection(*(set(names) for names in listings))
    unmatched = sorted(set().union(*listings) - everywhere)
    if unmatched and not skip_unmatched:
        raise InputError(_unmatched_message(unmatched, paths, listings))
    if not everywhere:
        raise InputError(f"no file name is in every folder ({', '.join(p for p in paths)})")
    groups = tuple(
        FileGroup(
            name,
            tuple(os.path.join(folder, name) for folder in paths),
            sum(names[name] for names in listings),
        )
        for name in sorted(everywhere)
    )
    return FolderSet(groups, len(unmatched))


def _unmatched_message(unmatched: list[str], folders: list[str], listings: list[dict[str, int]]) -> str:
    shown = []
    for name in unmatched[:SHOWN_NAMES]:
        missing = next(f for f, names in zip(folders, listings, strict=True) if name not in names)
        shown.append(f"{name} (not in {missing})")
    more = len(unmatched) - len(shown)
    listed = ", ".join(shown) + (f" and {more} more" if more else "")
    count = f"{len(unmatched)} file{'s are' if len(unmatched) > 1 else ' is'}"
    return f"{count} not in every folder: {listed} (--skip-unmatched leaves them out)"


def share_by_size(groups: Sequence[FileGroup], world: int) -> list[list[int]]:
    """The groups of each of ``world`` processes (indices, in order): whole groups, the largest
    first to the process with the fewest bytes so far (the same answer on every process)."""
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(groups)), key=lambda i: (-groups[i].size, i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        shares[rank].append(i)
        load[rank] += groups[i].size
    return [sorted(share) for share in shares]
