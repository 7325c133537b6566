"""One sweep per name at a time: the lock file, its owner's pid (or "starting"), stale locks taken over,
and file systems without locks refused."""

import errno
import fcntl
import json
import os
import subprocess
import sys

import pytest

from model.errors import UserError
from sweeper.lock import SweepLock, lock_path
from sweeper.storage import mount_of

HOLD = """
import sys, time
from sweeper.lock import SweepLock
lock = SweepLock(sys.argv[1], "s")
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_second_holder_is_refused_with_the_owners_pid(tmp_path):
    path = lock_path(tmp_path, "s")
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"sweep 's' is already running \(pid {owner.pid} on .*lock {path}"):
            SweepLock(path, "s").acquire()
        assert json.loads(path.read_text())["pid"] == owner.pid  # the refused attempt changed nothing
    finally:
        owner.kill()
        owner.wait()


# A holder between its flock and writing its pid: the lock is held, the file still empty.
HOLD_SILENT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(60)
"""


def test_second_holder_is_told_the_holder_is_starting_before_it_has_written_its_pid(tmp_path):
    path = lock_path(tmp_path, "s")
    owner = subprocess.Popen([sys.executable, "-c", HOLD_SILENT, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as err:
            SweepLock(path, "s").acquire()
        assert str(err.value) == (f"sweep 's' is already running (its holder is starting and has not written its "
                                  f"pid yet; lock {path}): wait for it to finish or stop it, then rerun to resume")
        assert path.read_text() == ""  # the refused attempt changed nothing
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.parametrize("code", ["ENOSYS", "EOPNOTSUPP", "ENOLCK"])
def test_a_file_system_without_flock_is_refused_naming_it_and_the_remedy_leaving_nothing(tmp_path, monkeypatch,
                                                                                         code):
    # Lustre mounted without -o flock answers ENOSYS, NFS without its lock manager ENOLCK: the errno is
    # injected at the flock call, the rest (the file system's name, the clean-up) is this machine's.
    def flock(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", flock)
    results = tmp_path / "results"
    point, fstype = mount_of(str(results))
    with pytest.raises(UserError) as err:
        SweepLock(lock_path(results, "s"), "s").acquire()
    assert str(err.value) == (
        f"results_dir {results}: its file system ({fstype}, mounted at {point}) does not support file locks "
        f"(flock: {os.strerror(getattr(errno, code))}), which keep two sweeps of a name apart; mount it with "
        "-o flock (Lustre; NFS: with its lock manager), or put results_dir on a local disk")
    assert not results.exists()  # neither the lock file nor the directory made for it
    results.mkdir()
    with pytest.raises(UserError):
        SweepLock(lock_path(results, "s"), "s").acquire()
    assert list(results.iterdir()) == []  # an existing directory is kept, the lock file it made is not


def test_other_flock_errors_are_not_taken_for_a_file_system_without_locks(tmp_path, monkeypatch):
    def flock(fd, op):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OSError) as err:
        SweepLock(lock_path(tmp_path, "s"), "s").acquire()
    assert err.value.errno == errno.EBADF and not isinstance(err.value, UserError)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    path = lock_path(tmp_path, "s")
    dead = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "0"], stdout=subprocess.DEVNULL)
    assert dead.wait() == 0 and json.loads(path.read_text())["pid"] == dead.pid  # left behind
    with SweepLock(path, "s"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert f"left by pid {dead.pid}" in caplog.text
    assert not path.exists()


def test_release_leaves_no_lock_file_and_no_directory_it_created(tmp_path):
    results = tmp_path / "results"
    with SweepLock(lock_path(results, "s"), "s"):
        assert lock_path(results, "s").exists()
    assert not results.exists()
    with SweepLock(lock_path(results, "s"), "s"):  # and it can be taken again at once
        pass
