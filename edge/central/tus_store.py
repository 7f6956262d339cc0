"""Durable storage of tus uploads on the local file system.

Each upload is two files in one flat directory, named only by a server-made id (32 random lowercase hex
characters; nothing a client sends ever becomes part of a path):

- ``<id>.part``: the bytes received so far, in order;
- ``<id>.info.json``: owner station, total length, the *committed* offset, metadata, creation and expiry
  times, and on completion the SHA-256 of the whole content. Written with
  :func:`edge.durable.files.write_atomic` (temp file, fsync, rename, directory fsync), so a crash
  leaves the old record or the new one.

Commit rule (what "offset" means across a crash): bytes are appended to ``.part`` first; the offset in
``.info.json`` is advanced only after ``.part`` is fsynced (and, for a chunk with ``Upload-Checksum``, after
the chunk verified). So every byte below the committed offset is durable and accepted. Bytes beyond it
belong to a request that never committed: part of a checksummed chunk that was never verified, or data
that may not have reached the disk before a power loss. When an upload is first loaded after a restart
the ``.part`` file is truncated back to the committed offset (fsynced) and that offset is what HEAD
reports; the client re-sends from there. To keep this loss small for long unchecksummed bodies (tus:
"store as much as possible"), such a body is committed every ``commit_every_bytes`` while it streams,
and whatever arrived is committed when it stalls or the client goes away.

The SHA-256 of the whole content is computed while the bytes stream in (one hasher per upload, in
memory, valid at the committed offset; a rolled-back chunk restores the hasher copied at the last
commit). After a restart the hasher is gone, so a completion reads the ``.part`` file once instead.

One SHA-256 pass: besides the per-chunk algorithms of the tus checksum extension (a second hash of
every byte), a chunk may declare ``Upload-Checksum: sha256-prefix <digest>``, the SHA-256 of the
upload's content from its first byte through the end of this chunk. The upload's own hasher answers
it at the end of the body (a copy's digest, no byte hashed twice); a mismatch discards the chunk like
any checksum mismatch. The station sends it (it hashes the file once as it reads it), and the last
chunk's digest is the whole content's SHA-256. After a restart the first such chunk re-reads the
committed part once to rebuild the hasher.

A completed upload's hash is vouched for to the object store (:meth:`TusUploadStore.received`: the
hash, and the file's identity after its final fsync), so registration links the file in without
reading it again; the vouch lives in memory only (after a restart, registration re-hashes).

Bounds: every upload has an expiry, kept in its record and enforced by :meth:`TusUploadStore.purge_expired`
(run periodically by the HTTP layer): an incomplete upload expires ``expire_after_s`` after its last
committed bytes, a complete one ``expire_complete_after_s`` after completion when no registration took
it. A station's uploads may together declare at most ``station_quota_bytes`` (their ``Upload-Length``
sum, counted from the records on disk so a restart forgets nothing); a creation beyond it raises
:class:`QuotaExceededError`, so one station cannot fill the central's disk with uploads it never finishes.

The store is synchronous and thread-safe; the HTTP layer calls it from worker threads. One process owns
a store directory at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

from edge.central.objects import FileIdentity, ReceivedContent
from edge.custody.canonical import canonical_json, parse_json
from edge.durable.files import ensure_private_dir, free_bytes, fsync_dir, write_atomic

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "INFO_FORMAT",
    "PREFIX_SHA256",
    "UPLOAD_ID_RE",
    "ChecksumMismatchError",
    "ChunkChecksum",
    "InsufficientStorageError",
    "InvalidUploadIdError",
    "OffsetMismatchError",
    "QuotaExceededError",
    "TusStoreError",
    "TusUploadStore",
    "UploadBusyError",
    "UploadExpiredError",
    "UploadIncompleteError",
    "UploadInfo",
    "UploadLeasedError",
    "UploadNotFoundError",
    "UploadTooLargeError",
    "UploadWrite",
    "UploadWriteBase",
    "UploadWriteFailedError",
    "is_upload_id",
]

log = logging.getLogger(__name__)

INFO_FORMAT = "evidence-edge/tus-upload/1"
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_PART_SUFFIX = ".part"
_INFO_SUFFIX = ".info.json"
# An info record is a few hundred bytes; a much larger file is damage, not a record.
_MAX_INFO_BYTES = 64 * 1024
_READ_BLOCK_BYTES = 1024 * 1024
# Buffers one pwritev takes at most (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX")))
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# How long a registration holds a complete upload's content once it asked for it (see complete_path).
_LEASE_S = 3600.0


class _Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> _Hasher: ...


def _md5() -> _Hasher:
    # md5 is offered for clients that only speak it; it guards against transport damage, not forgery.
    return hashlib.md5(usedforsecurity=False)


CHECKSUM_ALGORITHMS: Mapping[str, Callable[[], _Hasher]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": _md5,
}


# Upload-Checksum algorithm: SHA-256 of the content from byte 0 through the end of the chunk (see above).
PREFIX_SHA256 = "sha256-prefix"


class TusStoreError(Exception):
    """Base of every error raised by :mod:`edge.central.tus_store`."""


class InvalidUploadIdError(TusStoreError, ValueError):
    """An upload id is not 32 lowercase hex characters."""


class UploadNotFoundError(TusStoreError):
    """No such upload (never created, terminated, purged, or its content is gone)."""


class UploadExpiredError(TusStoreError):
    """The upload is incomplete and past its expiry; it will be purged."""


class UploadBusyError(TusStoreError):
    """Another request is writing to this upload right now."""


class UploadLeasedError(TusStoreError):
    """A registration holds the complete upload's content (its lease): the station may not terminate it
    under the registration."""

    def __init__(self, upload_id: str, leased_until: datetime) -> None:
        super().__init__(f"upload {upload_id} is held by its registration (its lease runs until "
                         f"{_format_time(leased_until)}) and is removed once registered; terminate it "
                         "after that if it is still there")
        self.upload_id = upload_id
        self.leased_until = leased_until


class UploadIncompleteError(TusStoreError):
    """The upload has not received all of its bytes."""


class UploadTooLargeError(TusStoreError):
    """A length above the store's limit, or bytes beyond the upload's declared length."""


class InsufficientStorageError(TusStoreError):
    """The store's file system has not got room for the declared length."""


