"""tus uploads shared by any number of receivers: records in PostgreSQL, bytes in the S3 bucket.

Chosen by the central when its index is PostgreSQL and its objects an S3 bucket; the embedded setup
(SQLite and a local folder) keeps :class:`~edge.central.tus_store.TusUploadStore`. Same contract
(:class:`~edge.central.tus_contract.TusStore`), so an upload created on one receiver continues on any
other, and a receiver that dies mid-request only costs the station a resume (HEAD, then the next PATCH).

- **Records** (``tus_uploads``, migration 0005): owner station, length, committed offset, metadata,
  creation and expiry, the SHA-256 once complete, a registration's lease. **Parts**
  (``tus_upload_parts``): each committed part's number, offset, size and object version.
- **Bytes**: each part is an object ``uploads/<id>/<part>`` (:mod:`edge.central.tus_staging`) of
  ``part_size`` bytes (at least S3's 5 MiB minimum), except the upload's last.
- **Commit rule**: the committed offset is the bytes of the committed parts. A request's bytes go up as
  parts while they stream; without ``Upload-Checksum`` each part commits as it is stored, with one the
  request's parts commit together once the chunk verified (a mismatch deletes them: 460, nothing kept).
  The tail of a body that does not fill a part is not kept unless it ends the upload: the answer's
  ``Upload-Offset`` says where the client goes on, and it re-sends from there. So a station's chunk size
  should be a multiple of the part size (``[uploads] s3_part_mb``; the station's ``uplink.chunk_mb``
  default of 8 and the part default of 8 agree), or every chunk re-sends its tail.
- **A commit whose outcome is unknown** (psycopg raised: the COMMIT may have been applied and its answer
  lost) answers 503 and deletes none of its parts blindly: the database is read back (on the write's own
  connection if it still works, else on a new one once the old session gave the upload's lock back) and
  only part versions that ``tus_upload_parts`` does not reference are deleted; when that cannot be told,
  none (the upload's removal or purge deletes every version under it). HEAD reports what was kept.
- **One writer at a time**, across receivers: a write holds PostgreSQL's session advisory lock of the
  upload on its own connection; another request gets :class:`UploadBusyError` (409 upload_busy). A
  receiver that dies loses its connection and with it the lock, so the resume on another receiver is
  not refused.
- **The running SHA-256** of each upload stays in the process that received its bytes. A receiver that
  picks up an upload at an offset it has no hasher for reads the committed parts back from the bucket
  once to rebuild it (the cost of a resume on another receiver); the usual path hashes each byte once.
  On completion the hash is recorded and vouched for in this process's memory: registration here makes
  the content object by server-side copies of the parts (:meth:`S3ObjectStore.put_copies`, no byte
  through the central) without reading them; registration on another receiver reads the parts once and
  compares first.
- **Quota and expiry** are counted from the records, so every receiver sees every upload; the purge
  (any receiver, periodically) deletes the parts and the record of uploads past their expiry that no
  request holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import queue
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from edge.central.objects import ObjectMismatch, ObjectStoreError, Retention
from edge.central.s3_objects import CopySource, S3ObjectStore
from edge.central.tus_contract import UploadStoreUnavailableError
from edge.central.tus_staging import TusStaging
from edge.central.tus_store import (
    PREFIX_SHA256,
    ChunkChecksum,
    LeasedRemoval,
    OffsetMismatchError,
    QuotaExceededError,
    TusStoreError,
    UploadBusyError,
    UploadExpiredError,
    UploadIncompleteError,
    UploadInfo,
    UploadLeasedError,
    UploadNotFoundError,
    UploadTooLargeError,
    UploadWriteBase,
    is_upload_id,
)
from edge.central.upload_memory import UploadMemory
from edge.custody.canonical import canonical_json, parse_json

__all__ = ["SharedTusStore", "SharedUploadWrite", "StagedUpload"]

log = logging.getLogger(__name__)

Connection = psycopg.Connection[tuple[Any, ...]]
_S3_MIN_PART_BYTES = 5 << 20
# How long a registration holds a complete upload's content once it asked for it (as the local store).
_LEASE_S = 3600.0
# Connections kept open for later requests (more are opened while many requests write at once).
_IDLE_CONNECTIONS = 4
# How long the settling of a commit whose outcome is unknown waits for the failed session to end (its
# lock given back) before it gives up and deletes none of the parts (SharedTusStore._committed_parts).
_SETTLE_WAIT_S = 5.0
# Uploads whose running hash (and, apart, whose completed hash) this receiver remembers at most (review 13
# #7): each entry also leaves at its upload's expiry; one evicted costs a read-back from the bucket.
REMEMBERED_UPLOADS = 10_000
_COLUMNS = "upload_id, station, length, committed, metadata, created, expires, sha256"


def _lock_key(name: str) -> int:
    """A 64-bit advisory lock key of an upload or a station's quota (signed, as PostgreSQL takes it)."""
    return int.from_bytes(hashlib.sha256(f"edge-tus:{name}".encode()).digest()[:8], "big", signed=True)


