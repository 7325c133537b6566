"""drorae_io.files: outputs only as regular files in places that hold files, inputs only from regular files.

Real file-system objects only: device nodes made with mknod in tmp_path (as root; never /dev's own),
FIFOs, Unix sockets, symbolic links and loops, /proc and /sys as this machine mounts them.
"""

import os
import socket
import stat

import pytest

from drorae_io import (
    UserInputError,
    atomic_path,
    check_output_dir,
    check_output_file,
    made_dirs,
    make_output_dir,
    open_regular,
)
from helpers import within


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def full_device(path):
    """A character device like /dev/full (1, 7) at ``path``; skips where this process may not make one."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    return path


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- writing: what the target may be ------------------------------------------------------------


def test_atomic_write_refuses_a_device_and_leaves_the_device_in_place(tmp_path):
    dev = full_device(tmp_path / "full")
    before = os.stat(dev)
    with pytest.raises(UserInputError) as err:
        with atomic_path(dev) as tmp:
            tmp.write_text("report")
    assert one_line(err) == f"{dev}: a character device, not a regular file; only regular files are written, " \
                            "never a device, a pipe or a socket"
    after = os.stat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert leftovers(tmp_path) == []
    with pytest.raises(UserInputError, match="a character device"):  # and checked before any work
        check_output_file(dev, "--out")


def test_atomic_write_refuses_a_fifo_a_socket_and_a_directory(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    (tmp_path / "dir").mkdir()
    try:
        for path, kind in ((fifo, "a named pipe (FIFO)"), (sock_path, "a socket"), (tmp_path / "dir", "a directory")):
            with pytest.raises(UserInputError) as err:
                with atomic_path(path, "--out") as tmp:
                    tmp.write_text("x")
            assert one_line(err).startswith(f"--out {path}: {kind}")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(sock_path).st_mode)
        assert (tmp_path / "dir").is_dir() and leftovers(tmp_path) == []
    finally:
        server.close()


def test_atomic_write_goes_through_a_link_to_a_regular_file_and_keeps_the_link_and_the_mode(tmp_path):
    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "report.md"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "report.md"
    link.symlink_to(real)
    assert check_output_file(link) == real
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link as it was
    assert real.read_text() == "new" and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "shared") == []


def test_atomic_write_refuses_a_dangling_link_and_a_link_loop(tmp_path):
    dangling = tmp_path / "dangling.md"
    dangling.symlink_to(tmp_path / "elsewhere" / "nothing.md")
    loop = tmp_path / "loop.md"
    loop.symlink_to(loop)
    with pytest.raises(UserInputError) as err:
        with atomic_path(dangling) as tmp:
            tmp.write_text("x")
    assert "which does not exist; not writing through a dangling link" in one_line(err)
    with pytest.raises(UserInputError) as err:
        with atomic_path(loop) as tmp:
            tmp.write_text("x")
    assert one_line(err) == f"{loop}: a symbolic link loop"
    assert not (tmp_path / "elsewhere").exists() and dangling.is_symlink() and loop.is_symlink()


def test_atomic_write_makes_the_missing_directories_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(target.parent.iterdir()) == [target]


# --- output directories ---------------------------------------------------------------------------


def test_an_output_directory_below_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "table.csv").write_text("a\n1\n")
    for path in (tmp_path / "table.csv", tmp_path / "table.csv" / "figures" / "deeper"):
        with pytest.raises(UserInputError) as err:
            check_output_dir(path, "--figures")
        assert one_line(err) == f"--figures {path}: {tmp_path / 'table.csv'} is a regular file, not a directory"
    with pytest.raises(UserInputError, match="is a regular file, not a directory"):
        check_output_file(tmp_path / "table.csv" / "report.md", "--out")
    with pytest.raises(UserInputError, match="is a regular file, not a directory"):
        with atomic_path(tmp_path / "table.csv" / "report.md") as tmp:
            tmp.write_text("x")
    assert (tmp_path / "table.csv").read_text() == "a\n1\n"


@pytest.mark.parametrize("place, fstype", [("/proc", "proc"), ("/sys", "sysfs")])
def test_kernel_pseudo_file_systems_are_refused_as_outputs(tmp_path, place, fstype):
    if not os.path.isdir(place):
        pytest.skip(f"no {place} here")
    for path in (f"{place}/drorae-figures", f"{place}/drorae/a/b"):
        with pytest.raises(UserInputError) as err:
            make_output_dir(path, "--out")
        assert one_line(err).startswith(f"--out {path}: {place} is on a {fstype} file system (mounted at {place})")
        assert not os.path.exists(path)
    with pytest.raises(UserInputError, match=f"on a {fstype} file system"):
        check_output_file(f"{place}/report.md", "--out")
    link = tmp_path / "looks-local"  # a link into /proc is no way around it
    link.symlink_to(place)
    with pytest.raises(UserInputError, match=f"on a {fstype} file system"):
        check_output_dir(link / "figures")


def test_checking_an_output_directory_creates_nothing_and_says_what_it_would_make(tmp_path):
    path = tmp_path / "a" / "b" / "c"
    assert check_output_dir(path) == [tmp_path / "a", tmp_path / "a" / "b", path]
    assert list(tmp_path.iterdir()) == []
    assert make_output_dir(path) == [tmp_path / "a", tmp_path / "a" / "b", path] and path.is_dir()
    assert make_output_dir(path) == [] and check_output_dir(path) == []


def test_a_refused_run_removes_exactly_the_directories_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("the user's")
    results = tmp_path / "a" / "b" / "c" / "d"
    with pytest.raises(UserInputError, match="refused"):
        with made_dirs(results, "results_dir") as made:
            assert made == results and results.is_dir()
            raise UserInputError("refused after the lock")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]  # a/b, a/b/c, a/b/c/d gone
    # what a run wrote stays, and the directories that hold it
    with pytest.raises(KeyboardInterrupt):
        with made_dirs(results):
            (results.parent / "mlflow.db").write_text("runs")
            raise KeyboardInterrupt
    assert (results.parent / "mlflow.db").exists() and not results.exists()
    with made_dirs(results):  # a run that goes on keeps its directory
        pass
    assert results.is_dir()


def test_a_directory_that_cannot_be_made_is_refused_before_any_of_it_is_made(tmp_path):
    (tmp_path / "a").mkdir()
    target = tmp_path / "a" / "b" / ("x" * 300)  # a name longer than any file system takes
    with pytest.raises(UserInputError) as err:
        make_output_dir(target, "results_dir")
    assert "File name too long" in one_line(err)
    assert list((tmp_path / "a").iterdir()) == []


# --- reading: regular files only, up to a cap ---------------------------------------------------------


def _read(path, **kwargs) -> bytes:
    with open_regular(path, **kwargs) as f:
        return f.read()


def test_reading_refuses_a_fifo_a_device_a_directory_and_link_loops_at_once(tmp_path):
    os.mkfifo(tmp_path / "t.csv")
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nothing.csv")
    (tmp_path / "dir.csv").mkdir()
    cases = {"t.csv": "a named pipe (FIFO), not a regular file", "zero.csv": "a character device, not a regular file",
             "loop.csv": "a symbolic link loop", "gone.csv": f"a symbolic link to {tmp_path / 'nothing.csv'}, which "
             "does not exist", "dir.csv": "a directory, not a regular file", "none.csv": "no such file or directory"}
    for name, problem in cases.items():
        with pytest.raises(UserInputError) as err:
            within(10, _read, tmp_path / name, what="RESULTS", expected="a table")
        assert one_line(err) == f"RESULTS {tmp_path / name}: {problem} (expected a table)"


def test_reading_refuses_a_file_over_the_cap_and_reads_one_at_it(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"x" * 1000)
    assert within(10, _read, path, limit=1000) == b"x" * 1000
    path.write_bytes(b"x" * 1001)
    with pytest.raises(UserInputError) as err:
        within(10, _read, path, limit=1000)
    assert one_line(err) == f"{path}: 1,001 bytes, over the 1,000 bytes a file may have here"