class QuotaExceededError(TusStoreError):
    """The station's uploads not yet registered already declare as many bytes as its quota allows."""

    def __init__(self, station: str, outstanding: int, length: int, quota: int) -> None:
        super().__init__(
            f"station {station} has uploads of {outstanding} bytes not yet registered; {length} more would "
            f"exceed its quota of {quota} bytes"
        )
        self.station = station
        self.outstanding = outstanding
        self.length = length
        self.quota = quota


class OffsetMismatchError(TusStoreError):
    """A write was requested at another offset than the upload's committed offset."""

    def __init__(self, upload_id: str, expected: int, got: int) -> None:
        super().__init__(f"upload {upload_id}: offset is {expected}, request is at {got}")
        self.expected = expected
        self.got = got


class ChecksumMismatchError(TusStoreError):
    """A chunk's digest differs from the one its request declared; the chunk was discarded."""


class UploadWriteFailedError(TusStoreError):
    """A write handle refuses to write or commit: one of its earlier calls failed (see
    :meth:`UploadWriteBase._failing_for_good`)."""


def is_upload_id(text: str) -> bool:
    return UPLOAD_ID_RE.fullmatch(text) is not None


def _check_id(upload_id: str) -> str:
    if not isinstance(upload_id, str) or not is_upload_id(upload_id):
        raise InvalidUploadIdError(
            f"expected an upload id of 32 lowercase hex characters, got {upload_id!r:.80}"
        )
    return upload_id


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(text: object, name: str) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected a UTC time string, got {type(text).__name__}")
    try:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{name}: expected YYYY-MM-DDTHH:MM:SSZ, got {text!r:.40}") from None


def _whole_seconds(epoch_s: float) -> datetime:
    # Upload-Expires has one-second resolution; keeping the same resolution on disk makes them agree.
    return datetime.fromtimestamp(int(epoch_s), UTC)


@dataclass(frozen=True)
class ChunkChecksum:
    """The digest one request declares for its own body (``Upload-Checksum``)."""

    algorithm: str
    digest: bytes

    def __post_init__(self) -> None:
        if self.algorithm not in CHECKSUM_ALGORITHMS and self.algorithm != PREFIX_SHA256:
            raise ValueError(f"unsupported checksum algorithm {self.algorithm!r}")


