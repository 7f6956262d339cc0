"""Chunk buffers the tus client reuses from one chunk to the next, a bounded number of them.

Why: a fresh ``bytearray(8 MiB)`` per chunk is zero-filled by CPython (a memset of every byte before
the read overwrites it), its pages are faulted in anew, and glibc hands such a large block back to the
kernel when it is freed: measured with perf during the upload benchmark, about 3 % of the station's
CPU in memset and more in page faults. A buffer that was used once has none of these costs.

The rule that makes reuse safe: a buffer goes back to the pool only when nothing can read it any more.
The client gives a chunk's buffer back when the request that sent it has returned (the blocking
sender's worker thread is then done with it), or when a read into it has ended; never after a
cancellation, whose worker thread may still be reading or writing it. And whatever the caller
believes, :meth:`ChunkBuffers.give_back` looks: a ``bytearray`` cannot be resized while any
``memoryview`` of it is alive (the event loop's TLS transport may keep slices of a body it has not
written yet, a thread may be in the middle of a send), so a buffer that refuses a one-byte resize is
still seen by someone and is dropped rather than reused (garbage-collected once they let go).

Every view handed out covers exactly the chunk's bytes, and the chunk's reader fills all of them or
fails: a short last chunk never carries the tail of an earlier, longer one.

Memory: at most ``max_idle`` buffers wait in the pool; the ones in use are bounded by the uploads in
flight (a chunk on the wire and one read ahead each). Used from the event loop only.
"""

from __future__ import annotations

import logging

__all__ = ["ChunkBuffers"]

log = logging.getLogger(__name__)


class ChunkBuffers:
    """Buffers of ``buffer_bytes`` (the chunk size), at most ``max_idle`` of them kept between chunks."""

    def __init__(self, buffer_bytes: int, *, max_idle: int) -> None:
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be >= 1, got {buffer_bytes!r}")
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle!r}")
        self.buffer_bytes = buffer_bytes
        self.max_idle = max_idle
        self._idle: list[bytearray] = []
        self.made = 0
        """Buffers allocated so far (reuse shows as fewer buffers than chunks)."""
        self.dropped_in_use = 0
        """Buffers given back while something still had a view of them: dropped, not reused."""

    def __repr__(self) -> str:
        return f"ChunkBuffers(buffer_bytes={self.buffer_bytes}, idle={len(self._idle)}, made={self.made})"

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self, size: int) -> memoryview:
        """A view of exactly ``size`` bytes (<= ``buffer_bytes``) of a buffer no one else uses. Its
        content is whatever was there: the caller overwrites all of it before anything reads it."""
        if not 0 <= size <= self.buffer_bytes:
            raise ValueError(f"a chunk of {size} bytes does not fit buffers of {self.buffer_bytes}")
        if self._idle:
            buffer = self._idle.pop()
        else:
            # Zero-filled by CPython, once per buffer, not once per chunk.
            buffer = bytearray(self.buffer_bytes)
            self.made += 1
        return memoryview(buffer)[:size]

    def give_back(self, view: memoryview) -> None:
        """The chunk in ``view`` is done with: its buffer is reused, unless some other view of it is
        still alive (then it is dropped) or the pool already holds ``max_idle``."""
        try:
            buffer = view.obj
            view.release()
        except (BufferError, ValueError):
            # Exported while in use by a call in another thread: still seen.
            self._drop()
            return
        if not isinstance(buffer, bytearray) or len(buffer) != self.buffer_bytes:
            return
        if not _unseen(buffer):
            self._drop()
            return
        if len(self._idle) < self.max_idle:
            self._idle.append(buffer)

    def _drop(self) -> None:
        self.dropped_in_use += 1
        log.debug("a chunk buffer still in use elsewhere was not reused")


def _unseen(buffer: bytearray) -> bool:
    """Whether no ``memoryview`` of ``buffer`` is alive: CPython refuses to resize a ``bytearray`` while
    one is (BufferError). A one-byte shrink and regrow within the allocation: no copy, no allocation;
    the last byte is zeroed, which the next read overwrites anyway."""
    try:
        buffer.pop()
    except BufferError:
        return False
    buffer.append(0)
    return True
