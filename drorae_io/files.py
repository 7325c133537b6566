"""Files written or read on the user's say-so: regular files only, in places that can hold them, or one line.

Writing (``atomic_path``): a temporary file beside the target, renamed onto it, so that a reader
never sees half of one. The target is only ever a regular file: an existing device, named pipe,
socket or directory is refused with one line and never replaced (run as root, a plain
``os.replace`` onto ``/dev/full`` swaps the device node for a file). A symbolic link to a regular
file is written through, as ``cp`` and a shell's ``>`` do: the file it points to is replaced and
the link stays as it was. A dangling link is refused, as GNU ``cp`` refuses to write through one
(it may point anywhere; creating its target is not what the user asked for), and so is a link
loop. A file replaced keeps its permission bits.

Output directories (``check_output_dir``, ``make_output_dir``, ``made_dirs``): the directory, or
its nearest existing ancestor when it is still to be made, must be a directory (not a file, a
device, a dangling link), writable, and on a file system that holds files: never a kernel pseudo
file system (``PSEUDO_FS``: /proc, /sys, a devtmpfs /dev, ...), where a write either fails midway
or, as root, leaves files that vanish at the next boot. ``check_output_dir`` and
``check_output_file`` only check, so that a command checks every output it was given before it
computes or writes anything; ``made_dirs`` creates the directories and, when the run is refused
after all, removes exactly the ones it made (those still empty).

Reading (``open_regular``): the one way a command opens a file the user named. It must be a
regular file (not a FIFO, which would block forever, nor a device such as /dev/zero, which never
ends) no larger than a cap; the file is opened without blocking and checked again through its
descriptor, so that it cannot be swapped for something else in between.

Every refusal is a ``UserInputError``: ``WHAT PATH: what is wrong``, one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from drorae_io.errors import UserInputError

__all__ = ["PSEUDO_FS", "atomic_path", "check_output_dir", "check_output_file", "made_dirs", "make_output_dir",
           "mount_of", "read_regular_file",
           "open_regular"]

#: Kernel file systems that hold the kernel's own entries, not a user's files (types as /proc/self/mounts names them).
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs",
    "pstore", "bpf", "efivarfs", "mqueue", "binfmt_misc", "fusectl", "hugetlbfs", "rpc_pipefs", "nsfs",
    "selinuxfs", "autofs"})

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _label(path, what: str | None) -> str:
    return f"{what} {path}" if what else str(path)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    return (exc.strerror or str(exc)).rstrip(".")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def mount_of(path: str, mounts: str | None = None) -> tuple[str, str]:
    """(mount point, file-system type) of the mount that holds ``path`` (which may not exist yet), from
    ``mounts`` in /proc/mounts' format (default: this process's, /proc/self/mounts; OSError without it)."""
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    p = os.path.abspath(path)
    best = ("/", "unknown")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if (p == point or p.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


# --- directories -----------------------------------------------------------------------------------


def _check_dir(directory: Path, label: str) -> list[Path]:
    """The directories of ``directory`` still to be made (outermost first), once it is known it can be.

    ``directory`` is absolute. UserInputError (``label: ...``) when an existing component is no
    directory, the nearest existing one is not writable or is on a pseudo file system.
    """
    missing: list[Path] = []
    here = directory
    while True:
        try:
            st = os.stat(here)
        except (FileNotFoundError, NotADirectoryError):  # missing, or below a file (the file says so next)
            if os.path.islink(here):
                raise UserInputError(f"{label}: {here} is a symbolic link to {os.readlink(here)}, which does not "
                                     "exist") from None
            missing.append(here)
            here = here.parent
            continue
        except OSError as exc:
            raise UserInputError(f"{label}: {here}: {_reason(exc)}") from None
        break
    if not stat.S_ISDIR(st.st_mode):
        raise UserInputError(f"{label}: {here} is {_kind(st.st_mode)}, not a directory")
    try:
        mount = mount_of(os.path.realpath(here))
    except OSError:  # not Linux, or no /proc: nothing to tell
        mount = ("/", "unknown")
    if mount[1] in PSEUDO_FS:
        raise UserInputError(f"{label}: {here} is on a {mount[1]} file system (mounted at {mount[0]}), which holds "
                             "the kernel's own entries, not files; expected a directory on a disk or a shared file "
                             "system")
    if not os.access(here, os.W_OK | os.X_OK):
        why = "a read-only file system" if os.statvfs(here).f_flag & os.ST_RDONLY else "permission denied"
        verb = "cannot create directories in" if missing else "cannot write to"
        raise UserInputError(f"{label}: {verb} {here} ({why})")
    return missing[::-1]


def check_output_dir(path, what: str | None = None) -> list[Path]:
    """Check that directory ``path`` exists or can be made, and can hold files; create nothing.

    Returns the directories still to be made, outermost first. ``what`` names the option or key
    that gave the path (``--out``, ``results_dir``) in the one-line UserInputError.
    """
    return _check_dir(Path(os.path.abspath(path)), _label(path, what))


def make_output_dir(path, what: str | None = None) -> list[Path]:
    """Make directory ``path`` and its missing parents once checked (``check_output_dir``); returns those made."""
    label = _label(path, what)
    made: list[Path] = []
    for directory in _check_dir(Path(os.path.abspath(path)), label):
        try:
            os.mkdir(directory)
        except FileExistsError:  # made meanwhile by someone else: fine if it is a directory
            if not directory.is_dir():
                _remove_empty(made)
                raise UserInputError(f"{label}: {directory} is not a directory") from None
            continue
        except OSError as exc:
            _remove_empty(made)
            raise UserInputError(f"{label}: cannot create {directory} ({_reason(exc)})") from None
        made.append(directory)
    return made


def _remove_empty(made: list[Path]) -> None:
    """Remove the directories ``made`` (outermost first), innermost first, while they are empty."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:  # something was written there: keep it, and what holds it
            return


