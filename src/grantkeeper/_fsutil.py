"""Durability and privacy helpers shared by the store file, the key file and recovery storage."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["fsync_dir", "make_private_dirs"]


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
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
