"""What ``model``, ``analysis`` and ``sweeper`` share though neither of the first two may import the other.

- ``atomic_path``: files written so that a reader never sees half of one; ``model`` (asset downloads,
  caches, checkpoints; ``model.assets.atomic_path`` is this same function), ``analysis`` (figures,
  the report) and ``sweeper`` (the results table, the pending MLflow writes) write through it.
- ``read_regular_file``: the bytes of a file the user named, read only if it is a regular file and
  not over a size cap, so that a FIFO, a device (``/dev/zero``), a directory or a huge file given
  where a small one belongs is one line, not a hang or a MemoryError.
- ``UserInputError``: a mistake in what the user asked for, which every command prints as one line
  and exit code 2 (``analysis.cli.run_command``); ``model.errors.UserError`` and
  ``analysis.errors.AnalysisError`` are its kinds.

A leaf package, standard library only, so that each of the three can import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UserInputError", "atomic_path", "read_regular_file"]


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name rather than mkstemp, so the file gets the usual umask permissions, not 0600.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_regular_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path``, when it holds at most ``max_bytes``.

    Anything else is a ``UserInputError`` naming ``path`` and ``what`` was expected (e.g. "spec file"):
    missing, unreadable, a symlink loop, not a regular file (checked on the opened file, which a FIFO
    does not block opening: O_NONBLOCK), or over the cap (checked on its size, and again while reading,
    so a file that grows meanwhile is not read past the cap either).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such {what}") from None
    except OSError as exc:
        why = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror
        raise UserInputError(f"{path}: cannot read ({why}); expected a {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((word for test, word in _KINDS if test(st.st_mode)), "not a regular file")
            raise UserInputError(f"{path}: is {kind}, not a regular file; expected a {what}")
        cap = f"; expected a {what} of at most {_size(max_bytes)}"
        if st.st_size > max_bytes:
            raise UserInputError(f"{path}: {_size(st.st_size)} is too large{cap}")
        chunks, size = [], 0
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            while chunk := f.read(max(1, min(1 << 20, max_bytes + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise UserInputError(f"{path}: grew past {_size(max_bytes)} while read{cap}")
        return b"".join(chunks)
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read ({exc.strerror or exc}); expected a {what}") from None
    finally:
        os.close(fd)


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} bytes"
