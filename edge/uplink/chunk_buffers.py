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

Memory: at most ``max_idle`` buffers wait in the pool, and only while uploads come (:meth:`ChunkBuffers.
in_use`): once none has run for ``keep_idle_s`` (30 s) the idle ones are let go, so a station with nothing to
send holds no chunk buffers (review revs13b: 2 x concurrency x chunk_mb MiB otherwise stayed resident for the
life of the uplink), while files sent one after another still reuse them. The ones in use are bounded by
the uploads in flight (a chunk on the wire and one read ahead each). Used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

__all__ = ["ChunkBuffers"]

log = logging.getLogger(__name__)

# How long idle buffers are kept once no upload runs: the next file of a queue being drained starts well
# within it; a station with nothing more to send lets them go.
KEEP_IDLE_S = 30.0


class ChunkBuffers:
    """Buffers of ``buffer_bytes`` (the chunk size), at most ``max_idle`` of them kept between chunks."""

    def __init__(self, buffer_bytes: int, *, max_idle: int, keep_idle_s: float = KEEP_IDLE_S) -> None:
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be >= 1, got {buffer_bytes!r}")
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle!r}")
        self.buffer_bytes = buffer_bytes
        self.max_idle = max_idle
        self._idle: list[bytearray] = []
        self.keep_idle_s = keep_idle_s
        self._users = 0  # uploads running (in_use)
        self._release: asyncio.TimerHandle | None = None  # lets the idle ones go once none has run a while
        self.made = 0
        """Buffers allocated so far (reuse shows as fewer buffers than chunks)."""
        self.dropped_in_use = 0
        """Buffers given back while something still had a view of them: dropped, not reused."""

    def __repr__(self) -> str:
        return f"ChunkBuffers(buffer_bytes={self.buffer_bytes}, idle={len(self._idle)}, made={self.made})"

    @property
    def idle(self) -> int:
        return len(self._idle)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """While an upload runs. When the last running one ends, the idle buffers are let go after
        ``keep_idle_s`` unless another upload starts first."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._release = asyncio.get_running_loop().call_later(self.keep_idle_s, self.let_go)

    def let_go(self) -> None:
        """Drop the idle buffers (none is in use: nothing holds a view of them)."""
        self._release = None
        if self._users == 0:
            self._idle.clear()

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
