"""Copy a recorder file into the store while hashing it, in one pass, with bounded memory.

Invariant 1: the acquisition hash is computed over exactly the bytes read from the device, the same
buffer that is then written. Verification re-reads the stored copy from the disk (after fsync the
clean pages are dropped from the page cache) and re-reads the source from the device; both must give
the acquisition hash, which catches a bad write, a transient device read fault and a file that changed.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.fsutil import drop_page_cache

Progress = Callable[[int], None]


class AcquireError(Exception):
    """One file could not be acquired; the message says what happened."""


class SourceReadError(AcquireError):
    """The device failed a read (I/O error, device gone)."""


class SourceChangedError(AcquireError):
    """The file changed on the device while it was being copied (grew, shrank, was rewritten)."""


class StoreFullError(AcquireError):
    """The station disk is full (ENOSPC/EDQUOT)."""


class StoreWriteError(AcquireError):
    """Another failure writing the station's copy."""


@dataclass(frozen=True)
class CopyResult:
    sha256: str
    size: int


DEVICE_GONE_ERRNOS = {errno.ENODEV, errno.ENXIO, errno.ESHUTDOWN, errno.ENOTCONN, errno.ESTALE}


def _read_error(exc: OSError, what: str) -> SourceReadError:
    gone = " (device gone)" if exc.errno in DEVICE_GONE_ERRNOS else ""
    return SourceReadError(f"{what}: read failed: {exc.strerror or exc}{gone}")


def copy_and_hash(
    src_fd: int,
    dst: Path,
    *,
    expected_size: int,
    expected_mtime_ns: int,
    chunk_bytes: int,
    what: str,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy `src_fd` to a new file `dst`, hashing the same bytes; fsync `dst`.

    Raises SourceChangedError if the source's size or mtime differ from the listing or it yields
    more or fewer bytes than its size; SourceReadError on device read failures; StoreFullError /
    StoreWriteError on station write failures. `dst` is left for the caller to discard on error.
    """
    before = os.fstat(src_fd)
    if before.st_size != expected_size or before.st_mtime_ns != expected_mtime_ns:
        raise SourceChangedError(
            f"{what}: changed since listing (size {expected_size} -> {before.st_size}, "
            f"mtime {expected_mtime_ns} -> {before.st_mtime_ns})"
        )
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    total = 0
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise _write_error(exc, what) from exc
    try:
        while True:
            try:
                count = os.readv(src_fd, [view])
            except OSError as exc:
                raise _read_error(exc, what) from exc
            if count == 0:
                break
            total += count
            if total > expected_size:
                raise SourceChangedError(f"{what}: grew while being copied (more than {expected_size} bytes)")
            chunk = view[:count]
            digest.update(chunk)
            _write_all(dst_fd, chunk, what)
            if progress is not None:
                progress(count)
        if total != expected_size:
            raise SourceChangedError(f"{what}: ended after {total} of {expected_size} bytes")
        after = os.fstat(src_fd)
        if after.st_size != expected_size or after.st_mtime_ns != expected_mtime_ns:
            raise SourceChangedError(
                f"{what}: changed while being copied (size {expected_size} -> {after.st_size})"
            )
        try:
            os.fsync(dst_fd)
        except OSError as exc:
            raise _write_error(exc, what) from exc
    finally:
        os.close(dst_fd)
    return CopyResult(digest.hexdigest(), total)


def _write_all(fd: int, chunk: memoryview, what: str) -> None:
    while chunk:
        try:
            written = os.write(fd, chunk)
        except OSError as exc:
            raise _write_error(exc, what) from exc
        chunk = chunk[written:]


def _write_error(exc: OSError, what: str) -> AcquireError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"{what}: station disk full while writing the copy")
    return StoreWriteError(f"{what}: writing the station copy failed: {exc.strerror or exc}")


def hash_fd(fd: int, *, chunk_bytes: int, drop_cache: bool) -> tuple[str, int]:
    """SHA-256 and length of everything readable from `fd`, optionally bypassing the page cache."""
    if drop_cache:
        drop_page_cache(fd)
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    total = 0
    offset = 0
    while True:
        count = os.preadv(fd, [view], offset)
        if count == 0:
            break
        digest.update(view[:count])
        total += count
        offset += count
    if drop_cache:
        # Leave no cached evidence pages behind: memory stays bounded by the copy buffers.
        drop_page_cache(fd)
    return digest.hexdigest(), total


def hash_stored_copy(path: Path, *, chunk_bytes: int, limit: int | None = None) -> tuple[str, int]:
    """Hash a stored file as the disk holds it (page cache dropped first)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if limit is None:
            return hash_fd(fd, chunk_bytes=chunk_bytes, drop_cache=True)
        return _hash_prefix(fd, limit, chunk_bytes)
    finally:
        os.close(fd)


def _hash_prefix(fd: int, limit: int, chunk_bytes: int) -> tuple[str, int]:
    drop_page_cache(fd)
    digest = hashlib.sha256()
    offset = 0
    while offset < limit:
        data = os.pread(fd, min(chunk_bytes, limit - offset), offset)
        if not data:
            break
        digest.update(data)
        offset += len(data)
    return digest.hexdigest(), offset


def hash_source(src_fd: int, *, chunk_bytes: int, what: str) -> tuple[str, int]:
    try:
        # Dropping cached pages first makes this a real second read from the device.
        return hash_fd(src_fd, chunk_bytes=chunk_bytes, drop_cache=True)
    except OSError as exc:
        raise _read_error(exc, what) from exc
