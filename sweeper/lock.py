"""One sweep at a time per sweep name: a lock file holding its owner's pid.

``results/.<name>.lock`` (beside the sweep's directory, so that ``--restart`` moving the directory
aside keeps it) is held with ``fcntl.flock`` for the life of the sweep's process, which the kernel
releases when that process dies however it dies; the pid, host and start time written into it let
a second sweep say who holds it. A lock file left by a dead process is simply taken over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from model.errors import UserError

log = logging.getLogger(__name__)


def lock_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / f".{name}.lock"


class SweepLock:
    """``with SweepLock(path, name):`` holds the sweep's lock or raises UserError naming its owner."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> None:
        self._made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                if self._made_dir:
                    self.path.parent.rmdir()
                who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
                       if owner else "another process")
                raise UserError(f"sweep {self.name!r} is already running ({who}; lock {self.path}): wait for "
                                "it to finish or stop it, then rerun to resume") from None
            try:  # locked; but a releasing owner may have removed the file meanwhile: lock the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        stale = _owner(fd)
        if stale.get("pid"):
            log.warning("took over the lock %s left by pid %s on %s (no longer running)", self.path,
                        stale.get("pid"), stale.get("host"))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # the file goes first, so that no one ever reads our pid from a lock that is not held
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._made_dir:  # a sweep refused before it wrote anything leaves no empty results directory
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
