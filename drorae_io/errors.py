"""``UserInputError``: a mistake in what the user asked for, printed as one line with exit code 2."""

from __future__ import annotations


class UserInputError(Exception):
    """A mistake in what the user asked for: one line naming the file, key or column and what was expected.

    A command prints it as ``PROG: error: <message>`` and exits with ``exit_code``, no traceback.
    """

    exit_code = 2

    def __init__(self, message: str):
        # One line: a command prints it as-is.
        super().__init__(" ".join(str(message).split()))