def _nothing(upload_id: str) -> None:
    """The default :attr:`SharedTusStore.before_purge_drop`."""


def _whole_seconds(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(int(epoch_s), UTC)


def _info(row: tuple[Any, ...]) -> UploadInfo:
    upload_id, station, length, committed, metadata, created, expires, sha256 = row
    parsed = parse_json(str(metadata).encode("utf-8"))
    if not isinstance(parsed, dict):
        raise ValueError(f"upload {upload_id}: metadata is not an object")
    return UploadInfo(upload_id=str(upload_id), station=str(station), length=int(length),
                      offset=int(committed), metadata={str(k): str(v) for k, v in parsed.items()},
                      created=created.astimezone(UTC),
                      expires=expires.astimezone(UTC), sha256=None if sha256 is None else str(sha256))


@dataclass(frozen=True)
class _Part:
    number: int
    start: int
    size: int
    version_id: str


class _Connections:
    """Connections of this receiver's upload store (autocommit), lent to one caller at a time."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()

    def take(self) -> Connection:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if not conn.broken and not conn.closed:
                return conn

    def give_back(self, conn: Connection) -> None:
        if conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE \
                or self._idle.qsize() >= _IDLE_CONNECTIONS:
            with contextlib.suppress(Exception):
                conn.close()
            return
        self._idle.put(conn)

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[Connection]:
        conn = self.take()
        try:
            yield conn
        finally:
            self.give_back(conn)

    def close(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


class SharedTusStore(LeasedRemoval):
    """Uploads in PostgreSQL and the bucket (see the module docstring). Blocking and thread-safe: the HTTP
    layer calls it from worker threads."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        objects: S3ObjectStore,
        *,
        part_size_bytes: int,
        max_size_bytes: int,
        expire_after_s: float,
        expire_complete_after_s: float | None = None,
        station_quota_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        remembered_uploads: int = REMEMBERED_UPLOADS,
    ) -> None:
        if part_size_bytes < _S3_MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be at least {_S3_MIN_PART_BYTES} (S3's part minimum), "
                             f"got {part_size_bytes}")
        if max_size_bytes < 0 or expire_after_s <= 0:
            raise ValueError("max_size_bytes must be >= 0 and expire_after_s > 0")
        self._connections = _Connections(connect)
        self.objects = objects
        self.staging = TusStaging(objects)
        self.part_size = part_size_bytes
        self._max_size_bytes = max_size_bytes
        self._expire_after_s = float(expire_after_s)
        self._expire_complete_after_s = float(expire_complete_after_s or expire_after_s)
        self._station_quota_bytes = station_quota_bytes
        self._clock = clock
        # upload id -> (offset, SHA-256 hasher of the content up to it): this receiver's running hashes,
        # until the upload's expiry (an upload finished or purged on another receiver never says so here).
        self._hashers: UploadMemory[tuple[int, Any]] = UploadMemory(remembered_uploads, clock)
        # upload id -> SHA-256 this receiver computed as the bytes arrived (complete uploads), until the
        # upload's expiry and a registration's lease after it.
        self._vouched: UploadMemory[str] = UploadMemory(remembered_uploads, clock)
        # Called by the purge with an upload it is about to drop, holding the upload's lock (tests
        # interleave a registration's claim there).
        self.before_purge_drop: Callable[[str], None] = _nothing

    def __repr__(self) -> str:
        return f"SharedTusStore(bucket={self.objects.bucket!r}, part_size={self.part_size})"

    def close(self) -> None:
        self._connections.close()

    # -- the TusStore properties ---------------------------------------------------------------------

    @property
    def max_size_bytes(self) -> int:
        return self._max_size_bytes

    @property
    def station_quota_bytes(self) -> int | None:
        return self._station_quota_bytes

    @property
    def expire_after_s(self) -> float:
        return self._expire_after_s

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _expiry(self, *, complete: bool) -> datetime:
        after_s = self._expire_complete_after_s if complete else self._expire_after_s
        return _whole_seconds(self._clock() + after_s)

    def is_expired(self, info: UploadInfo, now: datetime | None = None) -> bool:
        """An incomplete upload past its expiry (a complete one waits for registration instead)."""
        return not info.complete and (now or self.now()) >= info.expires

    # -- records -------------------------------------------------------------------------------------

    def outstanding_bytes(self, station: str) -> int:
        with self._connections.borrowed() as conn:
            return self._outstanding(conn, station)

    def _outstanding(self, conn: Connection, station: str) -> int:
        row = conn.execute(
            "SELECT coalesce(sum(length), 0) FROM tus_uploads WHERE station = %s "
            "AND NOT (committed < length AND expires <= %s)", (station, self.now())).fetchone()
        return 0 if row is None else int(row[0])

    def create(self, station: str, length: int, metadata: Mapping[str, str] | None = None) -> UploadInfo:
        """A new empty upload owned by ``station``; the quota is decided under the station's lock, so two
        receivers creating at once cannot both take its last bytes."""
        if not station:
            raise ValueError("station must be non-empty")
        if type(length) is not int or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if length > self._max_size_bytes:
            raise UploadTooLargeError(
                f"length {length} exceeds the maximum upload size {self._max_size_bytes}")
        info = UploadInfo(
            upload_id=secrets.token_hex(16), station=station, length=length, offset=0,
            metadata=dict(metadata or {}), created=_whole_seconds(self._clock()),
            expires=self._expiry(complete=length == 0),
            sha256=hashlib.sha256().hexdigest() if length == 0 else None,
        )
        with self._connections.borrowed() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"quota:{station}"),))
            if self._station_quota_bytes is not None:
                outstanding = self._outstanding(conn, station)
                if outstanding + length > self._station_quota_bytes:
                    raise QuotaExceededError(station, outstanding, length, self._station_quota_bytes)
            conn.execute(
                f"INSERT INTO tus_uploads ({_COLUMNS}) VALUES (%s, %s, %s, 0, %s, %s, %s, %s)",
                (info.upload_id, station, length, canonical_json(dict(info.metadata)).decode("utf-8"),
                 info.created, info.expires, info.sha256))
        self._hashers.put(info.upload_id, (0, hashlib.sha256()), info.expires.timestamp())
        if length == 0:
            self._vouched.put(info.upload_id, hashlib.sha256().hexdigest(),
                              info.expires.timestamp() + _LEASE_S)
        log.info("upload %s created for station %s: %d bytes", info.upload_id, station, length)
        return info

    def get(self, upload_id: str) -> UploadInfo | None:
        if not is_upload_id(upload_id):
            return None
        with self._connections.borrowed() as conn:
            return self._get(conn, upload_id)

    @staticmethod
    def _get(conn: Connection, upload_id: str) -> UploadInfo | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM tus_uploads WHERE upload_id = %s",
                           (upload_id,)).fetchone()
        return None if row is None else _info(row)

    @staticmethod
    def _parts(conn: Connection, upload_id: str) -> list[_Part]:
        rows = conn.execute("SELECT part, start_offset, size, version_id FROM tus_upload_parts "
                            "WHERE upload_id = %s ORDER BY part", (upload_id,)).fetchall()
        return [_Part(int(n), int(start), int(size), str(version)) for n, start, size, version in rows]

    def sources(self, upload_id: str, parts: list[_Part]) -> list[CopySource]:
        return [self.staging.copy_source(upload_id, p.number, p.version_id, p.size) for p in parts]

    # -- writing -------------------------------------------------------------------------------------

    @staticmethod
    def _try_lock(conn: Connection, upload_id: str) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(upload_id),)).fetchone()
        return bool(row and row[0])

    @staticmethod
    def _unlock(conn: Connection, upload_id: str) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(upload_id),))

    def begin_write(
        self, upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None
    ) -> SharedUploadWrite:
        """Hold ``upload_id`` for one request appending at ``offset`` (see TusUploadStore.begin_write)."""
        conn = self._connections.take()
        locked = False
        try:
            if not is_upload_id(upload_id):
                raise UploadNotFoundError(f"no upload {upload_id[:80]!r}")
            locked = self._try_lock(conn, upload_id)
            if not locked:
                raise UploadBusyError(f"upload {upload_id} is being written by another request")
            info = self._get(conn, upload_id)
            if info is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            if self.is_expired(info):
                raise UploadExpiredError(f"upload {upload_id} expired at {info.expires.isoformat()}")
            if offset != info.offset:
                raise OffsetMismatchError(upload_id, info.offset, offset)
            parts = self._parts(conn, upload_id)
            hasher = self._hasher_at(upload_id, info.offset, parts)
            return SharedUploadWrite(self, conn, info, parts, hasher, checksum)
        except BaseException:
            if locked:
                self._unlock(conn, upload_id)
            self._connections.give_back(conn)
            raise

    def _hasher_at(self, upload_id: str, offset: int, parts: list[_Part]) -> Any:
        """This receiver's running hash at ``offset``, or one rebuilt from the committed parts."""
        kept = self._hashers.get(upload_id)
        if kept is not None and kept[0] == offset:
            return kept[1].copy()
        hasher = hashlib.sha256()
        if offset == 0:
            return hasher
        since = 0
        if kept is not None and any(part.start == kept[0] for part in parts):
            # This receiver hashed the upload up to a part boundary before another went on: read the rest.
            since, hasher = kept[0], kept[1].copy()
        try:
            read = since + self.staging.read_into(
                self.sources(upload_id, [part for part in parts if part.start >= since]), hasher)
        except FileNotFoundError as exc:
            raise TusStoreError(
                f"upload {upload_id}: a committed part is missing from the bucket: {exc}") from None
        except ObjectStoreError as exc:
            raise UploadStoreUnavailableError(f"upload {upload_id}: {exc}") from None
        if read != offset:
            raise TusStoreError(f"upload {upload_id}: its parts hold {read} bytes, the record says {offset}")
        log.info("upload %s: running SHA-256 rebuilt by reading %d of its %d committed bytes back from the "
                 "bucket (the upload continues on this receiver)", upload_id, read - since, offset)
        return hasher

    def _remember(
        self, upload_id: str, offset: int, hasher: Any, sha256: str | None, expires: datetime
    ) -> None:
        if sha256 is not None:
            self._hashers.pop(upload_id)
            self._vouched.put(upload_id, sha256, expires.timestamp() + _LEASE_S)
        else:
            self._hashers.put(upload_id, (offset, hasher.copy()), expires.timestamp())

    def _release(self, conn: Connection, upload_id: str) -> None:
        self._unlock(conn, upload_id)
        self._connections.give_back(conn)

    def _committed_parts(
        self, conn: Connection, upload_id: str, pending: list[_Part]
    ) -> tuple[UploadInfo | None, list[_Part]] | None:
        """After a commit of ``pending`` whose outcome is unknown (it raised): the upload's record as the
        database holds it and those of ``pending`` its parts reference; None when that cannot be told now.

        ``conn`` is the write's own connection. Still usable, it holds the upload's lock and its
        transaction ended (the server answered, with an error: rolled back): it reads the truth. Broken,
        the server may still hold the session, its transaction and the lock (the answer was lost, not
        the COMMIT): it is closed, and a new connection waits up to ``_SETTLE_WAIT_S`` for the upload's
        lock, which the old session keeps until it ended (committed or rolled back for good). A lock
        not given in time (that session lingers, or another request writes the upload now) or a
        database that does not answer: None."""
        numbers = [part.number for part in pending]
        query = ("SELECT part, version_id FROM tus_upload_parts WHERE upload_id = %s AND part = ANY(%s)")
        try:
            if not conn.broken and not conn.closed \
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                info = self._get(conn, upload_id)
                rows = conn.execute(query, (upload_id, numbers)).fetchall()
            else:
                with contextlib.suppress(Exception):
                    conn.close()
                with self._connections.borrowed() as fresh, fresh.transaction():
                    fresh.execute(f"SET LOCAL lock_timeout = '{int(_SETTLE_WAIT_S * 1000)}ms'")
                    fresh.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(upload_id),))
                    info = self._get(fresh, upload_id)
                    rows = fresh.execute(query, (upload_id, numbers)).fetchall()
        except psycopg.Error as exc:
            log.warning("upload %s: whether its commit of parts %d-%d was applied cannot be read back now "
                        "(%s: %s); those parts are kept (the upload's removal or purge deletes them if "
                        "nothing references them)", upload_id, numbers[0], numbers[-1],
                        type(exc).__name__, str(exc).strip()[:200])
            return None
        referenced = {(int(number), str(version)) for number, version in rows}
        return info, [part for part in pending if (part.number, part.version_id) in referenced]

    # -- registration --------------------------------------------------------------------------------

    def complete_path(self, upload_id: str) -> Path:
        """Never a local file here: registration takes :meth:`staged` instead."""
        raise UploadIncompleteError(f"upload {upload_id}: its content is in the bucket, not in a local file")

    def received(self, upload_id: str) -> None:
        """No local file to vouch for (the vouch of this store is :meth:`staged`'s)."""
        return None

    def staged(self, upload_id: str) -> StagedUpload:
        """The complete upload's parts, leased to the registration that asked (the purge leaves them).

        The claim holds the upload's lock, which the purge (on any receiver) holds from its last look at
        the upload to the deletion of its record (review 13 #6): either the purge drops the upload before
        the claim reads it (no such upload), or the claim's lease is what the purge sees."""
        with self._connections.borrowed() as conn, conn.transaction():
            self._hold_for_claim(conn, upload_id)
            info = self._get(conn, upload_id)
            if info is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            if not info.complete or info.sha256 is None:
                raise UploadIncompleteError(
                    f"upload {upload_id} has {info.offset} of {info.length} bytes")
            conn.execute("UPDATE tus_uploads SET leased_until = %s WHERE upload_id = %s",
                         (_whole_seconds(self._clock() + _LEASE_S), upload_id))
            parts = self._parts(conn, upload_id)
        vouched = self._vouched.get(upload_id) == info.sha256
        return StagedUpload(self, info, self.sources(upload_id, parts), vouched=vouched)

    def release_lease(self, upload_id: str) -> None:
        """End the lease :meth:`staged` gave (a registration that failed): the station may terminate the
        upload again, and the purge take it past its expiry."""
        if not is_upload_id(upload_id):
            return
        with self._connections.borrowed() as conn, conn.transaction():
            self._hold_for_claim(conn, upload_id)
            conn.execute("UPDATE tus_uploads SET leased_until = NULL WHERE upload_id = %s", (upload_id,))

    def _remove(self, upload_id: str, *, terminating: bool) -> bool:
        if not is_upload_id(upload_id):
            return False
        with self._connections.borrowed() as conn:
            if not self._try_lock(conn, upload_id):
                raise UploadBusyError(f"upload {upload_id} is being written by another request")
            try:
                if terminating:
                    self._refuse_under_lease(conn, upload_id)
                existed = self._drop(conn, upload_id)
            finally:
                self._unlock(conn, upload_id)
        if existed:
            log.info("upload %s removed", upload_id)
        return existed

    def _drop(self, conn: Connection, upload_id: str) -> bool:
        """Parts first, then the record: a failure in between leaves a record the purge finds again."""
        try:
            self.staging.delete_upload(upload_id)
        except ObjectStoreError as exc:
            raise UploadStoreUnavailableError(f"upload {upload_id}: {exc}") from None
        self._hashers.pop(upload_id)
        self._vouched.pop(upload_id)
        cursor = conn.execute("DELETE FROM tus_uploads WHERE upload_id = %s", (upload_id,))
        return cursor.rowcount > 0

    def _refuse_under_lease(self, conn: Connection, upload_id: str) -> None:
        """Raise :class:`UploadLeasedError` when a registration's lease on the complete upload runs now."""
        row = conn.execute("SELECT leased_until FROM tus_uploads WHERE upload_id = %s AND committed = length "
                           "AND leased_until > %s", (upload_id, self.now())).fetchone()
        if row is not None:
            raise UploadLeasedError(upload_id, row[0].astimezone(UTC))

    @staticmethod
    def _hold_for_claim(conn: Connection, upload_id: str) -> None:
        """The upload's lock until the claim's transaction ends. Waits for a purge (or a request) holding
        it: a purge takes seconds, a request is bounded by the HTTP layer's timeouts; the caller is off the
        event loop."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(upload_id),))

    @staticmethod
    def _purge_due(conn: Connection, upload_id: str, moment: datetime) -> bool:
        """Whether the upload is past its expiry at ``moment`` and no registration holds a lease on it."""
        row = conn.execute("SELECT 1 FROM tus_uploads WHERE upload_id = %s AND expires <= %s AND "
                           "(committed < length OR leased_until IS NULL OR leased_until <= %s)",
                           (upload_id, moment, moment)).fetchone()
        return row is not None

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove uploads past their expiry that no request holds (on whichever receiver); returns how
        many."""
        moment = now or self.now()
        removed = 0
        with self._connections.borrowed() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM tus_uploads WHERE expires <= %s AND (committed < length OR "
                "leased_until IS NULL OR leased_until <= %s) ORDER BY expires LIMIT 1000",
                (moment, moment)).fetchall()
            for row in rows:
                info = _info(row)
                if not self._try_lock(conn, info.upload_id):
                    continue  # a request writes to it now (it will not be expired after)
                try:
                    # Looked at again under the upload's lock, which a registration's claim takes too: a
                    # lease given since the rows were read keeps the upload.
                    if not self._purge_due(conn, info.upload_id, moment):
                        continue
                    self.before_purge_drop(info.upload_id)
                    self._drop(conn, info.upload_id)
                except UploadStoreUnavailableError as exc:
                    log.warning("upload %s expired but could not be purged now: %s", info.upload_id, exc)
                    continue
                finally:
                    self._unlock(conn, info.upload_id)
                removed += 1
                if info.complete:
                    log.warning("upload %s of station %s: complete (%d bytes, sha256 %s) but never "
                                "registered; expired at %s: purged", info.upload_id, info.station,
                                info.length, info.sha256, info.expires.isoformat())
                else:
                    log.info("upload %s of station %s expired at %s with %d of %d bytes: purged",
                             info.upload_id, info.station, info.expires.isoformat(), info.offset, info.length)
        return removed


