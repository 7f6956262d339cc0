"""File-system primitives of the store: directory fsync (invariant 4), page-cache control, free space."""

from __future__ import annotations

import contextlib
import os
import secrets
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


def write_atomic(target: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `target` crash-safely: temp file, fsync, rename, directory fsync.

    A crash leaves the old file or the new one, never half of either.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
    return target


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.<token>.tmp`` files of dead processes (a crash during an earlier first run).

    A temporary of a live process is left alone: it may be a concurrent first run about to link it.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid_text = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            stale.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never replacing one), write `data` with exactly `mode`, fsync; on failure remove it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (0644 for the public key)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