@dataclass(frozen=True)
class UploadInfo:
    """What the store knows about one upload, as committed to ``<id>.info.json``."""

    upload_id: str
    station: str
    length: int
    offset: int
    metadata: Mapping[str, str] = field(hash=False)
    created: datetime
    expires: datetime
    # Hex SHA-256 of the whole content; set exactly when the upload is complete.
    sha256: str | None = None

    @property
    def complete(self) -> bool:
        return self.offset == self.length

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INFO_FORMAT,
            "upload_id": self.upload_id,
            "station": self.station,
            "length": self.length,
            "offset": self.offset,
            "metadata": dict(self.metadata),
            "created": _format_time(self.created),
            "expires": _format_time(self.expires),
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, doc: object) -> UploadInfo:
        """Parse a stored record; raises ``ValueError`` naming the first field that is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        expected = {
            "format",
            "upload_id",
            "station",
            "length",
            "offset",
            "metadata",
            "created",
            "expires",
            "sha256",
        }
        if set(doc) != expected:
            raise ValueError(f"expected fields {sorted(expected)}, got {sorted(doc)}")
        if doc["format"] != INFO_FORMAT:
            raise ValueError(f"format: expected {INFO_FORMAT!r}, got {doc['format']!r:.60}")
        upload_id = doc["upload_id"]
        if not isinstance(upload_id, str) or not is_upload_id(upload_id):
            raise ValueError(f"upload_id: expected 32 lowercase hex characters, got {upload_id!r:.60}")
        station = doc["station"]
        if not isinstance(station, str) or not station:
            raise ValueError(f"station: expected a non-empty string, got {station!r:.60}")
        length, offset = doc["length"], doc["offset"]
        for name, value in (("length", length), ("offset", offset)):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {value!r:.40}")
        if offset > length:
            raise ValueError(f"offset {offset} is beyond length {length}")
        metadata = doc["metadata"]
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("metadata: expected an object of strings")
        sha256 = doc["sha256"]
        if offset == length:
            if not isinstance(sha256, str) or re.fullmatch(r"[0-9a-f]{64}", sha256) is None:
                raise ValueError(f"sha256: a complete upload needs 64 lowercase hex, got {sha256!r:.80}")
        elif sha256 is not None:
            raise ValueError("sha256: set on an incomplete upload")
        return cls(
            upload_id=upload_id,
            station=station,
            length=length,
            offset=offset,
            metadata=dict(metadata),
            created=_parse_time(doc["created"], "created"),
            expires=_parse_time(doc["expires"], "expires"),
            sha256=sha256,
        )


@dataclass
class _UploadState:
    info: UploadInfo
    # SHA-256 of content[0:info.offset] while it is known; None after a restart (re-read on completion).
    hasher: _Hasher | None
    busy: bool = False
    # Clock time until which a registration holds the complete content (see complete_path): not purged.
    leased_until: float = 0.0
    # Set at completion when every byte was hashed as it was written (see TusUploadStore.received).
    received: ReceivedContent | None = None


class LeasedRemoval:
    """The removals of a tus upload store over its ``_remove(upload_id, terminating=...)``: registration's
    (done with the content), the station's termination (refused with :class:`UploadLeasedError` while a
    registration holds the complete upload's lease, so the content is never pulled from under it), and
    a removal that leaves a leased upload alone. Each store removes under its own lock (the local store's,
    PostgreSQL's advisory lock), which the lease's claim takes too."""

    def _remove(self, upload_id: str, *, terminating: bool) -> bool:
        raise NotImplementedError

    def remove(self, upload_id: str) -> bool:
        """Delete the upload (registration, done with it); False when there was nothing. Raises
        :class:`UploadBusyError`."""
        return self._remove(upload_id, terminating=False)

    def terminate(self, upload_id: str) -> bool:
        """:meth:`remove` for the station's tus termination (DELETE): refused with
        :class:`UploadLeasedError` while a registration holds the complete upload's lease."""
        return self._remove(upload_id, terminating=True)

    def remove_unleased(self, upload_id: str) -> bool:
        """:meth:`remove` unless a registration holds the complete upload (False then)."""
        try:
            return self._remove(upload_id, terminating=True)
        except UploadLeasedError:
            return False


class TusUploadStore(LeasedRemoval):
    """Uploads under ``root`` (see the module docstring for the layout and the commit rule)."""

    def __init__(
        self,
        root: Path,
        *,
        max_size_bytes: int,
        expire_after_s: float,
        expire_complete_after_s: float | None = None,
        station_quota_bytes: int | None = None,
        commit_every_bytes: int = 16 * 1024 * 1024,
        reserve_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_size_bytes < 0:
            raise ValueError(f"max_size_bytes must be >= 0, got {max_size_bytes}")
        if expire_after_s <= 0:
            raise ValueError(f"expire_after_s must be > 0, got {expire_after_s}")
        if expire_complete_after_s is not None and expire_complete_after_s <= 0:
            raise ValueError(f"expire_complete_after_s must be > 0, got {expire_complete_after_s}")
        if station_quota_bytes is not None and station_quota_bytes < 0:
            raise ValueError(f"station_quota_bytes must be >= 0, got {station_quota_bytes}")
        if commit_every_bytes <= 0:
            raise ValueError(f"commit_every_bytes must be > 0, got {commit_every_bytes}")
        ensure_private_dir(root)
        self._root = root.resolve()
        self._max_size_bytes = max_size_bytes
        self._expire_after_s = float(expire_after_s)
        self._expire_complete_after_s = float(expire_complete_after_s or expire_after_s)
        self._station_quota_bytes = station_quota_bytes
        self._commit_every_bytes = commit_every_bytes
        self._reserve_bytes = reserve_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _UploadState] = {}
        # Every record on disk is in _states once this is set (the quota needs all of them).
        self._all_loaded = False
        # Bytes of creations in progress per station (reserved against the quota before the files exist).
        self._creating: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"TusUploadStore(root={str(self._root)!r}, max_size_bytes={self._max_size_bytes})"

    @property
    def root(self) -> Path:
        return self._root

    @property
    def max_size_bytes(self) -> int:
        return self._max_size_bytes

    @property
    def expire_after_s(self) -> float:
        return self._expire_after_s

    @property
    def expire_complete_after_s(self) -> float:
        return self._expire_complete_after_s

    @property
    def station_quota_bytes(self) -> int | None:
        return self._station_quota_bytes

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _part_path(self, upload_id: str) -> Path:
        return self._root / f"{_check_id(upload_id)}{_PART_SUFFIX}"

    def _info_path(self, upload_id: str) -> Path:
        return self._root / f"{_check_id(upload_id)}{_INFO_SUFFIX}"

    def _expiry(self, *, complete: bool = False) -> datetime:
        """When an upload committed now is purged: incomplete ones after ``expire_after_s`` without new
        bytes, complete ones ``expire_complete_after_s`` after completion if no registration took them."""
        after_s = self._expire_complete_after_s if complete else self._expire_after_s
        return _whole_seconds(self._clock() + after_s)

    # -- lifecycle -------------------------------------------------------------------------------------

    def create(self, station: str, length: int, metadata: Mapping[str, str] | None = None) -> UploadInfo:
        """A new empty upload owned by ``station``, durable before this returns.

        A zero-length upload is complete at once (its SHA-256 is that of no bytes).
        """
        if not station:
            raise ValueError("station must be non-empty")
        if type(length) is not int or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if length > self._max_size_bytes:
            raise UploadTooLargeError(
                f"length {length} exceeds the maximum upload size {self._max_size_bytes}"
            )
        free = free_bytes(self._root)
        if length > free - self._reserve_bytes:
            # Checked per creation only (concurrent uploads share the space), but it refuses the hopeless
            # case up front instead of failing hours into the transfer.
            raise InsufficientStorageError(
                f"length {length} does not fit: {free} bytes free, {self._reserve_bytes} kept in reserve"
            )
        with self._lock:
            self._reserve_quota_locked(station, length)
        try:
            return self._create(station, length, metadata)
        finally:
            with self._lock:
                self._creating[station] -= length
                if not self._creating[station]:
                    del self._creating[station]

    def outstanding_bytes(self, station: str) -> int:
        """The sum of ``Upload-Length`` of ``station``'s uploads that count against its quota: every
        upload in the store except incomplete ones past their expiry (they are only waiting for the
        purge), plus creations in progress."""
        with self._lock:
            return self._outstanding_locked(station)

    def _outstanding_locked(self, station: str) -> int:
        if not self._all_loaded:
            for path in sorted(self._root.iterdir()):
                name = path.name
                if name.endswith(_INFO_SUFFIX) and is_upload_id(name[: -len(_INFO_SUFFIX)]):
                    self._load_locked(name[: -len(_INFO_SUFFIX)])
            self._all_loaded = True
        now = self.now()
        held = sum(
            state.info.length
            for state in self._states.values()
            if state.info.station == station and not self.is_expired(state.info, now)
        )
        return held + self._creating.get(station, 0)

    def _reserve_quota_locked(self, station: str, length: int) -> None:
        if self._station_quota_bytes is not None:
            outstanding = self._outstanding_locked(station)
            if outstanding + length > self._station_quota_bytes:
                raise QuotaExceededError(station, outstanding, length, self._station_quota_bytes)
        self._creating[station] = self._creating.get(station, 0) + length

    def _create(self, station: str, length: int, metadata: Mapping[str, str] | None) -> UploadInfo:
        upload_id = secrets.token_hex(16)
        part = self._part_path(upload_id)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        hasher = hashlib.sha256()
        info = UploadInfo(
            upload_id=upload_id,
            station=station,
            length=length,
            offset=0,
            metadata=dict(metadata or {}),
            created=_whole_seconds(self._clock()),
            expires=self._expiry(complete=length == 0),
            sha256=hasher.hexdigest() if length == 0 else None,
        )
        try:
            self._write_info(info)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        with self._lock:
            self._states[upload_id] = _UploadState(info, hasher)
        log.info("upload %s created for station %s: %d bytes", upload_id, station, length)
        return info

    def get(self, upload_id: str) -> UploadInfo | None:
        """The committed state of ``upload_id``, or None when there is no such upload."""
        with self._lock:
            state = self._load_locked(upload_id)
            return state.info if state else None

    def is_expired(self, info: UploadInfo, now: datetime | None = None) -> bool:
        """An incomplete upload past its expiry (a complete one waits for registration instead)."""
        return not info.complete and (now or self.now()) >= info.expires

    def begin_write(
        self, upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None
    ) -> UploadWrite:
        """Reserve ``upload_id`` for one request that appends at ``offset``.

        Raises :class:`UploadNotFoundError`, :class:`UploadExpiredError`, :class:`UploadBusyError` (another
        request holds it) or :class:`OffsetMismatchError`. The caller must :meth:`UploadWrite.close` it.
        """
        with self._lock:
            state = self._load_locked(upload_id)
            if state is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            if self.is_expired(state.info):
                raise UploadExpiredError(f"upload {upload_id} expired at {_format_time(state.info.expires)}")
            if state.busy:
                raise UploadBusyError(f"upload {upload_id} is being written by another request")
            if offset != state.info.offset:
                raise OffsetMismatchError(upload_id, state.info.offset, offset)
            state.busy = True
        try:
            return UploadWrite(self, state, checksum, self._commit_every_bytes)
        except BaseException:
            with self._lock:
                state.busy = False
            raise

    def complete_path(self, upload_id: str) -> Path:
        """The content file of a complete upload (its first ``length`` bytes are the content).

        The caller (registration) is about to move the content away: the upload is leased to it for
        ``_LEASE_S`` seconds, during which the purge leaves it alone even past its expiry, so an expiry
        can never pull the content from under a registration in progress.
        """
        with self._lock:
            state = self._load_locked(upload_id)
            if state is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            info = state.info
            if not info.complete:
                raise UploadIncompleteError(f"upload {upload_id} has {info.offset} of {info.length} bytes")
            state.leased_until = self._clock() + _LEASE_S
        return self._part_path(upload_id)

    def staged(self, upload_id: str) -> None:
        """Never in a bucket: the content is the local file :meth:`complete_path` gives."""
        return None

    def received(self, upload_id: str) -> ReceivedContent | None:
        """The hash this store computed of a complete upload as its bytes were written, with the content
        file's identity after its final fsync; None when there is none in memory (a restart) or the
        upload is not complete."""
        with self._lock:
            state = self._states.get(_check_id(upload_id))
            return state.received if state is not None and state.info.complete else None

    def release_lease(self, upload_id: str) -> None:
        """End the lease :meth:`complete_path` gave (a registration that failed): the station may terminate
        the upload again, and the purge take it past its expiry."""
        with self._lock:
            state = self._states.get(_check_id(upload_id))
            if state is not None:
                state.leased_until = 0.0

    def _remove(self, upload_id: str, *, terminating: bool) -> bool:
        with self._lock:
            state = self._load_locked(upload_id)
            if state is not None and state.busy:
                raise UploadBusyError(f"upload {upload_id} is being written by another request")
            if terminating and state is not None and state.info.complete \
                    and self._clock() < state.leased_until:
                raise UploadLeasedError(upload_id, _whole_seconds(state.leased_until))
            self._states.pop(upload_id, None)
            removed = self._unlink_files(upload_id)
        if removed:
            fsync_dir(self._root)
            log.info("upload %s removed", upload_id)
        return state is not None or removed

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove uploads past their expiry (and stale leftovers); returns uploads removed.

        Incomplete uploads expire ``expire_after_s`` after their last bytes; complete ones
        ``expire_complete_after_s`` after completion when no registration took them (registration
        removes them otherwise). Uploads being written, and complete ones a registration holds (see
        :meth:`complete_path`), are skipped.
        """
        moment = now or self.now()
        stale_before = moment.timestamp() - self._expire_after_s
        removed = 0
        touched = False
        for path in sorted(self._root.iterdir()):
            name = path.name
            if name.endswith(_INFO_SUFFIX) and is_upload_id(name[: -len(_INFO_SUFFIX)]):
                upload_id = name[: -len(_INFO_SUFFIX)]
                with self._lock:
                    state = self._load_locked(upload_id)
                    if state is None:
                        # Unreadable record (already logged): removed once it is as old as an expiry.
                        if _mtime(path) < stale_before:
                            touched |= self._unlink_files(upload_id)
                            removed += 1
                        continue
                    if state.busy or not self._purge_due(state, moment):
                        continue
                    self._states.pop(upload_id, None)
                    touched |= self._unlink_files(upload_id)
                removed += 1
                if state.info.complete:
                    log.warning(
                        "upload %s of station %s: complete (%d bytes, sha256 %s) but never registered; "
                        "expired at %s: purged",
                        upload_id,
                        state.info.station,
                        state.info.length,
                        state.info.sha256,
                        _format_time(state.info.expires),
                    )
                else:
                    log.info(
                        "upload %s of station %s expired at %s with %d of %d bytes: purged",
                        upload_id,
                        state.info.station,
                        _format_time(state.info.expires),
                        state.info.offset,
                        state.info.length,
                    )
            elif name.endswith(_PART_SUFFIX) and is_upload_id(name[: -len(_PART_SUFFIX)]):
                # A .part without its record is a creation that crashed before the record was written.
                upload_id = name[: -len(_PART_SUFFIX)]
                with self._lock:
                    orphan = upload_id not in self._states and not self._info_path(upload_id).exists()
                    if orphan and _mtime(path) < stale_before:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                            touched = True
                            log.info("orphan upload file %s purged", name)
            elif name.startswith(".") and name.endswith(".tmp") and _mtime(path) < stale_before:
                # A temp file of an atomic write that crashed before its rename.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    touched = True
        if touched:
            fsync_dir(self._root)
        return removed

    # -- internals -------------------------------------------------------------------------------------

    def _purge_due(self, state: _UploadState, moment: datetime) -> bool:
        if moment < state.info.expires:
            return False
        return not (state.info.complete and moment.timestamp() < state.leased_until)

    def _unlink_files(self, upload_id: str) -> bool:
        removed = False
        for path in (self._info_path(upload_id), self._part_path(upload_id)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed

    def _write_info(self, info: UploadInfo) -> None:
        write_atomic(self._info_path(info.upload_id), canonical_json(info.to_dict()), mode=0o600)

    def _load_locked(self, upload_id: str) -> _UploadState | None:
        """The in-memory state, loading and reconciling the files on first use (caller holds the lock)."""
        _check_id(upload_id)
        state = self._states.get(upload_id)
        if state is not None:
            return state
        info_path = self._info_path(upload_id)
        try:
            with info_path.open("rb") as handle:
                raw = handle.read(_MAX_INFO_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            if len(raw) > _MAX_INFO_BYTES:
                raise ValueError(f"record is larger than {_MAX_INFO_BYTES} bytes")
            info = UploadInfo.from_dict(parse_json(raw))
            if info.upload_id != upload_id:
                raise ValueError(f"record names upload {info.upload_id}")
        except ValueError as exc:
            log.error("upload %s: unreadable record %s: %s", upload_id, info_path, exc)
            return None
        reconciled = self._reconcile(info)
        if reconciled is None:
            return None
        state = _UploadState(reconciled, hashlib.sha256() if reconciled.offset == 0 else None)
        self._states[upload_id] = state
        return state

    def _reconcile(self, info: UploadInfo) -> UploadInfo | None:
        """Make ``.part`` agree with the committed offset after a restart (see the commit rule)."""
        part = self._part_path(info.upload_id)
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            if info.complete:
                # The content was taken (into the object store) and a crash came before the record went.
                log.warning("upload %s: complete record without content: removing the record", info.upload_id)
                self._info_path(info.upload_id).unlink(missing_ok=True)
                fsync_dir(self._root)
                return None
            log.error("upload %s: content file missing; restarting it at offset 0", info.upload_id)
            size = -1
        if size == info.offset:
            return info
        durable = max(0, min(size, info.offset))
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, durable)
            os.fsync(fd)
        finally:
            os.close(fd)
        if durable == info.offset:
            log.info(
                "upload %s: %d uncommitted bytes after offset %d discarded after a restart",
                info.upload_id,
                size - durable,
                durable,
            )
            return info
        log.error(
            "upload %s: content file holds %d bytes, the record says %d were committed; resuming at %d",
            info.upload_id,
            max(size, 0),
            info.offset,
            durable,
        )
        info = dataclasses.replace(info, offset=durable, sha256=None)
        self._write_info(info)
        return info

    def _hash_file(self, upload_id: str, length: int) -> str:
        """SHA-256 of the first ``length`` bytes of the content file (the restart path)."""
        hasher = hashlib.sha256()
        remaining = length
        with self._part_path(upload_id).open("rb") as handle:
            while remaining > 0:
                block = handle.read(min(_READ_BLOCK_BYTES, remaining))
                if not block:
                    raise TusStoreError(f"upload {upload_id}: content file ends {remaining} bytes early")
                hasher.update(block)
                remaining -= len(block)
        log.info(
            "upload %s: SHA-256 computed by re-reading %d bytes (hasher lost in a restart)", upload_id, length
        )
        return hasher.hexdigest()

    def _set_state(
        self,
        state: _UploadState,
        info: UploadInfo,
        hasher: _Hasher | None,
        received: ReceivedContent | None = None,
    ) -> None:
        with self._lock:
            state.info = info
            state.hasher = hasher
            state.received = received

    def _prefix_hasher(self, upload_id: str, length: int) -> _Hasher:
        """A SHA-256 hasher fed with the first ``length`` bytes of the content file (after a restart)."""
        hasher = hashlib.sha256()
        remaining = length
        with self._part_path(upload_id).open("rb") as handle:
            while remaining > 0:
                block = handle.read(min(_READ_BLOCK_BYTES, remaining))
                if not block:
                    raise TusStoreError(f"upload {upload_id}: content file ends {remaining} bytes early")
                hasher.update(block)
                remaining -= len(block)
        log.info("upload %s: hasher rebuilt by re-reading %d bytes (lost in a restart)", upload_id, length)
        return hasher

    def _release(self, state: _UploadState) -> None:
        with self._lock:
            state.busy = False


def _pwrite_all(fd: int, pieces: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """Write ``pieces`` back to back at ``offset`` of ``fd``, however the kernel splits the writes (at most
    ``_IOV_MAX`` buffers a call, and a call may write less than asked)."""
    views = [memoryview(piece) for piece in pieces if len(piece)]
    while views:
        written = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += written
        done = 0
        while done < len(views) and written >= len(views[done]):
            written -= len(views[done])
            done += 1
        del views[:done]
        if written:
            views[0] = views[0][written:]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class UploadWriteBase(ABC):
    """What every store's write handle shares (:class:`UploadWrite` here, the shared store's
    :class:`~edge.central.postgres.tus_shared_store.SharedUploadWrite`): the upload it appends to as last
    committed (``_info``), the checksum its request declared (``_checksum``), and closing on ``with``."""

    _info: UploadInfo
    _checksum: ChunkChecksum | None
    # The first exception a write or commit call of this handle raised (see _failing_for_good).
    _failed: BaseException | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the upload for the next request (idempotent); uncommitted bytes are dropped."""

    @property
    def upload_id(self) -> str:
        return self._info.upload_id

    @property
    def length(self) -> int:
        return self._info.length

    @property
    def info(self) -> UploadInfo:
        """The last committed state."""
        return self._info

    @property
    @abstractmethod
    def offset(self) -> int:
        """End of the bytes received so far (committed or not)."""

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; raises :class:`UploadTooLargeError` (writing nothing) past the length."""

    def write_pieces(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append ``pieces`` in order; raises :class:`UploadTooLargeError` (writing nothing) past the
        length."""
        with self._failing_for_good("write"):
            self._check_room(sum(len(piece) for piece in pieces))
            for piece in pieces:
                self.write(piece)

    @contextlib.contextmanager
    def _failing_for_good(self, call: str) -> Iterator[None]:
        """Around every call that writes or commits (``call`` names it): refused with
        :class:`UploadWriteFailedError` once an earlier such call (or a discard) raised, and its own
        exception remembered. A call that raised may have stored, hashed or committed part of what it
        was given (a short write, a stored part whose commit failed, a record written but not synced),
        so nothing after it can extend the upload: only :meth:`discard` and :meth:`close` still run, and
        the upload stays at what was committed before. The HTTP layer stops at the first failure too
        (``edge.central.tus._WriteBehind``); this is the store's own guard, whoever calls it."""
        if self._failed is not None:
            earlier = self._failed
            raise UploadWriteFailedError(
                f"upload {self.upload_id}: {call} refused: an earlier call of this write failed "
                f"({type(earlier).__name__}: {str(earlier)[:300]}); nothing more is stored or committed, "
                f"the upload stays at offset {self._info.offset}"
            ) from earlier
        with self._remembering_failure():
            yield

    @contextlib.contextmanager
    def _remembering_failure(self) -> Iterator[None]:
        """Around a discard: never refused (it writes nothing new), but its failure is remembered (the
        bytes it should have dropped may still be there, so no later call may commit them)."""
        try:
            yield
        except BaseException as exc:
            if self._failed is None:
                self._failed = exc
            raise

    def _check_room(self, size: int) -> None:
        if self.offset + size > self._info.length:
            raise UploadTooLargeError(
                f"upload {self.upload_id}: {self.offset + size} bytes would exceed its length "
                f"{self._info.length}"
            )

    def _new_chunk_hasher(self) -> _Hasher | None:
        """A hasher of this request's body alone, for a per-chunk algorithm (none for the prefix digest,
        which the upload's own hasher answers)."""
        if self._checksum is None or self._checksum.algorithm == PREFIX_SHA256:
            return None
        return CHECKSUM_ALGORITHMS[self._checksum.algorithm]()

    def _mismatch(self, got: bytes, *, at: int, received: int, whole: bool) -> ChecksumMismatchError:
        """The refusal of the ``received``-byte chunk at offset ``at`` whose digest is ``got``;
        ``whole`` when the digest covers the content from byte 0 (the prefix digest)."""
        assert self._checksum is not None
        covers = f"bytes 0..{at + received}" if whole else "chunk"
        return ChecksumMismatchError(
            f"upload {self.upload_id}: {self._checksum.algorithm} of the {received}-byte chunk at "
            f"offset {at} ({covers}) is {got.hex()}, the request declared {self._checksum.digest.hex()}")


