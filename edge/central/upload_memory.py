"""What a receiver remembers of the uploads it took bytes for, bounded (review 13 #7).

The shared tus store (:mod:`edge.central.postgres.tus_shared_store`) keeps, per upload, the running
SHA-256 of the bytes this receiver wrote and the hash of each upload it completed. With several receivers
an upload is often finished, registered or purged on another one, which never tells this one: the entries
must leave on their own. Each is kept until its upload's expiry (after that the upload is refused or
purged anyway) and at most ``capacity`` of them, the one expiring first evicted first. Losing an entry is
always safe: the store then reads the upload's parts back from the bucket once, as a receiver that never
saw it does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["UploadMemory"]

_V = TypeVar("_V")


class UploadMemory(Generic[_V]):
    """Values by upload id, each until an epoch time, at most ``capacity``; thread-safe.

    Every entry of one memory is kept for the same span after it is put (the caller's expiry rule), so
    the order of the last puts is the order of expiry: expired entries are dropped from the front, and at
    capacity the front (the entry expiring first) makes room.
    """

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, _V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired(self._clock())
            return len(self._entries)

    def __repr__(self) -> str:
        return f"UploadMemory(capacity={self.capacity}, held={len(self._entries)})"

    def put(self, upload_id: str, value: _V, until_s: float) -> None:
        """Remember ``value`` for ``upload_id`` until ``until_s`` (epoch seconds), replacing what was."""
        with self._lock:
            self._drop_expired(self._clock())
            self._entries.pop(upload_id, None)
            self._entries[upload_id] = (until_s, value)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, upload_id: str) -> _V | None:
        """The value, None when none is held or it expired."""
        with self._lock:
            entry = self._entries.get(upload_id)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[upload_id]
                return None
            return entry[1]

    def pop(self, upload_id: str) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)

    def _drop_expired(self, now_s: float) -> None:
        while self._entries:
            first_until, _ = next(iter(self._entries.values()))
            if first_until > now_s:
                return
            self._entries.popitem(last=False)
