"""``acbmse ARGS`` with a signal sent to itself at a chosen moment: started by the fault tests, not
collected by pytest.

Usage: python fault_driver.py SIGNAL MOMENT ARGS...

SIGNAL is a name (SIGTERM, SIGHUP, SIGINT).  MOMENT is one of

* ``compute``: as the command starts its work (training, or computing the curves);
* ``mkdir``: just after the write created an output folder;
* ``open:N``: just after the N-th temporary file was created (counting from 0);
* ``write:N``: in the middle of the N-th file's bytes;
* ``rename:N``: just before the N-th file is renamed into place.

The signal is raised from inside the program's own call, so it lands at that moment exactly.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from typing import Any

from acbmse_cli import _files, curves, demo
from acbmse_cli.cli import main


def _stop(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _signal_at(function: Any, signum: int, *, nth: int, wanted: Any, after: bool) -> Any:
    """``function``, sending the signal before (or after) its ``nth`` call for which ``wanted(args)``."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        hit = bool(wanted(args)) and calls == nth
        calls += bool(wanted(args))
        if hit and not after:
            _stop(signum)
        result = function(*args, **kwargs)
        if hit and after:
            _stop(signum)
        return result

    return wrapper


def _ours(args: Any) -> bool:
    """A call on a path under the current folder (the test's), not a library's cache."""
    return os.path.abspath(args[0]).startswith(os.getcwd() + os.sep)


def _temporary(args: Any) -> bool:
    return _ours(args) and str(args[0]).endswith(".tmp")


def _halfway(signum: int, nth: int) -> None:
    """The ``nth`` writer stops after writing half of its bytes."""
    original = _files._write_temporary
    calls = 0

    def write_temporary(destination: Any, write: Any, temporaries: Any, *, mode: int) -> None:
        nonlocal calls
        index, calls = calls, calls + 1
        if index != nth:
            return original(destination, write, temporaries, mode=mode)

        def half(stream: Any) -> None:
            import io

            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            stream.write(data[: len(data) // 2])
            stream.flush()
            _stop(signum)
            stream.write(data[len(data) // 2 :])

        return original(destination, half, temporaries, mode=mode)

    _files._write_temporary = write_temporary  # type: ignore[assignment]


def install(signum: int, moment: str) -> None:
    kind, _, number = moment.partition(":")
    nth = int(number) if number else 0
    if kind == "compute":
        for module, name in ((demo, "run_demo"), (curves, "run_curves")):
            setattr(module, name, _signal_at(getattr(module, name), signum, nth=0, wanted=bool, after=False))
    elif kind == "mkdir":
        pathlib.Path.mkdir = _signal_at(pathlib.Path.mkdir, signum, nth=0, wanted=_ours, after=True)  # type: ignore[method-assign]
    elif kind == "open":
        os.open = _signal_at(os.open, signum, nth=nth, wanted=_temporary, after=True)
    elif kind == "write":
        _halfway(signum, nth)
    elif kind == "rename":
        os.replace = _signal_at(os.replace, signum, nth=nth, wanted=_temporary, after=False)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    install(signal.Signals[sys.argv[1]].value, sys.argv[2])
    main(sys.argv[3:])
