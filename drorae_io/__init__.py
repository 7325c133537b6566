"""Writing files so that a reader never sees half of one: ``atomic_path``.

A leaf package (standard library only) because both ``model`` and ``analysis`` write files this
way and neither may import the other: ``model`` (asset downloads, caches, checkpoints), ``analysis``
(figures, the report) and ``sweeper`` (the results table, the pending MLflow writes) all import it
from here. ``model.assets.atomic_path`` is this same function.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]


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
