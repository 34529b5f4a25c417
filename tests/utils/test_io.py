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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_full_disk_is_an_oserror_naming_the_file(tmp_path):
    # A file-size limit makes writes fail as a full disk does (EFBIG instead of ENOSPC); torch's
    # own writer would report "RuntimeError: [enforce fail at inline_container.cc]".
    import resource
    import signal

    import torch

    from lib.utils.io import atomic_torch_save

    path = str(tmp_path / "model_0000001.pth")
    atomic_write_text(path, "old")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: limit file sizes to 64 KiB, then save 400 KB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        try:
            atomic_torch_save({"w": torch.zeros(100_000)}, path)
            message = "saved"
        except OSError as exc:
            message = f"OSError {exc.errno} {exc.filename}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    assert message == f"OSError {errno.EFBIG} {path}"
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["model_0000001.pth"]
