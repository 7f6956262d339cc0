"""File-system primitives of the store: directory fsync (invariant 4), page-cache control, free space."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_page_cache(fd: int) -> None:
    """Ask the kernel to forget clean cached pages of `fd`, so the next read comes from the disk.

    Only clean pages are dropped, so the caller fsyncs first. This is how the re-read verification
    checks what the disk holds rather than what the page cache remembers writing.
    """
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
