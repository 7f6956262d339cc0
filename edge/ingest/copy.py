"""Copy an original into the store while hashing it, in one pass, with bounded memory.

Invariant 1: the acquisition hash is computed over exactly the bytes read from the source, the same
buffer that is then written (the source's reader makes sure they come from the device, not from
cached pages: :class:`edge.ingest.source.FileReader`). Verification (invariant 2) re-reads the stored
copy from the disk (O_DIRECT, or a read proven not to come from the page cache), which must give the
acquisition hash: that catches a bad or lost write. Where configured, the original is read a second
time beside it and compared byte for byte, which also catches a device that returns different bytes
on two reads. A file that changed on the source is caught by its size and mtime after the pass.
Sources hand their bytes over as readers (see :mod:`edge.ingest.source`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.durable.files import PRIVATE_FILE_MODE
from edge.durable.uncached import ReadMethod, UncachedFile
from edge.ingest.buffers import BUFFERS
from edge.ingest.prefix_digests import PrefixDigests, PrefixRecorder

if TYPE_CHECKING:
    from edge.ingest.source import ItemReader

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


# A step no copy reaches: the re-read's hash without prefix digests.
_NO_PREFIX_STEP = 1 << 62

DEVICE_GONE_ERRNOS = {errno.ENODEV, errno.ENXIO, errno.ESHUTDOWN, errno.ENOTCONN, errno.ESTALE}


def read_error(exc: OSError, what: str) -> SourceReadError:
    """The SourceReadError for a failed device read, saying when the device is gone."""
    gone = " (device gone)" if exc.errno in DEVICE_GONE_ERRNOS else ""
    return SourceReadError(f"{what}: read failed: {exc.strerror or exc}{gone}")


def copy_and_hash(
    reader: ItemReader,
    dst: Path,
    *,
    expected_size: int | None,
    max_bytes: int,
    chunk_bytes: int,
    what: str,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy everything `reader` yields to a new file `dst`, hashing the same bytes; fsync `dst`.

    Raises SourceChangedError if the source yields more or fewer bytes than `expected_size` (when
    known) or reports a change; SourceReadError on device read failures; StoreFullError /
    StoreWriteError on station write failures; AcquireError beyond `max_bytes`. `dst` is left for the
    caller to discard on error.
    """
    digest = hashlib.sha256()
    total = 0
    limit = max_bytes if expected_size is None else expected_size
    dst_fd, direct = _create_copy(dst, what)
    writer = _Writer(dst_fd, what, chunk_bytes, direct=direct)
    try:
        while True:
            buffer = writer.free_buffer()
            count = reader.readinto(memoryview(buffer))
            if count == 0:
                break
            total += count
            if total > limit:
                if expected_size is None:
                    raise AcquireError(f"{what}: more than {max_bytes} bytes; refusing the rest")
                raise SourceChangedError(f"{what}: grew while being copied (more than {expected_size} bytes)")
            chunk = memoryview(buffer)[:count]
            digest.update(chunk)  # the very bytes handed to the writer below
            writer.write(chunk)
            if progress is not None:
                progress(count)
        writer.finish()
        if expected_size is not None and total != expected_size:
            raise SourceChangedError(f"{what}: ended after {total} of {expected_size} bytes")
        reader.check_unchanged()
        try:
            os.fsync(dst_fd)
        except OSError as exc:
            raise _write_error(exc, what) from exc
    finally:
        writer.close()
        os.close(dst_fd)
    return CopyResult(digest.hexdigest(), total)


