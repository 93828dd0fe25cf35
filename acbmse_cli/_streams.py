"""The standard streams of a command, whatever state the caller left them in, and what may be printed on them.

:func:`standard_streams` makes one rule hold for every write of a run, by this package, rich or the parser:

* stdout carries the report: a write error there (a full disk, a closed descriptor) is bad input,
  :class:`~acbmse_cli.errors.InputError`, exit code 2; a reader that has gone (a closed pipe) stays a
  :class:`BrokenPipeError`, which the command line treats as the end of the output, not an error.
* stderr carries notes and error messages: a write error there is ignored (there is nowhere left to say
  it), so the exit code is the one the run earned.
* A standard descriptor closed by the caller (``>&-``) is taken by ``/dev/null`` before anything else can
  be opened on it; stdout's copy is read-only, so that writing the report fails as it should (a data file
  opened later can never land on descriptor 1 and receive the report).

:func:`printable` escapes the control characters of a name before it reaches a terminal.

No torch, numpy or matplotlib here.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar, cast

from acbmse_cli.errors import InputError

__all__ = ["StandardStreams", "printable", "silence", "standard_streams"]

T = TypeVar("T")

_RESERVED_FLAGS = {0: os.O_RDONLY, 1: os.O_RDONLY, 2: os.O_WRONLY}


@contextlib.contextmanager
def standard_streams() -> Iterator[StandardStreams]:
    """Within: closed standard descriptors reserved, stdout's write errors bad input, stderr's ignored.

    The streams found on entry come back on leaving.
    """
    _reserve_closed_descriptors()
    _READER_GONE.clear()
    saved = sys.stdout, sys.stderr
    stdout = _Stdout(sys.stdout if sys.stdout is not None else _text_stream(1))
    sys.stdout = cast(TextIO, stdout)
    sys.stderr = cast(TextIO, _Stderr(sys.stderr if sys.stderr is not None else _text_stream(2)))
    try:
        yield StandardStreams(stdout)
    finally:
        sys.stdout, sys.stderr = saved


class StandardStreams:
    """What :func:`standard_streams` gives: the last word on stdout."""

    def __init__(self, stdout: _Stdout) -> None:
        self._stdout = stdout

    def finish(self) -> str | None:
        """Flush stdout; the message of its write error if it had one, now or at any time before.

        A write error can be swallowed on the way up (a library probing the stream catches it); it is
        remembered here, so that the exit code still says it.
        """
        with contextlib.suppress(InputError, BrokenPipeError):
            self._stdout.flush()
        return self._stdout.failure


def _reserve_closed_descriptors() -> None:
    for fd, flags in _RESERVED_FLAGS.items():
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, flags)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)


def _text_stream(fd: int) -> io.TextIOWrapper:
    """A text stream on ``fd``, for a standard stream that Python left as None (closed at start)."""
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace",
                            line_buffering=fd == 2)  # fmt: skip


_READER_GONE: list[bool] = []


def reader_gone() -> bool:
    """Whether a write to stdout has met a pipe whose reader had gone (``| head``)."""
    return bool(_READER_GONE)


def silence(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that what it still holds cannot fail again
    (Python's own flush at exit would otherwise turn the exit code into 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


class _Guarded:
    """A text stream that hands writes to ``stream`` and meets its write errors with :meth:`failed`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text, default=len(text))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._guard(self._stream.flush, default=None)

    def _guard(self, call: Callable[..., T], *args: Any, default: T) -> T:
        try:
            return call(*args)
        except OSError as exc:
            self.failed(exc)
            return default

    def failed(self, exc: OSError) -> None:
        raise NotImplementedError


class _Stdout(_Guarded):
    """stdout: a closed pipe stays a BrokenPipeError; any other write error is bad input, and stays
    so: every later write fails the same way, wherever the first error went."""

    failure: str | None = None

    def _guard(self, call: Callable[..., T], *args: Any, default: T) -> T:
        if self.failure is not None:
            raise InputError(self.failure)
        return super()._guard(call, *args, default=default)

    def failed(self, exc: OSError) -> None:
        silence(self._stream)
        if isinstance(exc, BrokenPipeError):
            _READER_GONE.append(True)  # stdout now points at /dev/null: remember why
            raise exc
        self.failure = f"cannot write to stdout: {exc.strerror or exc}"
        raise InputError(self.failure) from None


class _Stderr(_Guarded):
    """stderr: its write errors are dropped, and it writes into /dev/null from then on."""

    def failed(self, exc: OSError) -> None:
        silence(self._stream)


def printable(text: object) -> str:
    """``text`` with its control characters escaped, so that a file name cannot drive the terminal.

    C0 controls (tab and newline included), DEL and C1 controls become ``\\xNN``; a byte that was not
    valid in the file system's encoding (a lone surrogate in Python) becomes the ``\\xNN`` of that byte.
    Everything else, non-ASCII letters included, is kept.
    """
    return _CONTROL.sub(_escape, str(text))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"
