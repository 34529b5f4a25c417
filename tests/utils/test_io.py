"""Atomic writes: a file is either its old content or its complete new content."""

import os

import pytest

from lib.utils.io import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "file.txt")
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert open(path).read() == "two"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_failed_atomic_write_keeps_old_content(tmp_path):
    path = str(tmp_path / "file.txt")
    atomic_write_text(path, "old")

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, broken)
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]
