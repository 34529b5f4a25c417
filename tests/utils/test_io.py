"""Atomic writes: a file is either its old content or its complete new content."""

import errno
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


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX resource limits")
def test_a_full_disk_is_an_oserror_naming_the_file(tmp_path):
    # A file-size limit makes writes fail as a full disk does (EFBIG instead of ENOSPC); torch's
    # own writer would report "RuntimeError: [enforce fail at inline_container.cc]".
    import resource
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "model_0000001.pth")
    atomic_write_text(path, "old")

    def limit_file_size() -> None:  # in the child: files up to 64 KiB, no SIGXFSZ kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    # A fresh interpreter, not a fork: a forked child of a process that has used torch's
    # OpenMP threads can hang in its first parallel operation.
    code = f"""
import torch
from lib.utils.io import atomic_torch_save
try:
    atomic_torch_save({{"w": torch.zeros(100_000)}}, {path!r})
    print("saved")
except OSError as exc:
    print(f"OSError {{exc.errno}} {{exc.filename}}")
"""
    child = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
    )
    message = child.stdout.strip() or child.stderr
    assert message == f"OSError {errno.EFBIG} {path}"
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["model_0000001.pth"]
