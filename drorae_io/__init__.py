"""What ``model``, ``analysis`` and ``sweeper`` share though neither of the first two may import the other.

- ``atomic_path``: files written so that a reader never sees half of one; ``model`` (asset downloads,
  caches, checkpoints; ``model.assets.atomic_path`` is this same function), ``analysis`` (figures,
  the report) and ``sweeper`` (the results table, the pending MLflow writes) write through it.
- ``UserInputError``: a mistake in what the user asked for, which every command prints as one line
  and exit code 2 (``analysis.cli.run_command``); ``model.errors.UserError`` and
  ``analysis.errors.AnalysisError`` are its kinds.

A leaf package, standard library only, so that each of the three can import it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UserInputError", "atomic_path"]


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
        # One line: a command prints it as-is.
        super().__init__(" ".join(str(message).split()))
