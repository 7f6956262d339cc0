"""SHA-256 prefix digests of a stored copy, recorded when it is verified, so that the upload need not hash it.

The verification re-read of a stored copy (:func:`edge.ingest.copy.reread_and_compare`) hashes the copy as the
disk holds it: the bytes the uplink later sends. On that same pass :class:`PrefixRecorder` keeps the digest of
bytes ``0..k*step`` at every multiple of ``step`` (the station's ``[uplink] chunk_mb``) and of ``0..size`` at
the end (a copy of the hasher's state at each boundary: 32 bytes a step, no byte hashed twice). The tus
client sends them as its ``sha256-prefix`` checksums instead of hashing every byte again
(:mod:`edge.uplink.tus_client`); the central still checks each chunk against its own running hash of the
bytes it received, so what goes is checked against the digests of what was verified at offload.

They are a derived cache, not evidence: kept in the station's ``state.db`` (table ``prefix_digests``,
written in the transaction that records the item ``verified``: :mod:`edge.ingest.repository`), never in
the manifest, and checked when loaded (the last one must be the item's sealed hash). Lost or wrong, they
cost a hash: the uplink then hashes as it did without them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

DIGEST_BYTES: Final = 32
# The most digests one item keeps (1 MiB steps of a 1 TiB item: 32 MiB): bounds what the re-read holds
# in memory, what state.db keeps, and what a damaged row can make the uplink allocate. The recorder keeps
# none for a copy needing more (it is hashed as it is sent) and the loader refuses more: one rule for both
# (:func:`recordable`), so nothing is stored that is never used.
MAX_DIGESTS: Final = 1 << 20


def digest_count(size: int, step_bytes: int) -> int:
    """How many digests a copy of ``size`` bytes has at ``step_bytes``: one per step boundary inside it,
    plus the end (an empty copy has one: the SHA-256 of nothing)."""
    return max(1, -(-size // step_bytes))


def recordable(size: int, step_bytes: int) -> bool:
    """Whether a copy of ``size`` bytes has its digests kept at ``step_bytes``: by the recorder (and
    :func:`edge.ingest.repository.record_prefix_digests`) and the loader alike."""
    return step_bytes >= 1 and size >= 0 and digest_count(size, step_bytes) <= MAX_DIGESTS


@dataclass(frozen=True, slots=True)
class PrefixDigests:
    """The SHA-256 of bytes ``0..min(k * step_bytes, size)`` for k = 1, 2, ... (the last one is the whole
    copy's hash), concatenated in ``digests``."""

    step_bytes: int
    size: int
    digests: bytes

    def __post_init__(self) -> None:
        if self.step_bytes < 1 or self.size < 0:
            raise ValueError(f"prefix digests need a step >= 1 and a size >= 0, found {self.step_bytes}, "
                             f"{self.size}")
        expected = digest_count(self.size, self.step_bytes)
        if len(self.digests) != expected * DIGEST_BYTES:
            raise ValueError(f"{self.size} bytes at a step of {self.step_bytes} have {expected} prefix "
                             f"digests, found {len(self.digests)} bytes of them")

    def __repr__(self) -> str:
        return f"PrefixDigests(step_bytes={self.step_bytes}, size={self.size}, count={self.count})"

    @property
    def count(self) -> int:
        return len(self.digests) // DIGEST_BYTES

    @property
    def whole(self) -> bytes:
        """The SHA-256 of the whole copy (its first ``size`` bytes)."""
        return self.digests[-DIGEST_BYTES:]

    def serves(self, chunk_bytes: int) -> bool:
        """Whether every boundary of chunks of ``chunk_bytes`` (aligned to them) has a digest here."""
        return chunk_bytes >= self.step_bytes and chunk_bytes % self.step_bytes == 0

    def at(self, end: int) -> bytes | None:
        """The digest of bytes ``0..end``, or None when ``end`` is neither a step boundary nor the end."""
        if end == self.size:
            return self.whole
        if 0 < end < self.size and end % self.step_bytes == 0:
            k = end // self.step_bytes
            return self.digests[(k - 1) * DIGEST_BYTES : k * DIGEST_BYTES]
        return None


class PrefixRecorder:
    """SHA-256 of a stream with its digest kept at every multiple of ``step_bytes`` and at the end."""

    def __init__(self, step_bytes: int) -> None:
        if step_bytes < 1:
            raise ValueError(f"the prefix step must be >= 1 byte, found {step_bytes}")
        self.step_bytes = step_bytes
        self._hasher = hashlib.sha256()
        self._done = 0
        self._kept = bytearray()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            to_boundary = self.step_bytes - self._done % self.step_bytes
            piece = view[:to_boundary]
            self._hasher.update(piece)
            self._done += len(piece)
            if self._done % self.step_bytes == 0 and len(self._kept) < MAX_DIGESTS * DIGEST_BYTES:
                self._kept += self._hasher.copy().digest()  # the state stays: hashing goes on from it
            view = view[len(piece):]

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def finish(self) -> PrefixDigests | None:
        """The digests of what was hashed: each boundary's, and the end's when it is not a boundary; None
        when there are more than the loader uses (:func:`recordable`: the upload hashes such a copy)."""
        if not recordable(self._done, self.step_bytes):
            return None
        kept = bytes(self._kept)
        if self._done == 0 or self._done % self.step_bytes:
            kept += self._hasher.digest()
        return PrefixDigests(self.step_bytes, self._done, kept)
