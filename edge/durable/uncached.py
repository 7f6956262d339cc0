"""Reading what the disk holds, not what the page cache remembers (invariant 2).

A verification re-read that the page cache answers proves nothing: the cache still holds the bytes
that were written even when the disk lost or garbled them. Advice alone (`posix_fadvise(DONTNEED)`)
is not enough either: the kernel keeps pages that another process has mapped, locked or dirtied. So a
stored copy is re-read

* with O_DIRECT, from aligned buffers: the read goes to the device whatever is cached; or, where the
  file system refuses O_DIRECT (at open or at the first read),
* after dropping the file's clean pages and proving with mincore(2) that none of the range is still
  resident; when some are, the read is refused (:class:`CacheBypassError`) rather than trusted;
* on a memory file system (tmpfs, ramfs) the page cache *is* the storage, so there is nothing to
  bypass; the method says so.

The method used is returned with the read, so the ledger can say how each copy was verified.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
from enum import StrEnum
from pathlib import Path

ALIGN_BYTES = 4096  # O_DIRECT needs offset, length and buffer aligned to the logical block size
_MINCORE_WINDOW_BYTES = 256 << 20  # bounds the residency vector (one byte per page) and the mapping
_MEMORY_FS_MAGIC = {0x01021994: "tmpfs", 0x858458F6: "ramfs"}
_LOW_BIT = bytes(code & 1 for code in range(256))  # mincore's vector byte -> its residency bit


class ReadMethod(StrEnum):
    O_DIRECT = "o_direct"
    DROPPED_AND_CHECKED = "cache_dropped_mincore_checked"
    MEMORY_FS = "memory_file_system"


class CacheBypassError(OSError):
    """The file's pages stay in the page cache and the file system refuses O_DIRECT: a read would
    not prove what the disk holds."""


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.fstatfs.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux; only f_type is read.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def memory_file_system(fd: int) -> str | None:
    """"tmpfs" or "ramfs" when `fd` lives on one (its page cache is its storage), else None."""
    info = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(info)) != 0:
        return None
    return _MEMORY_FS_MAGIC.get(info.f_type & 0xFFFFFFFF)


def resident_pages(fd: int, size: int) -> int:
    """How many pages of the first `size` bytes of `fd` are in the page cache (mincore(2)).

    Mapping a file faults nothing in and mincore reads only the kernel's tables: this looks without
    touching. Works in windows so memory stays bounded whatever the file size.
    """
    page = mmap.PAGESIZE
    resident = 0
    offset = 0
    while offset < size:
        length = min(_MINCORE_WINDOW_BYTES, size - offset)
        address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        if address in (None, _MAP_FAILED):
            code = ctypes.get_errno()
            raise OSError(code, f"mmap for mincore: {os.strerror(code)}")
        try:
            pages = (length + page - 1) // page
            vector = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, length, vector) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"mincore: {os.strerror(code)}")
            resident += bytes(vector).translate(_LOW_BIT).count(1)  # bit 0: resident; in C, not per page
        finally:
            _libc.munmap(address, length)
        offset += length
    return resident


class UncachedFile:
    """A stored file opened for a verification read that comes from its storage, never from the cache.

    Reads must go through :meth:`read_at` with a buffer from :func:`aligned_buffer`. `method` says how
    the cache is bypassed and may change from O_DIRECT to the checked fallback at the first read.
    """

    def __init__(self, path: Path, *, prefer_direct: bool = True) -> None:
        self.path = path
        self.method = ReadMethod.O_DIRECT
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = -1
        if prefer_direct:
            try:
                self.fd = os.open(path, flags | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file system refuses O_DIRECT
                    raise
        if self.fd < 0:
            self.fd = os.open(path, flags)
            try:
                self._fall_back()
            except BaseException:
                os.close(self.fd)
                raise

    def _fall_back(self) -> None:
        """No O_DIRECT: drop the clean cached pages and prove that none is left, or refuse."""
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        if flags & os.O_DIRECT:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        memory_fs = memory_file_system(self.fd)
        if memory_fs is not None:
            self.method = ReadMethod.MEMORY_FS
            return
        size = os.fstat(self.fd).st_size
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        still = resident_pages(self.fd, size)
        if still:
            raise CacheBypassError(
                errno.EBUSY,
                f"{still} page(s) of the file stay in the page cache after dropping it (mapped or locked "
                "by another process) and the file system refuses O_DIRECT: a re-read would not come "
                "from the disk",
            )
        self.method = ReadMethod.DROPPED_AND_CHECKED

    def read_at(self, buffer: mmap.mmap, offset: int, length: int) -> int:
        """Read up to `length` bytes at `offset` (a multiple of ALIGN_BYTES) into the start of `buffer`;
        returns the count, short only at the end of the file."""
        want = min(len(buffer), _round_up(length))
        view = memoryview(buffer)[:want]
        try:
            return os.preadv(self.fd, [view], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self.method is not ReadMethod.O_DIRECT:
                raise
        # Some file systems take the O_DIRECT open and refuse the read.
        self._fall_back()
        return os.preadv(self.fd, [view], offset)

    def drop_cache(self) -> None:
        """Leave no cached evidence behind (the fallback read went through the cache)."""
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> UncachedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def aligned_buffer(size_bytes: int) -> mmap.mmap:
    """An anonymous mapping: page-aligned, as O_DIRECT needs; `size_bytes` rounded up to ALIGN_BYTES."""
    return mmap.mmap(-1, _round_up(max(size_bytes, 1)))


def _round_up(count: int) -> int:
    return -(-count // ALIGN_BYTES) * ALIGN_BYTES
