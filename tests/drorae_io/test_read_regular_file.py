"""read_regular_file: a regular file up to a cap, anything else one line naming the path; never a hang."""

import os

import pytest

from drorae_io import UserInputError, read_regular_file


def test_a_regular_file_is_read_whole_up_to_the_cap(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(UserInputError) as info:
        read_regular_file(path, 99, "spec file")
    assert str(info.value) == f"{path}: 100 bytes, over the 99 bytes a file may have here (expected a spec file)"


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "p")
    return tmp_path / "p"


def _loop(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    return tmp_path / "loop"


@pytest.mark.timeout(10)  # a FIFO no one writes to: a plain open() would wait here forever
@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp, "a directory, not a regular file (expected a spec file)"),
    (_fifo, "a named pipe (FIFO), not a regular file (expected a spec file)"),
    (lambda tmp: "/dev/zero", "a character device, not a regular file (expected a spec file)"),
    (_loop, "a symbolic link loop (expected a spec file)"),
    (lambda tmp: tmp / "nope", "no such file or directory (expected a spec file)"),
], ids=["directory", "fifo", "device", "symlink-loop", "missing"])
def test_anything_but_a_regular_file_is_one_line_naming_the_path(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(UserInputError) as info:
        read_regular_file(path, 1000, "spec file")
    assert str(info.value) == f"{path}: {words}"
