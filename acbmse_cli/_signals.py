"""SIGTERM and SIGHUP met like SIGINT: as an exception in the main thread, so that cleanup code runs.

By default these signals end the process at once, and an all-or-nothing write
(:func:`acbmse_cli._files.write_files`) would leave its temporary files behind.  Within
:func:`terminations_raise` each raises :class:`Terminated` instead, which unwinds like
:class:`KeyboardInterrupt`: every ``finally`` and ``except BaseException`` on the way runs.

SIGINT is handled the same way (it raises :class:`Terminated` too), so that :func:`deferred` holds back
all three alike.  A signal that the caller set to be ignored (``nohup`` ignores SIGHUP) stays ignored,
and a second signal while the first unwinds is ignored too, so that the cleanup itself is not cut
short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Terminated", "deferred", "terminations_raise"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """The process was asked to stop by signal :attr:`signum` (SIGINT, SIGTERM or SIGHUP).

    SIGINT raises this too, not :class:`KeyboardInterrupt`, which the parser would turn into a plain
    exit code before the command line could say why.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's code for a process ended by that signal."""
        return 128 + self.signum


class _State:
    """The handlers' state: whether a signal is being unwound, and one held back by :func:`deferred`."""

    def __init__(self) -> None:
        self.stopping = False
        self.depth = 0
        self.pending: int | None = None


_STATE = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _STATE.stopping:  # already unwinding: let the cleanup finish
        return
    _STATE.stopping = True
    if _STATE.depth:
        _STATE.pending = signum
        return
    raise Terminated(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a signal handled here waits until the block is done, then raises (a few steps that
    must happen all or none, such as renaming finished files into place).  Nested blocks wait for the
    outermost."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        signum, _STATE.pending = _STATE.pending, None
        if signum is not None:
            if _STATE.depth:
                _STATE.pending = signum
            else:
                raise Terminated(signum)


@contextlib.contextmanager
def terminations_raise() -> Iterator[None]:
    """Within: SIGINT, SIGTERM and SIGHUP raise :class:`Terminated`, held back inside :func:`deferred`
    (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: dict[int, Any] = {}
    for signum in (signal.SIGINT, *_SIGNALS):
        current = signal.getsignal(signum)
        if current is signal.SIG_DFL or (signum == signal.SIGINT and current is signal.default_int_handler):
            saved[signum] = signal.signal(signum, _handler)
    _STATE.stopping, _STATE.pending = False, None
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
