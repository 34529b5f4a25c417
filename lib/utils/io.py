"""Atomic file writes: a file is either its old content or its complete new content.

Each write goes to a temporary sibling (``<path>.tmp.<pid>``), is flushed and fsync'ed, then
renamed over the target with ``os.replace`` (atomic on POSIX); the folder is fsync'ed so the
rename survives a crash. A failed write (a full disk) removes the temporary file and raises
the ``OSError`` with ``filename`` the target.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import IO, Any

import torch

TMP_MARK = ".tmp."


def _fsync_dir(path: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: ``write(f)`` into a temporary sibling, fsync, then rename.

    Args:
        path: destination file.
        write: callable taking a binary file object and writing the content.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            exc.filename = path  # the file meant, not its temporary name
        raise
    _fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    """Write a UTF-8 text file atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically (see ``atomic_write_bytes``)."""
    buffer = io.BytesIO()  # serialised first: a write error is then an OSError, not torch's
    torch.save(obj, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))