class StagedUpload:
    """A complete upload's parts in the bucket, for registration to make the content object from."""

    def __init__(self, store: SharedTusStore, info: UploadInfo, sources: list[CopySource], *,
                 vouched: bool) -> None:
        self.store_of = store
        self.info = info
        self.sources = sources
        # This receiver hashed every byte as it arrived (no read needed before the copy).
        self.vouched = vouched

    def store(self, sha256: str, retention: Retention) -> None:
        """Make object ``sha256`` from the parts by server-side copies, locked as ``retention`` says. Raises
        the object store's errors (:class:`ObjectMismatch` when the parts do not hash to ``sha256``)."""
        objects = self.store_of.objects
        try:
            if not self.vouched:
                # Completed on another receiver: its hash is a record, not this process's own pass.
                hasher = hashlib.sha256()
                size = self.store_of.staging.read_into(self.sources, hasher)
                if not hmac.compare_digest(hasher.hexdigest(), sha256):
                    log.warning("upload %s: its parts hash to %s, not to %s", self.info.upload_id,
                                hasher.hexdigest(), sha256)
                    raise ObjectMismatch(sha256, hasher.hexdigest(), size)
                log.info("upload %s: completed on another receiver; its %d bytes were read back and hashed "
                         "once before registration", self.info.upload_id, size)
            objects.put_copies(self.sources, sha256, retention)
        except FileNotFoundError:
            # An earlier attempt made the object and failed before its commit removed the record.
            problem = objects.verify(sha256)
            if problem is not None:
                raise ObjectMismatch(sha256, f"nothing usable ({problem})", 0) from None
            log.info("object %s was already made by an earlier attempt; using it", sha256)
            objects.retain(sha256, retention)