class UploadWrite(UploadWriteBase):
    """One request's append to one upload. Synchronous; the HTTP layer runs it in a worker thread.

    Call :meth:`write` for each block, then exactly one of :meth:`finish` (the body ended normally),
    :meth:`keep` (it ended early: stall, disconnect) or :meth:`discard`, and always :meth:`close`. Once
    a write or commit call raised, every later one raises :class:`UploadWriteFailedError` (see
    :meth:`UploadWriteBase._failing_for_good`).
    """

    def __init__(
        self,
        store: TusUploadStore,
        state: _UploadState,
        checksum: ChunkChecksum | None,
        commit_every_bytes: int,
    ) -> None:
        self._store = store
        self._state = state
        self._info = state.info
        self._checksum = checksum
        self._commit_every_bytes = commit_every_bytes
        self._chunk_hasher = self._new_chunk_hasher()
        if state.hasher is None and checksum is not None and checksum.algorithm == PREFIX_SHA256:
            # The prefix digest needs the hasher at the committed offset: rebuilt once after a restart.
            store._set_state(state, state.info, store._prefix_hasher(state.info.upload_id, state.info.offset))
        # Private copies: the state's hasher stays at the committed offset until a commit replaces it.
        self._whole = state.hasher.copy() if state.hasher is not None else None
        self._whole_at_commit = state.hasher
        self._committed = state.info.offset
        self._offset = state.info.offset
        # Written with pwritev at the offset the write keeps, so the file position never matters.
        self._fd: int | None = os.open(store._part_path(self._info.upload_id), os.O_WRONLY | os.O_CLOEXEC)

    @property
    def offset(self) -> int:
        """End of the bytes written so far (committed or not)."""
        return self._offset

    def _fd_or_raise(self) -> int:
        if self._fd is None:
            raise TusStoreError(f"upload {self.upload_id}: write used after close")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; raises :class:`UploadTooLargeError` (writing nothing) past the length."""
        self.write_pieces((data,))

    def write_pieces(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append ``pieces`` in order with one ``pwritev`` (no joined copy of them); raises
        :class:`UploadTooLargeError` (writing nothing) past the length."""
        fd = self._fd_or_raise()
        with self._failing_for_good("write"):
            size = sum(len(piece) for piece in pieces)
            self._check_room(size)
            _pwrite_all(fd, pieces, self._offset)
            for piece in pieces:
                if self._chunk_hasher is not None:
                    self._chunk_hasher.update(piece)
                if self._whole is not None:
                    self._whole.update(piece)
            self._offset += size
            log.debug("upload %s: wrote %d bytes, now at %d", self.upload_id, size, self._offset)
            if self._checksum is None and self._offset - self._committed >= self._commit_every_bytes:
                self._commit()

    def finish(self) -> UploadInfo:
        """End of the body: verify the chunk checksum (if any) and commit.

        On a mismatch the chunk is truncated away, the offset stays where it was, and
        :class:`ChecksumMismatchError` is raised.
        """
        self._fd_or_raise()
        with self._failing_for_good("finish"):
            if self._checksum is not None:
                hasher = self._whole if self._checksum.algorithm == PREFIX_SHA256 else self._chunk_hasher
                assert hasher is not None  # the prefix hasher is rebuilt in __init__ when a restart lost it
                got = hasher.digest()
                if not hmac.compare_digest(got, self._checksum.digest):
                    received = self._offset - self._committed
                    self._rollback()
                    raise self._mismatch(got, at=self._committed, received=received,
                                         whole=hasher is self._whole)
            return self._commit()

    def keep(self) -> UploadInfo:
        """The body ended early: keep what arrived when it needs no verification, else drop it."""
        self._fd_or_raise()
        with self._failing_for_good("keep"):
            if self._checksum is not None:
                return self.discard()
            return self._commit()

    def discard(self) -> UploadInfo:
        """Drop everything since the last commit (after a failed call, whatever it may have written)."""
        self._fd_or_raise()
        with self._remembering_failure():
            if self._uncommitted_in_file():
                self._rollback()
        return self._info

    def close(self) -> None:
        """Release the upload for the next request (idempotent); uncommitted bytes are dropped."""
        if self._fd is None:
            return
        try:
            if self._uncommitted_in_file():
                self._rollback()
        finally:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            finally:
                self._store._release(self._state)

    def _uncommitted_in_file(self) -> bool:
        """Whether the file holds bytes past the committed offset: the ones written since, or after a
        failed call whatever it wrote without counting it (a short ``pwritev``, then an error)."""
        if self._offset != self._committed:
            return True
        return self._failed is not None and os.fstat(self._fd_or_raise()).st_size != self._committed

    def _rollback(self) -> None:
        fd = self._fd_or_raise()
        # The file's end, not the offset kept here: a failed call may have written more than it counted.
        dropped = max(self._offset, os.fstat(fd).st_size) - self._committed
        os.ftruncate(fd, self._committed)
        os.fsync(fd)
        self._offset = self._committed
        self._whole = self._whole_at_commit.copy() if self._whole_at_commit is not None else None
        self._chunk_hasher = self._new_chunk_hasher()
        self._store._set_state(self._state, self._info, self._whole_at_commit)
        log.info(
            "upload %s: %d uncommitted bytes discarded, offset stays %d",
            self.upload_id,
            dropped,
            self._committed,
        )

    def _commit(self) -> UploadInfo:
        fd = self._fd_or_raise()
        with self._failing_for_good("commit"):
            return self._commit_written(fd)

    def _commit_written(self, fd: int) -> UploadInfo:
        if self._offset == self._committed:
            return self._info
        # Once per chunk (the uplink's 8 MiB PATCH): this fsync, the record's atomic write (its own fsync,
        # the rename, the directory's fsync) and the request around it cost about 0.2 CPU s per GiB, 1.5 ms
        # a PATCH (upload.py --chunk-mb 32 against 8). Needed: the offset HEAD answers is the durable one (the
        # commit rule in the module docstring), and a station resumes from it after either side crashes.
        os.fsync(fd)
        sha256: str | None = None
        received: ReceivedContent | None = None
        if self._offset == self._info.length:
            if self._whole is not None:
                sha256 = self._whole.hexdigest()
            else:
                sha256 = self._store._hash_file(self.upload_id, self._info.length)
            # Every byte is hashed and durable, and this file is never opened for writing again.
            received = ReceivedContent(sha256, FileIdentity.of(os.fstat(fd)))
        info = dataclasses.replace(
            self._info, offset=self._offset, expires=self._store._expiry(complete=sha256 is not None),
            sha256=sha256,
        )
        self._store._write_info(info)
        self._info = info
        self._committed = self._offset
        self._whole_at_commit = self._whole.copy() if self._whole is not None else None
        self._store._set_state(self._state, info, None if sha256 else self._whole_at_commit, received)
        log.debug("upload %s: committed offset %d of %d", self.upload_id, self._offset, self._info.length)
        return info
