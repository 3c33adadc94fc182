"""Durability and privacy helpers shared by the store file, the key file and recovery storage."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["fsync_dir", "make_private_dirs", "write_new_private_file"]


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_private_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist) owner-only (0600) and write all of `data` to it, durably (fsync).

    The first half of an atomic replace: callers write a temporary name this way, then rename it into place.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but a filesystem may have defaults of its own
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """Create `path` and any missing parents, each owner-only (0700); directories that exist are left as they are.

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory only, and the umask applies to
    all of them (under umask 000 the parents would be 0777): each new directory is chmod'ed explicitly instead.
    OSError passes through (callers say what the directory was for).
    """
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{directory} exists and is not a directory") from None
            continue  # another process created it a moment ago: its mode is its own
        os.chmod(directory, 0o700)
