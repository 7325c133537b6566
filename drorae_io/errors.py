"""``UserInputError``: a mistake in what the user asked for, printed as one line with exit code 2."""

from __future__ import annotations


class UserInputError(Exception):
    """A mistake in what the user asked for: one line naming the file, key or column and what was expected.

    A command prints it as ``PROG: error: <message>`` and exits with ``exit_code``, no traceback.
    """

    exit_code = 2

    def __init__(self, message: str):
        # One line: a command prints it as-is. What the user typed may hold control characters (a key
        # "\x1b[2J" clears a terminal): shown escaped, as a repr shows them.
        line = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))
