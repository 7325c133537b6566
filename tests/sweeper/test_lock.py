"""One sweep per name at a time: the lock file, its owner's pid, and stale locks taken over."""

import json
import os
import subprocess
import sys

import pytest

from model.errors import UserError
from sweeper.lock import SweepLock, lock_path

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