class SharedUploadWrite(UploadWriteBase):
    """One request's append to one shared upload (the :class:`~edge.central.tus_contract.UploadAppend`
    contract): bytes collect into parts of the store's part size, each stored as it fills; see the module
    docstring for when they commit. Once a write, a part's storing or a commit raised, every later write
    and commit raises :class:`~edge.central.tus_store.UploadWriteFailedError` (see
    :meth:`UploadWriteBase._failing_for_good`): the upload stays at what was committed before, or, when
    the failed call was a commit whose answer was lost, at what that commit applied (see the module
    docstring: its parts are kept when the database references them)."""

    def __init__(self, store: SharedTusStore, conn: Connection, info: UploadInfo, parts: list[_Part],
                 hasher: Any, checksum: ChunkChecksum | None) -> None:
        self._store = store
        self._conn: Connection | None = conn
        self._info = info
        self._parts = parts
        self._checksum = checksum
        self._part_size = store.part_size
        # The running SHA-256: at the committed offset, at the last stored part's end, at every byte.
        self._at_commit = hasher
        self._at_part_end = hasher.copy()
        self._whole = hasher.copy()
        self._chunk = self._new_chunk_hasher()
        self._pending: list[_Part] = []  # stored, not committed (a checksummed chunk not yet verified)
        self._buffer = bytearray()
        # A commit of ``_pending`` raised: PostgreSQL may have applied it (its answer lost), so those parts
        # are deleted only once the database is read back and does not reference them (_drop_uncommitted).
        self._commit_unsettled = False

    @property
    def _stored_end(self) -> int:
        return self._pending[-1].start + self._pending[-1].size if self._pending else self._info.offset

    @property
    def offset(self) -> int:
        """End of the bytes received so far (committed or not)."""
        return self._stored_end + len(self._buffer)

    def _connection(self) -> Connection:
        if self._conn is None:
            raise TusStoreError(f"upload {self.upload_id}: write used after close")
        return self._conn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._connection()
        with self._failing_for_good("write"):
            self._check_room(len(data))
            view = memoryview(data)
            while view:
                piece = view[: self._part_size - len(self._buffer)]
                view = view[len(piece):]
                self._buffer += piece
                self._whole.update(piece)
                if self._chunk is not None:
                    self._chunk.update(piece)
                if len(self._buffer) == self._part_size:
                    self._store_part()
                    if self._checksum is None:
                        self._commit()

    def _store_part(self) -> None:
        with self._failing_for_good("store a part"):
            self._store_buffer()

    def _store_buffer(self) -> None:
        number = (self._pending[-1].number if self._pending else len(self._parts)) + 1
        start = self._stored_end
        # The buffer itself goes to the bucket (no copy of the part: botocore sends a bytearray as it is,
        # and a retried PUT sends the same object again), and a new one collects the next part: the one
        # handed over is never changed, and only one part of the request is held at a time.
        data, self._buffer = self._buffer, bytearray()
        try:
            version = self._store.staging.put_part(self.upload_id, number, data)
        except BaseException as exc:
            self._buffer = data  # not stored: still this request's uncommitted bytes (discard drops them)
            if isinstance(exc, ObjectStoreError):
                raise UploadStoreUnavailableError(f"upload {self.upload_id}: {exc}") from None
            raise
        self._pending.append(_Part(number, start, len(data), version))
        self._at_part_end = self._whole.copy()

    def finish(self) -> UploadInfo:
        """End of the body: verify the chunk checksum (if any), then commit its whole parts (and its tail
        when it ends the upload). A mismatch drops the chunk and raises :class:`ChecksumMismatchError`."""
        self._connection()
        with self._failing_for_good("finish"):
            if self._checksum is not None:
                hasher = self._whole if self._checksum.algorithm == PREFIX_SHA256 else self._chunk
                assert hasher is not None  # a per-chunk algorithm has its chunk hasher
                got = hasher.digest()
                if not hmac.compare_digest(got, self._checksum.digest):
                    received = self.offset - self._info.offset
                    at = self._info.offset
                    self.discard()
                    raise self._mismatch(got, at=at, received=received, whole=self._chunk is None)
            return self._commit_ending()

    def keep(self) -> UploadInfo:
        """The body ended early: keep its whole parts when it needs no verification, else drop it."""
        self._connection()
        with self._failing_for_good("keep"):
            if self._checksum is not None:
                return self.discard()
            return self._commit_ending()

    def _commit_ending(self) -> UploadInfo:
        if self._buffer and self.offset == self._info.length:
            self._store_part()  # the upload's last part may be short
        elif self._buffer:
            log.info("upload %s: %d bytes after offset %d do not fill a part of %d bytes and do not end the "
                     "upload: not kept (the client re-sends them from Upload-Offset)", self.upload_id,
                     len(self._buffer), self._stored_end, self._part_size)
            self._buffer.clear()
            self._whole = self._at_part_end.copy()
        return self._commit()

    def discard(self) -> UploadInfo:
        """Drop everything since the last commit (stored parts of it are deleted; after a commit that
        raised, only those the database turns out not to reference: see :meth:`_settle_commit`)."""
        with self._remembering_failure():
            return self._drop_uncommitted()

    def _drop_uncommitted(self) -> UploadInfo:
        doomed = self._settle_commit() if self._commit_unsettled else self._pending
        for part in doomed:
            self._store.staging.delete_version(self._store.staging.key(self.upload_id, part.number),
                                               part.version_id)
        if self._pending or self._buffer:
            log.info("upload %s: %d uncommitted bytes discarded, offset stays %d", self.upload_id,
                     self.offset - self._info.offset, self._info.offset)
        self._pending.clear()
        self._buffer.clear()
        self._whole = self._at_commit.copy()
        self._at_part_end = self._at_commit.copy()
        self._chunk = self._new_chunk_hasher()
        return self._info

    def _settle_commit(self) -> list[_Part]:
        """After a commit that raised: the pending parts the database does not reference (to delete); the
        ones it does are this handle's committed parts from now on. None deleted when it cannot be told."""
        pending = self._pending
        self._commit_unsettled = False
        found = None if self._conn is None else self._store._committed_parts(self._conn, self.upload_id,
                                                                              pending)
        if found is None:
            self._pending = []
            return []
        info, committed = found
        if info is not None and committed == pending and info.offset == self._stored_end:
            # The commit was applied: its answer was lost. The running hash at its end is this upload's.
            log.warning("upload %s: the commit to offset %d was applied though its answer was lost; its "
                        "%d parts are kept", self.upload_id, info.offset, len(pending))
            self._parts += pending
            self._info = info
            self._at_commit = self._at_part_end.copy()
            self._store._remember(self.upload_id, info.offset, self._at_commit, info.sha256, info.expires)
            self._pending = []
            return []
        if committed:
            log.warning("upload %s: after a failed commit the database references %d of its %d parts "
                        "(record at offset %s): those are kept", self.upload_id, len(committed), len(pending),
                        "none" if info is None else info.offset)
        return [part for part in pending if part not in committed]

    def close(self) -> None:
        """Drop what was not committed and release the upload for the next request (idempotent)."""
        conn = self._conn
        if conn is None:
            return
        try:
            if self._pending or self._buffer:
                with contextlib.suppress(Exception):
                    self.discard()
        finally:
            self._conn = None
            self._store._release(conn, self.upload_id)

    def _commit(self) -> UploadInfo:
        conn = self._connection()
        with self._failing_for_good("commit"):
            try:
                return self._commit_stored(conn)
            except psycopg.Error as exc:
                # The COMMIT may have reached the server and its answer been lost: the outcome is unknown,
                # so neither "kept" nor "not kept" may be said, and the parts are not deleted blindly.
                self._commit_unsettled = bool(self._pending)
                raise UploadStoreUnavailableError(
                    f"upload {self.upload_id}: the database failed during the commit of bytes "
                    f"{self._info.offset}-{self._stored_end} ({type(exc).__name__}); whether it was "
                    f"applied is not known here: HEAD reports the offset kept") from None

    def _commit_stored(self, conn: Connection) -> UploadInfo:
        if not self._pending:
            return self._info
        end = self._stored_end
        complete = end == self._info.length
        sha256 = self._at_part_end.hexdigest() if complete else None
        expires = self._store._expiry(complete=complete)
        with conn.transaction():
            cursor = conn.execute(
                "UPDATE tus_uploads SET committed = %s, expires = %s, sha256 = %s WHERE upload_id = %s "
                "AND committed = %s", (end, expires, sha256, self.upload_id, self._info.offset))
            if cursor.rowcount != 1:
                raise UploadNotFoundError(f"upload {self.upload_id} was removed or moved on while written")
            with conn.cursor() as parts:
                parts.executemany(
                    "INSERT INTO tus_upload_parts (upload_id, part, start_offset, size, version_id) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [(self.upload_id, p.number, p.start, p.size, p.version_id) for p in self._pending])
        self._parts += self._pending
        self._pending = []
        self._info = replace(self._info, offset=end, expires=expires, sha256=sha256)
        self._at_commit = self._at_part_end.copy()
        self._store._remember(self.upload_id, end, self._at_commit, sha256, expires)
        if complete:
            log.info("upload %s complete: %d bytes in %d parts", self.upload_id, end, len(self._parts))
        return self._info