def _create_copy(dst: Path, what: str) -> tuple[int, bool]:
    """Create the copy for writing, with O_DIRECT where the file system allows it.

    Direct writes go from the copy buffer to the disk: no second copy through the page cache, no
    cached evidence pages filling memory, and the later re-read necessarily comes from the disk.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return _private(os.open(dst, flags | os.O_DIRECT, PRIVATE_FILE_MODE)), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise _write_error(exc, what) from exc
    dst.unlink(missing_ok=True)  # ramfs and some FUSE file systems refuse O_DIRECT
    try:
        return _private(os.open(dst, flags, PRIVATE_FILE_MODE)), False
    except OSError as exc:
        raise _write_error(exc, what) from exc


def _private(fd: int) -> int:
    """Evidence is the service user's alone, whatever the umask of whoever runs the program."""
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Writer:
    """Writes chunks in a second thread, so reading and hashing chunk N+1 overlaps writing chunk N.

    A fixed set of page-aligned buffers (as O_DIRECT needs, from the process's pool) circulates
    between the two threads: memory is bounded by BUFFERS * chunk_bytes whatever the file size.
    """

    BUFFERS = 3
    ALIGN = 4096

    def __init__(self, fd: int, what: str, chunk_bytes: int, *, direct: bool) -> None:
        self.fd = fd
        self.what = what
        self.direct = direct
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self.buffers = [BUFFERS.aligned(chunk_bytes) for _ in range(self.BUFFERS)]
        for buffer in self.buffers:
            self.free.put(buffer)
        self.pending: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self.error: AcquireError | None = None
        self.thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)
        self.thread.start()

    def free_buffer(self) -> mmap.mmap:
        buffer = self.free.get()
        if self.error is not None:
            raise self.error
        return buffer

    def write(self, chunk: memoryview) -> None:
        self.pending.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk is written; raise the writer's error if it had one."""
        self.pending.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.pending.put(None)
            self.thread.join()
        for buffer in self.buffers:  # the writer is done with them, and so is the copy loop
            BUFFERS.give(buffer)
        self.buffers = []

    def _run(self) -> None:
        while True:
            chunk = self.pending.get()
            if chunk is None:
                return
            if self.error is None:
                try:
                    if self.direct and len(chunk) % self.ALIGN:
                        # A short (unaligned) chunk, normally the file's tail: finish with buffered writes.
                        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                        self.direct = False
                    _write_all(self.fd, chunk, self.what)
                except AcquireError as exc:
                    self.error = exc
            self.free.put(chunk.obj)  # type: ignore[arg-type]


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


@dataclass(frozen=True)
class ReRead:
    stored_sha256: str  # of the stored copy's first `size` bytes, as the disk holds them
    stored_size: int
    # First offset where the second read of the original differs from the stored copy, or None; always
    # None when there was no second read.
    source_differs_at: int | None
    # How the stored copy's read bypassed the page cache (edge.durable.uncached.ReadMethod).
    stored_read: str = ReadMethod.O_DIRECT
    # How the second read of the original was proven to reach the device (its reader's
    # `cache_bypass`); None when there was no second read or it may have come from cached pages.
    source_read: ReadMethod | None = None
    # The SHA-256 prefix digests of the stored bytes read, at every `prefix_step_bytes` and at the end
    # (edge.ingest.prefix_digests); None when none were asked for.
    prefix_digests: PrefixDigests | None = None


def reread_and_compare(
    stored: Path,
    source: ItemReader | None,
    *,
    size: int,
    chunk_bytes: int,
    what: str,
    prefix_step_bytes: int | None = None,
) -> ReRead:
    """Re-read the stored copy from disk and, when given, the original from its source, side by side.

    The stored bytes are hashed (they must give the acquisition hash); the source's bytes are compared
    with them byte for byte, which proves the second read equal without hashing it again. The stored
    copy is read with O_DIRECT (or, where the file system refuses it, only after proving that none of
    its pages is cached: :mod:`edge.durable.uncached`), so its read comes from the disk; the source's
    reader drops its own cached pages.

    The stored copy is read in a second thread, ahead of the hashing and comparing here
    (:class:`_DiskReadAhead`): O_DIRECT reads are synchronous, and alone they leave the disk idle
    during every hash and every read of the source.

    With `prefix_step_bytes`, the hash of the stored bytes also keeps its digest at every multiple of it
    and at the end (the upload's sha256-prefix checksums: edge.ingest.prefix_digests), on the same pass.
    """
    digest = PrefixRecorder(prefix_step_bytes or _NO_PREFIX_STEP)
    theirs = BUFFERS.plain(chunk_bytes)
    differs_at: int | None = None
    offset = 0
    try:
        with UncachedFile(stored) as disk:
            ahead = _DiskReadAhead(disk, size, chunk_bytes)
            try:
                for mine, got in ahead.chunks():
                    digest.update(memoryview(mine)[:got])
                    if source is not None and differs_at is None:
                        theirs_got = _read_full(source, memoryview(theirs)[:got])
                        if theirs_got == got == len(theirs) == len(mine):
                            same = theirs == mine  # type: ignore[comparison-overlap]  # one memcmp, no copy
                        else:
                            same = theirs_got == got and theirs[:got] == mine[:got]
                        if not same:
                            differs_at = offset + _first_difference(mine, theirs, min(got, theirs_got))
                    offset += got
                    ahead.done_with(mine)
            finally:
                ahead.close()
                disk.drop_cache()  # leave no cached evidence behind: memory stays bounded
            if source is not None and differs_at is None:
                if source.readinto(memoryview(theirs)[:1]):
                    differs_at = offset  # the source now has more bytes than were copied
                else:
                    source.check_unchanged()
            method = disk.method
    finally:
        BUFFERS.give(theirs)
    recorded = digest.finish() if prefix_step_bytes is not None else None
    return ReRead(digest.hexdigest(), offset, differs_at, method, prefix_digests=recorded)


