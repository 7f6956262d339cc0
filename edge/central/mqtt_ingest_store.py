"""Durable assembly of files that stations send over MQTT (EMQX "File Transfer over MQTT" commands).

When the broker does not assemble files itself (Mosquitto), the central's receiver does, here. The
receiver hands each command it gets (the authenticated station, the topic, the payload) to
:meth:`MqttIngestStore.handle` and answers with the :class:`Outcome` on the response topic. Once ``fin``
has verified a file, the store serves it to :class:`edge.central.registration.Registrar` exactly as the
tus store serves an upload (``get`` / ``complete_path`` / ``remove`` of
:class:`~edge.central.registration.UploadSource`), under the id
:func:`edge.mqtt.filetransfer.transfer_upload_id` gives for {station, file id}. One registration, one
object store, one log, whichever transport delivered the bytes.

Layout: one flat directory; every name is that 32-hex-digit id plus a suffix (nothing a station sends
ever becomes part of a path):

- ``<id>.info.json``: station, file id, the init metadata, state (open, complete, failed) and, once
  complete, the SHA-256 of the file; written with :func:`edge.durable.files.write_atomic`.
- ``<id>.part``: the file, segments written at their offsets (sparse until every segment came).
- ``<id>.segments``: the journal of stored segments, fixed 48-byte records (offset, length, SHA-256 of the
  segment, 4 bytes of SHA-256 over the rest that expose a torn record), appended and fsynced.
- ``<id>.lock``: the transfer's ``flock(2)``. Shared subscriptions spread one transfer's messages over
  several central processes; every operation on a transfer holds its lock and reads the journal's new
  records first, so the processes agree on what is stored.

Commit rule: a segment's bytes are written and fsynced, then its journal record is appended and fsynced,
then it is acknowledged. A crash before the record loses nothing acknowledged: the station resends what was
not acknowledged, and bytes without a record are never counted. A torn last record is cut off when read.
Whatever got lost anyway (a damaged journal) shows at ``fin`` as missing bytes, which asks the station to
send every segment again (reason 0x80), and the station's duplicates are harmless.

Verification: a segment's SHA-256 (its topic's last level) is checked before anything is written; a
segment over bytes already stored must carry the same bytes (compared with what is on disk), or it is
refused, nothing changes, and an incident is recorded; a resend of one of the last segments recorded,
with the SHA-256 its journal record holds at the same offset and length, is answered from that record
without reading the stored bytes back (at a bounded rate per station,
:class:`~edge.central.record_rate.RecordRate`: a record says how many of that station's were not written
before it, ``unrecorded_incidents_before``); ``fin`` checks the size against the init, that the
segments cover the file without a gap, then streams the file through SHA-256 and compares it with the
checksum of ``fin`` or of ``init``. A mismatch fails the transfer (kept until it expires, as evidence of
what came) and is recorded. Memory per transfer is the list of separate runs of stored bytes, bounded by
``max_runs``; the file is never held in memory.

Nothing a station sends makes :meth:`MqttIngestStore.handle` raise: every refusal is an :class:`Outcome`
with a documented reason code and a sentence naming what was wrong.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.central.objects import ReceivedContent
from edge.central.record_rate import RecordRate
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.text import printable
from edge.durable.files import ensure_private_dir, free_bytes, fsync_dir, write_atomic
from edge.mqtt.filetransfer import (
    AbortCommand,
    Command,
    FileMeta,
    FileResponse,
    FileTransferError,
    FinCommand,
    InitCommand,
    ReasonCode,
    SegmentCommand,
    check_client_id,
    parse_command_topic,
    parse_init_payload,
    transfer_upload_id,
)

__all__ = [
    "INFO_FORMAT",
    "MqttIngestStore",
    "Outcome",
    "TransferFacts",
    "TransferNotCompleteError",
    "TransferState",
]

log = logging.getLogger(__name__)

INFO_FORMAT = "evidence-edge/mqtt-transfer/1"
_INFO_SUFFIX = ".info.json"
_PART_SUFFIX = ".part"
_JOURNAL_SUFFIX = ".segments"
_LOCK_SUFFIX = ".lock"
_INCIDENTS = "incidents.jsonl"
_MAX_INFO_BYTES = 64 * 1024
_READ_BLOCK_BYTES = 1024 * 1024
_JOURNAL_BLOCK_BYTES = 48 * 4096
# offset, length, SHA-256 of the segment, first 4 bytes of SHA-256 over the 44 bytes before.
_RECORD = struct.Struct(">QI32s4s")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_LEASE_S = 3600.0
_MAX_INCIDENT_TAIL_BYTES = 1024 * 1024
# Segments per transfer whose digest is kept in memory for cheap duplicates (~100 bytes each).
_RECENT_SEGMENTS = 1024


class TransferState(StrEnum):
    OPEN = "open"
    COMPLETE = "complete"
    FAILED = "failed"


class TransferNotCompleteError(Exception):
    """``complete_path`` of a transfer that ``fin`` has not verified (or that does not exist)."""


class _NoTransfer(Exception):
    """No lock file: the transfer was never initialised, or it was removed."""


class _Refusal(Exception):
    def __init__(self, code: ReasonCode, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True)
class Outcome:
    """The result of one command: what the receiver answers (PUBACK reason code and response message)."""

    command: Command | None
    reason_code: ReasonCode
    description: str

    @property
    def ok(self) -> bool:
        return self.reason_code is ReasonCode.SUCCESS

    def response(self, packet_id: int) -> FileResponse | None:
        """The message for the response topic; None when the topic named no command (nothing to echo)."""
        if self.command is None:
            return None
        return FileResponse(self.command.topic, packet_id, self.reason_code, self.description[:512])


@dataclass(frozen=True)
class TransferFacts:
    """A transfer as registration sees it (the shape of :class:`~edge.central.registration.UploadFacts`).

    ``offset`` equals ``length`` only once ``fin`` verified the whole file: an unfinished transfer never
    reports all of its bytes, even when every segment came.
    """

    upload_id: str
    station: str
    file_id: str
    name: str
    length: int
    offset: int
    sha256: str | None
    state: TransferState
    received_bytes: int


@dataclass(frozen=True)
class _Record:
    upload_id: str
    station: str
    file_id: str
    meta: FileMeta
    created: str
    # New for every init: a cache of the journal from before a restart of the transfer is never reused.
    generation: str
    state: TransferState
    sha256: str | None = None
    failure: str | None = None

    @property
    def size(self) -> int:
        assert self.meta.size is not None  # required at init by this store
        return self.meta.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INFO_FORMAT,
            "upload_id": self.upload_id,
            "station": self.station,
            "file_id": self.file_id,
            "meta": self.meta.to_dict(),
            "created": self.created,
            "generation": self.generation,
            "state": self.state.value,
            "sha256": self.sha256,
            "failure": self.failure,
        }

    @classmethod
    def from_bytes(cls, raw: bytes, upload_id: str) -> _Record:
        doc = parse_json(raw)
        fields = {
            "format", "upload_id", "station", "file_id", "meta", "created", "generation", "state", "sha256",
            "failure",
        }
        if not isinstance(doc, dict) or set(doc) != fields:
            raise ValueError(f"expected an object with {sorted(fields)}")
        if doc["format"] != INFO_FORMAT or doc["upload_id"] != upload_id:
            raise ValueError(f"format or upload_id is not {INFO_FORMAT} / {upload_id}")
        station = check_client_id(doc["station"])
        file_id = doc["file_id"]
        if transfer_upload_id(station, file_id) != upload_id:
            raise ValueError("station and file id do not give the record's upload id")
        meta_doc = doc["meta"]
        if not isinstance(meta_doc, dict):
            raise ValueError("meta is not an object")
        meta = parse_init_payload(json.dumps(meta_doc).encode("utf-8"))
        if meta.size is None:
            raise ValueError("meta has no size")
        state = TransferState(doc["state"])
        sha256 = doc["sha256"]
        if (state is TransferState.COMPLETE) != isinstance(sha256, str):
            raise ValueError("sha256 is set exactly when the transfer is complete")
        failure = doc["failure"]
        if failure is not None and not isinstance(failure, str):
            raise ValueError("failure is not text")
        if not isinstance(doc["created"], str) or not isinstance(doc["generation"], str):
            raise ValueError("created or generation is not text")
        return cls(
            upload_id, station, file_id, meta, doc["created"], doc["generation"], state, sha256, failure
        )


class _Coverage:
    """The separate runs of stored bytes of one transfer, as its journal says (sorted, disjoint, merged)."""

    def __init__(self, generation: str, inode: int) -> None:
        self.generation = generation
        self.inode = inode
        self.journal_bytes = 0
        self.starts: list[int] = []
        self.ends: list[int] = []
        # The last segments recorded, (offset, length) -> SHA-256, so that a resend of one of them is
        # answered from its recorded digest instead of reading the stored bytes back (bounded: a resend is
        # almost always of the latest unanswered segments; older ones are still compared byte by byte).
        self.recent: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def remember(self, start: int, length: int, digest: bytes) -> None:
        key = (start, length)
        self.recent.pop(key, None)
        self.recent[key] = digest
        while len(self.recent) > _RECENT_SEGMENTS:
            self.recent.popitem(last=False)

    @property
    def received(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends, strict=True))

    def overlaps(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The stored ranges inside [start, end)."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            lo, hi = max(self.starts[i], start), min(self.ends[i], end)
            if lo < hi:
                yield lo, hi
            i += 1

    def runs_after_adding(self, start: int, end: int) -> int:
        """How many runs there would be with [start, end) stored."""
        first = bisect.bisect_left(self.ends, start)  # first run that ends at or after start
        last = bisect.bisect_right(self.starts, end)  # runs before this start at or before end
        return len(self.starts) - (last - first) + 1

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        first = bisect.bisect_left(self.ends, start)
        last = bisect.bisect_right(self.starts, end)
        if first < last:
            start = min(start, self.starts[first])
            end = max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]

    def first_gap(self, size: int) -> tuple[int, int] | None:
        if size == 0:
            return None
        if not self.starts or self.starts[0] > 0:
            return 0, self.starts[0] if self.starts else size
        if self.ends[0] >= size:
            return None
        return self.ends[0], self.starts[1] if len(self.starts) > 1 else size


def _format_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime(_TIME_FORMAT)


def _record_bytes(offset: int, length: int, digest: bytes) -> bytes:
    head = struct.pack(">QI32s", offset, length, digest)
    return head + hashlib.sha256(head).digest()[:4]


class MqttIngestStore:
    """Transfers under ``root`` (see the module docstring). Synchronous and thread-safe; the receiver calls
    it from worker threads. Several processes may share one root (shared subscriptions)."""

    def __init__(
        self,
        root: Path,
        *,
        max_size_bytes: int,
        max_segment_bytes: int = 16 * 1024 * 1024,
        station_quota_bytes: int | None = None,
        max_runs: int = 4096,
        segments_ttl_s: float = 24 * 3600.0,
        min_segments_ttl_s: float = 300.0,
        max_segments_ttl_s: float = 7 * 24 * 3600.0,
        expire_complete_after_s: float = 7 * 24 * 3600.0,
        require_segment_checksum: bool = True,
        reserve_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_size_bytes < 0 or max_segment_bytes < 1 or max_runs < 1:
            raise ValueError("max_size_bytes must be >= 0, max_segment_bytes and max_runs >= 1")
        if not 0 < min_segments_ttl_s <= segments_ttl_s <= max_segments_ttl_s:
            raise ValueError("expected 0 < min_segments_ttl_s <= segments_ttl_s <= max_segments_ttl_s")
        ensure_private_dir(root)
        self._root = root.resolve()
        self._max_size_bytes = max_size_bytes
        self._max_segment_bytes = max_segment_bytes
        self._station_quota_bytes = station_quota_bytes
        self._max_runs = max_runs
        self._segments_ttl_s = segments_ttl_s
        self._min_ttl_s = min_segments_ttl_s
        self._max_ttl_s = max_segments_ttl_s
        self._expire_complete_after_s = expire_complete_after_s
        self._require_segment_checksum = require_segment_checksum
        self._reserve_bytes = reserve_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._coverage: dict[str, _Coverage] = {}
        self._leases: dict[str, float] = {}
        # Incidents are what a station sends wrong: written at a bounded rate per station (each still
        # refused), the count of those not written carried in the next one.
        self.incident_rate = RecordRate()

    def __repr__(self) -> str:
        return f"MqttIngestStore(root={str(self._root)!r}, max_size_bytes={self._max_size_bytes})"

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, upload_id: str, suffix: str) -> Path:
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            raise ValueError(f"expected an upload id of 32 lowercase hex digits, got {upload_id!r:.60}")
        return self._root / f"{upload_id}{suffix}"

    # -- the receiver's entry point ---------------------------------------------------------------------

    def handle(self, station: str, topic: str, payload: bytes) -> Outcome:
        """Carry out one command from ``station`` (the identity the receiver authenticated, never a field
        of the message). Never raises for anything the station sent."""
        try:
            command = parse_command_topic(topic)
        except FileTransferError as exc:
            log.warning("station %s: refused file-transfer topic: %s", printable(str(station))[:64], exc)
            return Outcome(None, ReasonCode.RESEND, str(exc))
        return self.carry_out(station, command, payload)

    def carry_out(self, station: str, command: Command, payload: bytes) -> Outcome:
        try:
            check_client_id(station)
            if isinstance(command, InitCommand):
                description = self._init(station, command, payload)
            elif isinstance(command, SegmentCommand):
                description = self._segment(station, command, payload)
            elif isinstance(command, FinCommand):
                description = self._fin(station, command, payload)
            else:
                description = self._abort(station, command)
        except _NoTransfer:
            description = (
                f"no transfer of file {command.file_id} from station {station}: init it first (a new file id "
                "starts over)"
            )
            log.warning("station %s, %s: refused: %s", station, command.topic, description)
            return Outcome(command, ReasonCode.CANCEL, description)
        except _Refusal as refusal:
            log.warning("station %s, %s: refused (0x%02X): %s", station, command.topic, refusal.code,
                        refusal.description)
            return Outcome(command, refusal.code, refusal.description)
        except FileTransferError as exc:
            log.warning("station %s, %s: refused: %s", printable(str(station))[:64], command.topic, exc)
            return Outcome(command, ReasonCode.RESEND, str(exc))
        except OSError as exc:
            log.exception("station %s, %s: storage failed", station, command.topic)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            code = ReasonCode.QUOTA_EXCEEDED if full else ReasonCode.RESEND
            reason = exc.strerror or type(exc).__name__
            return Outcome(command, code, f"the central could not store it: {reason}")
        return Outcome(command, ReasonCode.SUCCESS, description)

    # -- commands ---------------------------------------------------------------------------------------

    def _init(self, station: str, command: InitCommand, payload: bytes) -> str:
        meta = parse_init_payload(payload)
        if meta.size is None:
            raise _Refusal(ReasonCode.CANCEL, "init size: this receiver needs the file's size in init")
        if meta.size > self._max_size_bytes:
            raise _Refusal(
                ReasonCode.CANCEL,
                f"init size: {meta.size} bytes is over the central's limit of {self._max_size_bytes} bytes",
            )
        upload_id = transfer_upload_id(station, command.file_id)
        with self._transfer_lock(upload_id, create=True):
            record = self._read_record(upload_id)
            if record is not None and record.state is not TransferState.FAILED:
                if record.meta != meta:
                    raise _Refusal(
                        ReasonCode.CANCEL,
                        f"file {command.file_id} was initialised with other metadata ("
                        f"{_meta_difference(record.meta, meta)}); a new transfer needs a new file id",
                    )
                return "success (already initialised)"
            try:
                self._check_room(station, meta.size, upload_id)
            except _Refusal:
                if record is None:
                    # Nothing was made: leave no lock file behind either.
                    self._path(upload_id, _LOCK_SUFFIX).unlink(missing_ok=True)
                raise
            self._create(station, command.file_id, meta, upload_id)
        log.info("station %s: transfer of file %s (%d bytes) initialised as %s", station, command.file_id,
                 meta.size, upload_id)
        return "success"

    def _segment(self, station: str, command: SegmentCommand, payload: bytes) -> str:
        length = len(payload)
        if length > self._max_segment_bytes:
            raise _Refusal(
                ReasonCode.CANCEL,
                f"segment at {command.offset}: {length} bytes, over the limit of {self._max_segment_bytes}",
            )
        digest = hashlib.sha256(payload).digest()
        if command.checksum is None:
            if self._require_segment_checksum:
                raise _Refusal(
                    ReasonCode.CANCEL,
                    f"segment at {command.offset}: no checksum; this receiver needs the SHA-256 of every "
                    "segment in its topic",
                )
        elif not hmac.compare_digest(digest.hex(), command.checksum):
            raise _Refusal(
                ReasonCode.RESEND,
                f"segment at {command.offset}: its {length} bytes hash to {digest.hex()}, the topic says "
                f"{command.checksum}",
            )
        upload_id = transfer_upload_id(station, command.file_id)
        start, end = command.offset, command.offset + length
        with self._transfer_lock(upload_id):
            record = self._require_record(upload_id, command.file_id)
            if end > record.size or start > record.size:
                raise _Refusal(
                    ReasonCode.CANCEL,
                    f"segment at {start} of {length} bytes ends at {end}, past the declared size "
                    f"{record.size}",
                )
            if record.state is TransferState.FAILED:
                raise _Refusal(ReasonCode.CANCEL, f"file {command.file_id} failed: {record.failure}")
            coverage = self._load_coverage(record)
            stored = sum(hi - lo for lo, hi in coverage.overlaps(start, end))
            if record.state is TransferState.COMPLETE and not self._path(upload_id, _PART_SUFFIX).exists():
                # Registration took the verified file: a late duplicate changes nothing either way.
                if stored == length:
                    return "success (file already complete and registered)"
                raise _Refusal(ReasonCode.CANCEL, f"file {command.file_id} is already complete")
            if stored == length and coverage.recent.get((start, length)) == digest:
                # A resend of a segment the journal recorded with this very SHA-256 at this offset and
                # length: the same bytes, answered without reading them back (2 MiB per resend otherwise).
                return "success (already stored)"
            conflict = self._first_difference(upload_id, coverage, start, payload)
            if conflict is not None:
                detail = (
                    f"segment at {start} of {length} bytes differs from the bytes already stored at "
                    f"{conflict} (same offset, other content): refused, the stored bytes are kept"
                )
                self._incident(record, "segment_conflict", detail, offset=start, sha256=digest.hex())
                raise _Refusal(ReasonCode.CANCEL, detail)
            if stored == length:
                return "success (already stored)"
            if record.state is TransferState.COMPLETE:
                raise _Refusal(ReasonCode.CANCEL, f"file {command.file_id} is already complete")
            if coverage.runs_after_adding(start, end) > self._max_runs:
                raise _Refusal(
                    ReasonCode.QUOTA_EXCEEDED,
                    f"segment at {start} would leave more than {self._max_runs} separate runs of bytes; send "
                    "the segments before it first",
                )
            self._write_segment(upload_id, coverage, start, payload, digest)
        return "success"

    def _fin(self, station: str, command: FinCommand, payload: bytes) -> str:
        if payload:
            raise _Refusal(ReasonCode.RESEND, f"fin: expected an empty payload, got {len(payload)} bytes")
        upload_id = transfer_upload_id(station, command.file_id)
        with self._transfer_lock(upload_id):
            record = self._require_record(upload_id, command.file_id)
            if command.size != record.size:
                raise _Refusal(
                    ReasonCode.CANCEL,
                    f"fin size {command.size} differs from the size {record.size} declared in init",
                )
            if (
                command.checksum is not None
                and record.meta.checksum is not None
                and command.checksum != record.meta.checksum
            ):
                raise _Refusal(
                    ReasonCode.CANCEL,
                    f"fin checksum {command.checksum} differs from the init checksum {record.meta.checksum}",
                )
            expected = command.checksum or record.meta.checksum
            if record.state is TransferState.COMPLETE:
                if expected is not None and expected != record.sha256:
                    raise _Refusal(
                        ReasonCode.CANCEL,
                        f"file {command.file_id} is complete with SHA-256 {record.sha256}, fin says "
                        f"{expected}",
                    )
                return "success (already complete)"
            if record.state is TransferState.FAILED:
                raise _Refusal(ReasonCode.CANCEL, f"file {command.file_id} failed: {record.failure}")
            if expected is None:
                raise _Refusal(
                    ReasonCode.CANCEL,
                    "fin: no SHA-256 of the file, neither in init nor in fin; this receiver verifies every "
                    "file",
                )
            coverage = self._load_coverage(record)
            gap = coverage.first_gap(record.size)
            if gap is not None:
                runs = len(coverage.starts)
                raise _Refusal(
                    ReasonCode.RESEND,
                    f"fin: bytes {gap[0]} to {gap[1] - 1} of {record.size} have not arrived "
                    f"({coverage.received} bytes stored in {runs} run{'s' if runs != 1 else ''}); send the "
                    "segments again",
                )
            found = self._hash_part(upload_id, record.size)
            if found != expected:
                detail = (
                    f"fin: the {record.size} bytes stored hash to {found}, the station declared {expected}; "
                    "the transfer failed and its bytes are kept until it expires"
                )
                self._write_record(_replace(record, state=TransferState.FAILED, failure=detail))
                self._incident(record, "file_checksum_mismatch", detail, sha256=found)
                raise _Refusal(ReasonCode.CANCEL, detail)
            self._write_record(_replace(record, state=TransferState.COMPLETE, sha256=found))
        log.info("station %s: file %s complete as %s: %d bytes, SHA-256 %s", station, command.file_id,
                 upload_id, record.size, found)
        return "success"

    def _abort(self, station: str, command: AbortCommand) -> str:
        upload_id = transfer_upload_id(station, command.file_id)
        if not self._path(upload_id, _LOCK_SUFFIX).exists():
            return "success (no such transfer)"
        with self._transfer_lock(upload_id):
            record = self._read_record(upload_id)
            if record is not None and record.state is TransferState.OPEN:
                aborted = _replace(record, state=TransferState.FAILED, failure="aborted by the station")
                self._write_record(aborted)
                log.info("station %s: transfer of file %s aborted", station, command.file_id)
        return "success"

    # -- registration's view (UploadSource) ----------------------------------------------------------------

    def staged(self, upload_id: str) -> None:
        """Never in a bucket: a transfer's content is the local file :meth:`complete_path` gives."""
        return None

    def get(self, upload_id: str) -> TransferFacts | None:
        """The transfer ``upload_id`` (None when there is none, or its record is damaged)."""
        try:
            with self._transfer_lock(upload_id):
                record = self._read_record(upload_id)
                if record is None:
                    return None
                received = self._load_coverage(record).received
        except (_NoTransfer, _Refusal):
            return None
        complete = record.state is TransferState.COMPLETE
        offset = record.size if complete else min(received, max(record.size - 1, 0))
        return TransferFacts(upload_id, record.station, record.file_id, record.meta.name, record.size, offset,
                             record.sha256, record.state, received)

    def stored_runs(self, upload_id: str) -> tuple[TransferFacts, list[tuple[int, int]]] | None:
        """The transfer ``upload_id`` and its separate runs of stored bytes as ``(offset, size)``, ascending
        (what a station resuming after its own restart needs not send again); None when there is none."""
        try:
            with self._transfer_lock(upload_id):
                record = self._read_record(upload_id)
                if record is None:
                    return None
                coverage = self._load_coverage(record)
                runs = [(lo, hi - lo) for lo, hi in zip(coverage.starts, coverage.ends, strict=True)]
        except (_NoTransfer, _Refusal):
            return None
        complete = record.state is TransferState.COMPLETE
        received = sum(size for _, size in runs)
        offset = record.size if complete else min(received, max(record.size - 1, 0))
        facts = TransferFacts(upload_id, record.station, record.file_id, record.meta.name, record.size,
                              offset, record.sha256, record.state, received)
        return facts, runs

    def complete_path(self, upload_id: str) -> Path:
        """The file of a verified transfer; leased to the caller (registration) so no purge takes it."""
        try:
            with self._transfer_lock(upload_id):
                record = self._read_record(upload_id)
                if record is None or record.state is not TransferState.COMPLETE:
                    raise TransferNotCompleteError(f"no complete transfer {upload_id}")
                with self._lock:
                    self._leases[upload_id] = self._clock() + _LEASE_S
        except (_NoTransfer, _Refusal):
            raise TransferNotCompleteError(f"no complete transfer {upload_id}") from None
        return self._path(upload_id, _PART_SUFFIX)

    def received(self, upload_id: str) -> ReceivedContent | None:
        """None: a transfer's file is hashed by the object store when registration moves it in (this store
        checks segments and the whole file at ``fin``, but vouches for no hash to it)."""
        return None

    def remove(self, upload_id: str) -> bool:
        """Delete the transfer's files (registration took the content); False when there was none."""
        return self._remove(upload_id, unleased_only=False)

    def _remove(self, upload_id: str, *, unleased_only: bool) -> bool:
        try:
            with self._transfer_lock(upload_id):
                # Under the transfer's lock, which complete_path takes to lease it.
                with self._lock:
                    leased = self._leases.get(upload_id, 0.0) > self._clock()
                if unleased_only and leased:
                    return False
                removed = self._unlink(upload_id)
        except _NoTransfer:
            return False
        fsync_dir(self._root)
        if removed:
            log.info("transfer %s removed", upload_id)
        return removed

    def remove_unleased(self, upload_id: str) -> bool:
        """:meth:`remove` unless a registration holds the transfer (:meth:`complete_path`'s lease): False
        then."""
        return self._remove(upload_id, unleased_only=True)

    def release_lease(self, upload_id: str) -> None:
        """End the lease :meth:`complete_path` gave (a registration that failed): the purge may take the
        transfer past its expiry."""
        with self._lock:
            self._leases.pop(upload_id, None)

    def purge_expired(self, now: float | None = None) -> int:
        """Remove transfers past their expiry; returns how many.

        An open transfer expires its segments' time to live after its last stored segment (the init's
        ``segments_ttl`` clamped to the configured bounds); a complete or failed one
        ``expire_complete_after_s`` after it last changed, unless a registration holds it.
        """
        moment = self._clock() if now is None else now
        removed = 0
        for path in sorted(self._root.glob(f"*{_INFO_SUFFIX}")):
            upload_id = path.name[: -len(_INFO_SUFFIX)]
            try:
                self._path(upload_id, "")
            except ValueError:
                continue
            with self._transfer_lock(upload_id, create=True):
                try:
                    record = self._read_record(upload_id)
                except _Refusal:
                    record = None  # damaged: it goes once it is as old as an open transfer's expiry
                last = max(_mtime(path), _mtime(self._path(upload_id, _JOURNAL_SUFFIX)))
                if record is None:
                    due = moment - last >= self._max_ttl_s
                elif record.state is TransferState.OPEN:
                    due = moment - last >= self._ttl_of(record.meta)
                else:
                    with self._lock:
                        leased = self._leases.get(upload_id, 0.0) > moment
                    due = not leased and moment - last >= self._expire_complete_after_s
                if not due:
                    continue
                self._unlink(upload_id)
            removed += 1
            log.info("transfer %s expired: removed (%s)", upload_id, record.state if record else "damaged")
        for suffix in (_LOCK_SUFFIX, _PART_SUFFIX, _JOURNAL_SUFFIX):
            for path in sorted(self._root.glob(f"*{suffix}")):
                # Files of an init that crashed before its record, or of a removal that crashed midway.
                upload_id = path.name[: -len(suffix)]
                if (
                    len(upload_id) == 32
                    and not self._path(upload_id, _INFO_SUFFIX).exists()
                    and moment - _mtime(path) >= self._min_ttl_s
                ):
                    path.unlink(missing_ok=True)
        if removed:
            fsync_dir(self._root)
        return removed

    def incidents(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The last ``limit`` recorded incidents (conflicting duplicates, file checksum mismatches)."""
        path = self._root / _INCIDENTS
        try:
            with path.open("rb") as stream:
                # The tail only: a station sending conflicting bytes grows the file, never our memory.
                size = stream.seek(0, os.SEEK_END)
                stream.seek(max(0, size - _MAX_INCIDENT_TAIL_BYTES))
                lines = stream.read(_MAX_INCIDENT_TAIL_BYTES).splitlines()[-limit:]
        except FileNotFoundError:
            return []
        found: list[dict[str, Any]] = []
        for line in lines:
            with contextlib.suppress(ValueError):
                doc = parse_json(line)
                if isinstance(doc, dict):
                    found.append(doc)
        return found

    # -- internals ----------------------------------------------------------------------------------------

    def _ttl_of(self, meta: FileMeta) -> float:
        wanted = float(meta.segments_ttl) if meta.segments_ttl is not None else self._segments_ttl_s
        return min(max(wanted, self._min_ttl_s), self._max_ttl_s)

    @contextlib.contextmanager
    def _transfer_lock(self, upload_id: str, *, create: bool = False) -> Iterator[None]:
        """Hold the transfer's flock (other threads and other processes wait).

        Only ``init`` creates the lock file: a command for a transfer that does not exist raises
        :class:`_NoTransfer` and leaves nothing behind, whatever file ids a station invents.
        """
        path = self._path(upload_id, _LOCK_SUFFIX)
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        while True:
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                raise _NoTransfer(upload_id) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A remove() may have unlinked the file we waited on: lock the one that is there now.
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return
            finally:
                os.close(fd)

    def _read_record(self, upload_id: str) -> _Record | None:
        path = self._path(upload_id, _INFO_SUFFIX)
        try:
            with path.open("rb") as stream:
                raw = stream.read(_MAX_INFO_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            if len(raw) > _MAX_INFO_BYTES:
                raise ValueError(f"larger than {_MAX_INFO_BYTES} bytes")
            return _Record.from_bytes(raw, upload_id)
        except (ValueError, KeyError) as exc:
            log.error("transfer %s: unreadable record %s: %s", upload_id, path, exc)
            raise _Refusal(ReasonCode.CANCEL, "the central's record of this transfer is damaged") from None

    def _require_record(self, upload_id: str, file_id: str) -> _Record:
        record = self._read_record(upload_id)
        if record is None:
            raise _Refusal(
                ReasonCode.CANCEL,
                f"no transfer of file {file_id} from this station: init it first (a new file id starts over)",
            )
        return record

    def _write_record(self, record: _Record) -> None:
        write_atomic(self._path(record.upload_id, _INFO_SUFFIX), canonical_json(record.to_dict()))

    def _check_room(self, station: str, size: int, upload_id: str) -> None:
        if self._station_quota_bytes is not None:
            held = self._declared_bytes(station, excluding=upload_id)
            if held + size > self._station_quota_bytes:
                raise _Refusal(
                    ReasonCode.QUOTA_EXCEEDED,
                    f"station {station} has transfers of {held} bytes not yet registered; {size} more would "
                    f"exceed its quota of {self._station_quota_bytes} bytes",
                )
        free = free_bytes(self._root)
        if size > free - self._reserve_bytes:
            raise _Refusal(
                ReasonCode.QUOTA_EXCEEDED,
                f"{size} bytes do not fit now: the central has {free} bytes free and keeps "
                f"{self._reserve_bytes} in reserve",
            )

    def _declared_bytes(self, station: str, *, excluding: str) -> int:
        total = 0
        for path in self._root.glob(f"*{_INFO_SUFFIX}"):
            other = path.name[: -len(_INFO_SUFFIX)]
            if other == excluding:
                continue
            try:
                with path.open("rb") as stream:
                    record = _Record.from_bytes(stream.read(_MAX_INFO_BYTES + 1), other)
            except (OSError, ValueError, KeyError):
                continue
            if record.station == station and record.state is not TransferState.FAILED:
                total += record.size
        return total

    def _create(self, station: str, file_id: str, meta: FileMeta, upload_id: str) -> None:
        # Content and journal first (empty, durable), the record last: a record always has its files.
        for suffix in (_PART_SUFFIX, _JOURNAL_SUFFIX):
            path = self._path(upload_id, suffix)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self._root)
        with self._lock:
            self._coverage.pop(upload_id, None)
        record = _Record(upload_id, station, file_id, meta, _format_time(self._clock()), secrets.token_hex(8),
                         TransferState.OPEN)
        self._write_record(record)

    def _load_coverage(self, record: _Record) -> _Coverage:
        """The runs of stored bytes, brought up to date with journal records other processes appended.

        Caller holds the transfer's lock. A torn last record (a crash while appending: its segment was
        never acknowledged) is cut off; so is everything from a damaged record on, which ``fin`` then
        finds missing and asks for again.
        """
        upload_id = record.upload_id
        journal = self._path(upload_id, _JOURNAL_SUFFIX)
        fd = os.open(journal, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            inode = os.fstat(fd).st_ino
            with self._lock:
                coverage = self._coverage.get(upload_id)
            if (
                coverage is None
                or coverage.generation != record.generation
                or coverage.inode != inode
                or coverage.journal_bytes > size
            ):
                coverage = _Coverage(record.generation, inode)
            position = coverage.journal_bytes
            good_end = size - (size - position) % _RECORD.size
            while position < good_end:
                chunk = os.pread(fd, min(_JOURNAL_BLOCK_BYTES, good_end - position), position)
                if len(chunk) % _RECORD.size or not chunk:
                    good_end = position  # the file shrank under us: damage; read no further
                    break
                for at in range(0, len(chunk), _RECORD.size):
                    offset, length, segment_sum, check = _RECORD.unpack_from(chunk, at)
                    if hashlib.sha256(chunk[at:at + 44]).digest()[:4] != check:
                        log.error(
                            "transfer %s: journal record at byte %d is damaged; it and the records after it "
                            "are dropped (fin will ask for the missing bytes again)",
                            upload_id,
                            position + at,
                        )
                        good_end = position + at
                        break
                    coverage.add(offset, offset + length)
                    coverage.remember(offset, length, segment_sum)
                else:
                    position += len(chunk)
                    continue
                break
            if good_end != size:
                log.info("transfer %s: journal cut from %d to %d bytes", upload_id, size, good_end)
                self._cut_journal(fd, good_end)
            coverage.journal_bytes = good_end
            with self._lock:
                self._coverage[upload_id] = coverage
            return coverage
        finally:
            os.close(fd)

    @staticmethod
    def _cut_journal(fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        os.fsync(fd)

    def _first_difference(
        self, upload_id: str, coverage: _Coverage, start: int, payload: bytes
    ) -> int | None:
        """The first offset where ``payload`` (at ``start``) differs from bytes already stored, or None."""
        overlaps = list(coverage.overlaps(start, start + len(payload)))
        if not overlaps:
            return None
        fd = os.open(self._path(upload_id, _PART_SUFFIX), os.O_RDONLY | os.O_CLOEXEC)
        try:
            view = memoryview(payload)
            for lo, hi in overlaps:
                position = lo
                while position < hi:
                    want = min(_READ_BLOCK_BYTES, hi - position)
                    stored = os.pread(fd, want, position)
                    sent = view[position - start: position - start + want]
                    if stored != sent:
                        for index in range(min(len(stored), len(sent))):
                            if stored[index] != sent[index]:
                                return position + index
                        return position + min(len(stored), len(sent))
                    position += want
        finally:
            os.close(fd)
        return None

    def _write_segment(
        self, upload_id: str, coverage: _Coverage, start: int, payload: bytes, digest: bytes
    ) -> None:
        fd = os.open(self._path(upload_id, _PART_SUFFIX), os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(payload)
            position = start
            while view:
                written = os.pwrite(fd, view, position)
                view = view[written:]
                position += written
            os.fdatasync(fd)
        finally:
            os.close(fd)
        journal = os.open(self._path(upload_id, _JOURNAL_SUFFIX), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            record = _record_bytes(start, len(payload), digest)
            if os.write(journal, record) != len(record):
                raise OSError(errno.EIO, "short write to the segment journal")
            os.fdatasync(journal)
        finally:
            os.close(journal)
        coverage.add(start, start + len(payload))
        coverage.journal_bytes += _RECORD.size
        coverage.remember(start, len(payload), digest)

    def _hash_part(self, upload_id: str, size: int) -> str:
        """SHA-256 of the first ``size`` bytes of the content, streamed; the file is cut to ``size``."""
        hasher = hashlib.sha256()
        path = self._path(upload_id, _PART_SUFFIX)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # a segment ending exactly at the size leaves nothing to cut
                os.fsync(fd)
            position = 0
            while position < size:
                block = os.pread(fd, min(_READ_BLOCK_BYTES, size - position), position)
                if not block:
                    raise OSError(errno.EIO, f"content ends at {position} of {size} bytes")
                hasher.update(block)
                position += len(block)
        finally:
            os.close(fd)
        return hasher.hexdigest()

    def record_incident(self, station: str, kind: str, detail: str) -> None:
        """An incident of the receiver that concerns no transfer (a damaged row of its receive queue),
        recorded like the store's own (bounded per station)."""
        skipped = self.incident_rate.admit(station)
        if skipped is None:
            return
        entry: dict[str, object] = {"time": _format_time(self._clock()), "kind": kind, "station": station,
                                    "detail": detail}
        if skipped:
            entry["unrecorded_incidents_before"] = skipped
        self._append_incident(entry)

    def _incident(self, record: _Record, kind: str, detail: str, **extra: object) -> None:
        skipped = self.incident_rate.admit(record.station)
        if skipped is None:
            return
        entry = {"time": _format_time(self._clock()), "kind": kind, "station": record.station,
                 "file_id": record.file_id, "upload_id": record.upload_id, "detail": detail, **extra}
        if skipped:
            entry["unrecorded_incidents_before"] = skipped
        self._append_incident(entry)
        log.warning("station %s, file %s: %s: %s", record.station, record.file_id, kind, detail)

    def _append_incident(self, entry: dict[str, object]) -> None:
        line = canonical_json(entry) + b"\n"
        fd = os.open(self._root / _INCIDENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _unlink(self, upload_id: str) -> bool:
        removed = False
        # The record first: without it the rest is an orphan nobody counts.
        for suffix in (_INFO_SUFFIX, _JOURNAL_SUFFIX, _PART_SUFFIX, _LOCK_SUFFIX):
            try:
                self._path(upload_id, suffix).unlink()
                removed |= suffix == _INFO_SUFFIX
            except FileNotFoundError:
                pass
        with self._lock:
            self._coverage.pop(upload_id, None)
            self._leases.pop(upload_id, None)
        return removed


def _replace(record: _Record, **changes: Any) -> _Record:
    return dataclasses.replace(record, **changes)


def _meta_difference(old: FileMeta, new: FileMeta) -> str:
    names = [name for name in ("name", "size", "checksum", "expire_at", "segments_ttl", "user_data")
             if getattr(old, name) != getattr(new, name)]
    return ", ".join(names) + " differ"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