@contextlib.contextmanager
def made_dirs(path, what: str | None = None) -> Iterator[Path]:
    """``with made_dirs(results_dir, "results_dir"):``: the directory, made (checked) for the block.

    When the block raises (a run refused after all, an interrupt), the directories made here are
    removed again, innermost first, as far as they are still empty: a refused run leaves nothing.
    """
    made = make_output_dir(path, what)
    try:
        yield Path(path)
    except BaseException:
        _remove_empty(made)
        raise


# --- files to write ----------------------------------------------------------------------------------


def _file_target(path, label: str, thorough: bool) -> tuple[Path, os.stat_result | None]:
    """The file to replace for output ``path`` (a link's target) and its stat, or None when it is new.

    ``thorough``: check the directory as ``check_output_dir`` does even when it exists (else only a
    missing one is checked, as it is made).
    """
    target = Path(os.path.abspath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if os.path.islink(target):
            raise UserInputError(f"{label}: a symbolic link to {os.readlink(target)}, which does not exist; "
                                 "not writing through a dangling link") from None
        st = None
    except NotADirectoryError:  # a file where a directory is expected: the directory check names it
        _check_dir(target.parent, label)
        raise UserInputError(f"{label}: not a directory in the path") from None
    except OSError as exc:
        raise UserInputError(f"{label}: {_reason(exc)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UserInputError(f"{label}: a directory; expected the path of a file")
        if not stat.S_ISREG(st.st_mode):
            raise UserInputError(f"{label}: {_kind(st.st_mode)}, not a regular file; only regular files are "
                                 "written, never a device, a pipe or a socket")
        if os.path.islink(target):
            target = Path(os.path.realpath(target))
    if thorough or not target.parent.is_dir():
        _check_dir(target.parent, label)
    return target, st


def check_output_file(path, what: str | None = None) -> Path:
    """Check that ``path`` can be written as a regular file (see the module); create nothing.

    Returns the file that will be replaced: ``path``, or the file a symbolic link points to.
    """
    return _file_target(path, _label(path, what), thorough=True)[0]


@contextlib.contextmanager
def atomic_path(target, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, else delete it.

    ``target`` must be a regular file or missing (its directory is made, checked); a symbolic link
    is written through (see the module). An OSError on the temporary file or the target (a full
    disk, a read-only file system) becomes a one-line UserInputError naming ``target``.
    """
    label = _label(target, what)
    real, st = _file_target(target, label, thorough=False)
    if not real.parent.is_dir():
        make_output_dir(real.parent, label)
    # A fresh unique name rather than mkstemp, so the file gets the usual umask permissions, not 0600.
    tmp = real.parent / f".{real.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, real)
    except OSError as exc:
        if {os.fspath(p) for p in (exc.filename, exc.filename2) if p is not None} & {str(tmp), str(real)}:
            raise UserInputError(f"{label}: cannot write it ({_reason(exc)})") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


# --- files to read ------------------------------------------------------------------------------------


def open_regular(path, what: str | None = None, limit: int = 2**30, expected: str | None = None) -> BinaryIO:
    """Open ``path`` for reading as a binary file object, if it is a regular file of at most ``limit`` bytes.

    Else a one-line UserInputError: ``WHAT PATH: <what it is> (expected EXPECTED)``, for a missing
    file, a directory, a FIFO, a device, a socket, a dangling link, a link loop or a file too large.
    """
    label = _label(path, what)
    tail = f" (expected {expected})" if expected else ""

    def refuse(problem: str):
        raise UserInputError(f"{label}: {problem}{tail}")

    def check(st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            refuse(f"{_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            refuse(f"{_size(st.st_size)}, over the {_size(limit)} a file may have here")

    try:  # stat first: opening a device can itself do something (a tape rewinds, a watchdog starts)
        check(os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            refuse(f"a symbolic link to {os.readlink(path)}, which does not exist")
        refuse("no such file or directory")
    except OSError as exc:
        refuse(_reason(exc))
    try:
        check(os.fstat(fd))  # the file opened is the one checked, not one swapped in meanwhile
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular_file(path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path`` (``open_regular``), at most ``max_bytes``: a file that
    grows past the cap while it is read is refused too, never read on."""
    expected = f"a {what}"
    with open_regular(path, limit=max_bytes, expected=expected) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserInputError(f"{path}: grew past {_size(max_bytes)} while read (expected {expected})")
    return data
