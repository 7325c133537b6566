"""One sweep at a time per sweep name: a lock file holding its owner's pid.

``results/.<name>.lock`` (beside the sweep's directory, so that ``--restart`` moving the directory
aside keeps it) is held with ``fcntl.flock`` for the life of the sweep's process, which the kernel
releases when that process dies however it dies; the pid, host and start time written into it let
a second sweep say who holds it ("starting" in the moment before the holder has written them). A
lock file left by a dead process is simply taken over. A file system that has no ``flock`` (Lustre
mounted without ``-o flock``, some NFS) is refused with one line naming it and the remedy.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from model.errors import UserError

log = logging.getLogger(__name__)

#: What flock raises where the file system has no locks: Lustre mounted without -o flock (ENOSYS),
#: NFS without its lock manager (ENOLCK), other file systems (EOPNOTSUPP, EINVAL).
NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}


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
            made_file = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                self._undo(made_file=False)
                who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
                       if owner.get("pid") else "its holder is starting and has not written its pid yet")
                raise UserError(f"sweep {self.name!r} is already running ({who}; lock {self.path}): wait for "
                                "it to finish or stop it, then rerun to resume") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in NO_LOCKS:
                    raise
                self._undo(made_file)
                raise UserError(self._no_locks_message(exc)) from None
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

    def _undo(self, made_file: bool) -> None:
        """A refused lock leaves nothing it made: the lock file, the results directory."""
        if made_file:
            self.path.unlink(missing_ok=True)
        if self._made_dir:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def _no_locks_message(self, exc: OSError) -> str:
        from .storage import mount_of

        try:
            point, fstype = mount_of(str(self.path.resolve()))
        except OSError:  # no /proc/mounts
            point, fstype = "?", "unknown"
        return (f"results_dir {self.path.parent}: its file system ({fstype}, mounted at {point}) does not support "
                f"file locks (flock: {os.strerror(exc.errno)}), which keep two sweeps of a name apart; mount it "
                "with -o flock (Lustre; NFS: with its lock manager), or put results_dir on a local disk")

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
        owner = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):  # empty or half-written: its holder is starting
        return {}
    return owner if isinstance(owner, dict) else {}
