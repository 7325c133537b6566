"""The version of the model code, for cache keys: a cache made by other code is never reused."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def code_version() -> str:
    """A digest of every source file of the ``model`` package (16 hex digits).

    Part of the key of everything a sweep caches (the pretrained encoder, the feature cache, the
    FID statistics, the phase-1 decoder): a change to the code that makes them, even one that only
    moves a rounding, gives new files instead of silently mixing old results with new ones.
    """
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
