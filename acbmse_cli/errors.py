"""The one exception type that the command line turns into a one-line message."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from a user: a file, a value or an option.

    The message is one line that names the problem (and the file, if any); the
    command line prints it as ``acbmse: error: MESSAGE`` and exits with code 2.
    """

    exit_code = 2
