"""Read and write buffers shared by every copy and verification of the process.

Each item used to allocate fresh buffers (three for the copy's writer, two for the verification
read): eight bays of short clips then spent a good share of their CPU time faulting in and zeroing
pages of buffers that each served a few milliseconds. Buffers are handed back here when an item is
done and reused by the next one.

Memory stays bounded: buffers in use are bounded by the items in flight (each holds a fixed number),
and at most `max_idle_bytes` of idle buffers are kept; the rest are released. A reused buffer still
holds the previous item's bytes: callers only ever look at the bytes a read put there (`[:count]`).
"""

from __future__ import annotations

import mmap
import threading

from edge.durable.uncached import ALIGN_BYTES, aligned_buffer

DEFAULT_MAX_IDLE_BYTES = 32 << 20

Buffer = mmap.mmap | bytearray


class BufferPool:
    """Page-aligned buffers (as O_DIRECT needs) and plain bytearrays (which compare with one memcmp),
    reused; thread-safe."""

    def __init__(self, max_idle_bytes: int = DEFAULT_MAX_IDLE_BYTES) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[tuple[type, int], list[Buffer]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def aligned(self, size_bytes: int) -> mmap.mmap:
        """A page-aligned buffer of `size_bytes` rounded up to ALIGN_BYTES, its content undefined."""
        size = -(-max(size_bytes, 1) // ALIGN_BYTES) * ALIGN_BYTES
        reused = self._reuse(mmap.mmap, size)
        return reused if isinstance(reused, mmap.mmap) else aligned_buffer(size)

    def plain(self, size_bytes: int) -> bytearray:
        """A bytearray of exactly `size_bytes`, its content undefined."""
        reused = self._reuse(bytearray, size_bytes)
        return reused if isinstance(reused, bytearray) else bytearray(size_bytes)

    def give(self, buffer: Buffer) -> None:
        """Hand `buffer` back; its user must not touch it afterwards."""
        size = len(buffer)
        with self._lock:
            if self._idle_bytes + size <= self.max_idle_bytes:
                self._idle.setdefault((type(buffer), size), []).append(buffer)
                self._idle_bytes += size
        # Otherwise dropped: released once the last view of it is gone (closing it here could fail
        # while its user still holds a memoryview of it).

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return self._idle_bytes

    def _reuse(self, kind: type, size: int) -> Buffer | None:
        with self._lock:
            idle = self._idle.get((kind, size))
            if not idle:
                return None
            self._idle_bytes -= size
            return idle.pop()


# The process's pool: copies and verifications of every source and bay draw from it.
BUFFERS = BufferPool()