class _DiskReadAhead:
    """Reads the first `size` bytes of a stored copy in its own thread, up to DEPTH chunks ahead of
    the consumer, which hands each chunk back once hashed and compared.

    Memory is bounded by DEPTH * chunk_bytes. A read error reaches the consumer in order, in place of
    the chunk it was reading; the reads stop early when the file ends (a short copy is found by its
    size and hash).
    """

    DEPTH = 2

    def __init__(self, disk: UncachedFile, size: int, chunk_bytes: int) -> None:
        self.disk = disk
        self.size = size
        self.chunk_bytes = chunk_bytes
        self.buffers = [BUFFERS.aligned(chunk_bytes) for _ in range(self.DEPTH)]
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for buffer in self.buffers:
            self.free.put(buffer)
        self.ready: queue.SimpleQueue[tuple[mmap.mmap, int] | BaseException | None] = queue.SimpleQueue()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="verify-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        offset = 0
        try:
            while offset < self.size:
                buffer = self.free.get()
                if self.stopping:
                    return
                want = min(self.chunk_bytes, self.size - offset)
                # An aligned read may run past `size`: only the first `want` bytes count.
                got = min(self.disk.read_at(buffer, offset, want), want)
                if got <= 0:
                    break
                self.ready.put((buffer, got))
                offset += got
        except BaseException as exc:  # handed to the consumer, which raises it
            self.ready.put(exc)
            return
        self.ready.put(None)

    def chunks(self) -> Iterator[tuple[mmap.mmap, int]]:
        """(buffer, count) of each chunk in order; raises the read's error where it happened."""
        while True:
            item = self.ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def done_with(self, buffer: mmap.mmap) -> None:
        self.free.put(buffer)

    def close(self) -> None:
        """Stop reading (the consumer may stop early), wait for the thread, give the buffers back."""
        self.stopping = True
        self.free.put(self.buffers[0])  # wakes the thread if it waits for a buffer
        self.thread.join()
        for buffer in self.buffers:
            BUFFERS.give(buffer)
        self.buffers = []


def _read_full(reader: ItemReader, view: memoryview) -> int:
    """Fill `view` from `reader` unless it ends first (readers may return short counts)."""
    done = 0
    while done < len(view):
        got = reader.readinto(view[done:])
        if got == 0:
            break
        done += got
    return done


def hash_reader(reader: ItemReader, *, chunk_bytes: int) -> CopyResult:
    """SHA-256 and size of everything `reader` yields (the original alone, when no copy is kept)."""
    digest, total = hashlib.sha256(), 0
    buffer = BUFFERS.plain(chunk_bytes)
    try:
        while count := reader.readinto(memoryview(buffer)):
            digest.update(memoryview(buffer)[:count])
            total += count
    finally:
        BUFFERS.give(buffer)
    reader.check_unchanged()
    return CopyResult(digest.hexdigest(), total)


def _first_difference(a: bytearray | mmap.mmap, b: bytearray, length: int) -> int:
    for index in range(length):
        if a[index] != b[index]:
            return index
    return length
