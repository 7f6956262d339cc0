"""What the central accepts, and why it refuses: station ledger segments and item registrations.

Invariant 7 of DESIGN.md lives here: an item is accepted only when its content hashes to the signed
manifest's SHA-256, the manifest is signed by the station's enrolled key, and the station's ledger, as
the central has accepted it, holds the item's `acquired` entry at the seq and hash the manifest names.

Every refusal is a :class:`Rejection` with a machine code, an HTTP status and a sentence saying what was
expected and what came; :class:`Registrar` logs each one and appends it to the index's rejections table.

Order of an acceptance (crash-safe): verify everything that needs no content; link the finished upload
into the object store (durable: fsync file and directories), hashing it again unless its receive path
hashed every byte as it wrote them and the file is unchanged since (:class:`~edge.central.objects.
ReceivedContent`); then, in one
transaction of the unit of work the index and the log share (:mod:`edge.central.storage`), the item,
officer/device/case rows, metadata history, Merkle leaf and signed tree head. A crash before the commit
leaves at most an unreferenced object, which the retry adopts.

A tag that changes an accepted item's retention class records the lock the new class needs in the
transaction that accepts it; the object store is asked after the commit, and again until it confirms
(:mod:`edge.central.lock_extensions`): neither a crash nor a bucket out of reach loses the extension.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import ItemRecord, StationRecord
from edge.central.lock_extensions import LockExtender
from edge.central.objects import (
    ObjectCorrupt,
    ObjectMismatch,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    ReceivedContent,
    Retention,
)
from edge.central.retention import RetentionPolicy, parse_utc
from edge.central.storage import Index, PendingLock, Readers, UnitOfWork
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.disclosure import ShippedRotation, key_epoch_problem, station_schedule
from edge.custody.errors import CanonicalJsonError, KeyFormatError, LedgerError
from edge.custody.keys import StationKey, key_id_of
from edge.custody.keyschedule import parse_rotation
from edge.custody.ledger import (
    Checkpoint,
    EntryType,
    ItemChains,
    LedgerEntry,
    station_time_now,
    verify_chain,
)
from edge.custody.manifest import REQUIRED_FIELDS, verify_manifest
from edge.custody.problems import Problem
from edge.custody.receipt import Receipt, TreeHead, make_leaf_entry, make_receipt
from edge.custody.refusal import FINAL_ITEM_CODES, LEDGER_FORK, RefusalError, sign_refusal
from edge.custody.witness import WitnessedHead, sign_witnessed_head
from edge.runtime.logs import event_fields

__all__ = [
    "HTTP_STATUS",
    "LEDGER_FORMAT_2",
    "MAX_REJECTION_DETAIL_CHARS",
    "MAX_SEGMENT_ENTRIES",
    "MQTT_UPLOAD_PREFIX",
    "SEGMENT_CHECKPOINTS",
    "Caller",
    "MerkleLogLike",
    "Registered",
    "Registrar",
    "RejectCode",
    "Rejection",
    "UploadFacts",
    "UploadSource",
    "bounded_detail",
    "check_segment",
    "check_segment_checkpoints",
    "manifest_shape_problem",
    "parse_segment",
    "parse_segment_checkpoints",
    "upload_source_key",
]

log = logging.getLogger(__name__)

MAX_SEGMENT_ENTRIES = 10_000
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
# An upload delivered over MQTT is named "mqtt:<file id>" (the file-id grammar of edge.mqtt.filetransfer);
# the registrar resolves it for the calling station only (:func:`upload_source_key`).
MQTT_UPLOAD_PREFIX = "mqtt:"
_MQTT_UPLOAD_RE = re.compile(r"mqtt:([A-Za-z0-9_-][A-Za-z0-9._-]{0,127})")
_ENTRY_FIELDS = ("seq", "time", "type", "item", "data", "prev", "hash")
_SHOW = 80
# A refusal's detail is one sentence for people; whatever a request makes it say (names it found, values),
# no more than this goes to the log, the index, the signed refusal and the reply.
MAX_REJECTION_DETAIL_CHARS = 1000


class RejectCode(StrEnum):
    """Machine codes of refusals, as sent in ``{"error": code}``. Never rename one: stations key on them."""

    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    UNKNOWN_STATION = "unknown_station"
    STATION_REVOKED = "station_revoked"
    WRONG_STATION = "wrong_station"
    UPLOAD_NOT_FOUND = "upload_not_found"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    BAD_MANIFEST = "bad_manifest"
    BAD_SIGNATURE = "bad_signature"
    CONTENT_MISMATCH = "content_mismatch"
    CHAIN_UNKNOWN = "chain_unknown"
    CHAIN_MISMATCH = "chain_mismatch"
    ITEM_CONFLICT = "item_conflict"
    LEDGER_GAP = "ledger_gap"
    LEDGER_FORK = "ledger_fork"
    BAD_CHECKPOINT = "bad_checkpoint"
    BAD_CHAIN = "bad_chain"
    STORE_DAMAGED = "store_damaged"
    # The object store cannot be reached: nothing was stored, the station keeps its copy and retries.
    STORE_UNAVAILABLE = "store_unavailable"
    # HTTP-level refusals shared by every endpoint.
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    REQUEST_TIMEOUT = "request_timeout"
    ACCESS_LOG_UNAVAILABLE = "access_log_unavailable"
    # The database failed under the request (a PostgreSQL server restarting, the connection cut): the
    # request's transaction was rolled back whole; retry after Retry-After.
    INDEX_UNAVAILABLE = "index_unavailable"
    INTERNAL_ERROR = "internal_error"
    # The central is at a configured bound (requests, buffered bodies): retry after Retry-After.
    SERVER_BUSY = "server_busy"
    # The auditor console (edge.central.console): too many sign-in attempts; a state-changing request
    # without the session's CSRF token.
    RATE_LIMITED = "rate_limited"
    CSRF_REFUSED = "csrf_refused"


HTTP_STATUS: dict[RejectCode, int] = {
    RejectCode.BAD_REQUEST: 400,
    RejectCode.UNAUTHENTICATED: 401,
    RejectCode.UNKNOWN_STATION: 403,
    RejectCode.STATION_REVOKED: 403,
    RejectCode.WRONG_STATION: 403,
    RejectCode.UPLOAD_NOT_FOUND: 404,
    RejectCode.UPLOAD_INCOMPLETE: 409,
    RejectCode.BAD_MANIFEST: 422,
    RejectCode.BAD_SIGNATURE: 422,
    RejectCode.CONTENT_MISMATCH: 422,
    RejectCode.CHAIN_UNKNOWN: 409,
    RejectCode.CHAIN_MISMATCH: 422,
    RejectCode.ITEM_CONFLICT: 409,
    RejectCode.LEDGER_GAP: 409,
    RejectCode.LEDGER_FORK: 409,
    RejectCode.BAD_CHECKPOINT: 422,
    RejectCode.BAD_CHAIN: 422,
    # The central's own storage is damaged: the station keeps its copy and retries later.
    RejectCode.STORE_DAMAGED: 500,
    RejectCode.STORE_UNAVAILABLE: 503,
    RejectCode.FORBIDDEN: 403,
    RejectCode.NOT_FOUND: 404,
    RejectCode.TOO_LARGE: 413,
    RejectCode.REQUEST_TIMEOUT: 408,
    RejectCode.ACCESS_LOG_UNAVAILABLE: 503,
    RejectCode.INDEX_UNAVAILABLE: 503,
    RejectCode.INTERNAL_ERROR: 500,
    RejectCode.SERVER_BUSY: 503,
    RejectCode.RATE_LIMITED: 429,
    RejectCode.CSRF_REFUSED: 403,
}


# Refusals the registrar signs (edge.custody.refusal): final for the item, or a ledger fork. Its too_large
# is about a request body, not an item, and stays unsigned (the tus layer signs an upload's too_large).
SIGNED_REFUSALS = frozenset(
    code for code in RejectCode
    if (code in FINAL_ITEM_CODES and code is not RejectCode.TOO_LARGE) or code == LEDGER_FORK
)


class Rejection(Exception):
    """A refused request: ``code`` for machines, ``detail`` (one sentence) for people; ``refusal`` the
    signed refusal (:mod:`edge.custody.refusal`) when the refusal is final, so that the station can tell
    it from a proxy's answer."""

    def __init__(self, code: RejectCode, detail: str) -> None:
        detail = bounded_detail(detail)
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.refusal: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


def bounded_detail(detail: str) -> str:
    """``detail`` cut to :data:`MAX_REJECTION_DETAIL_CHARS`, saying how long it was (a detail is one
    sentence; a hostile request must not make it megabytes in the log, the index and the reply)."""
    if len(detail) <= MAX_REJECTION_DETAIL_CHARS:
        return detail
    tail = f"... ({len(detail)} characters, cut)"
    return detail[: MAX_REJECTION_DETAIL_CHARS - len(tail)] + tail


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


# -- what the registrar needs from its collaborators -------------------------------------------------


class UploadFacts(Protocol):
    """The parts of a tus upload's state that registration reads."""

    @property
    def station(self) -> str: ...
    @property
    def length(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def sha256(self) -> str | None: ...


class StagedContent(Protocol):
    """A complete upload whose bytes are already in the object store's bucket (the shared tus store of
    several receivers, :mod:`edge.central.postgres.tus_shared_store`): it makes the content object itself."""

    def store(self, sha256: str, retention: Retention) -> None:
        """Make object ``sha256`` from the upload, kept as ``retention`` says; raises the object store's
        errors (:class:`ObjectMismatch` when the bytes are not ``sha256``'s)."""
        ...


class UploadSource(Protocol):
    """Where registration finds an upload's content, by the key :func:`upload_source_key` gives."""

    def get(self, upload_id: str) -> UploadFacts | None: ...
    def staged(self, upload_id: str) -> StagedContent | None:
        """The complete upload's content when it is in the bucket already (None: a local file, through
        :meth:`complete_path`)."""
        ...
    def complete_path(self, upload_id: str) -> Path: ...
    def remove(self, upload_id: str) -> bool: ...
    def remove_unleased(self, upload_id: str) -> bool:
        """:meth:`remove`, unless a registration holds the upload (its lease): False then, and when there
        was none."""
        ...
    def release_lease(self, upload_id: str) -> None:
        """Give up the lease :meth:`complete_path` or :meth:`staged` took (the registration failed): the
        station may terminate the upload, and the purge take it past its expiry (idempotent)."""
        ...
    def received(self, upload_id: str) -> ReceivedContent | None:
        """The receive path's hash of the complete upload, taken as its bytes were written (None: the
        object store hashes the file itself)."""
        ...


def upload_source_key(station_id: str, upload: str) -> str | None:
    """The key under which the upload source holds the upload a registration names, or None when the name
    is neither form: a tus upload id (32 hex digits) is its own key; ``mqtt:<file id>`` becomes
    ``mqtt:<station>/<file id>`` with the CALLING station (MQTT transfers are keyed by station and file id,
    as in EMQX), so a station can only ever name its own transfers."""
    if _UPLOAD_ID_RE.fullmatch(upload):
        return upload
    found = _MQTT_UPLOAD_RE.fullmatch(upload)
    if found is None:
        return None
    return f"{MQTT_UPLOAD_PREFIX}{station_id}/{found.group(1)}"


class MerkleLogLike(Protocol):
    @property
    def unit(self) -> UnitOfWork: ...
    def append(self, leaf_entry: Mapping[str, Any]) -> int: ...
    def size(self) -> int: ...
    def tree_head(self) -> TreeHead: ...
    def latest_tree_head(self) -> TreeHead | None: ...
    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    def leaf(self, index: int) -> dict[str, Any]: ...


# -- ledger segments (pure) ------------------------------------------------------------------------


def parse_segment(doc: object) -> tuple[list[LedgerEntry], Checkpoint]:
    """Entries and checkpoint of a received ``{"entries": [...], "checkpoint": {...}}``.

    Only the shape is checked here (types, exact members, the size bound); continuity and signatures
    are :func:`check_segment`'s job. Raises :class:`Rejection`.
    """
    if not isinstance(doc, Mapping):
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"expected a ledger segment object, found {type(doc).__name__}",
        )
    extra = sorted(set(doc) - {"entries", "checkpoint", "checkpoints"})
    if extra:
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"ledger segment has unknown members {_show(extra)}; "
            "expected only entries, checkpoint and checkpoints",
        )
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise Rejection(RejectCode.BAD_REQUEST, "ledger segment entries must be a non-empty list")
    if len(raw_entries) > MAX_SEGMENT_ENTRIES:
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"ledger segment holds {len(raw_entries)} entries; at most "
            f"{MAX_SEGMENT_ENTRIES} per request",
        )
    entries = [_parse_entry(raw, position) for position, raw in enumerate(raw_entries)]
    raw_cp = doc.get("checkpoint")
    if not isinstance(raw_cp, Mapping):
        raise Rejection(RejectCode.BAD_CHECKPOINT, "ledger segment carries no checkpoint object")
    try:
        checkpoint = Checkpoint.from_dict(raw_cp)
    except LedgerError as exc:
        raise Rejection(RejectCode.BAD_CHECKPOINT, str(exc)) from None
    return entries, checkpoint


# The capability a ledger answer advertises in ``accepts``: segments may carry ``checkpoints``.
SEGMENT_CHECKPOINTS = "checkpoints"
# And: this central recomputes ledger format 2 hashes (edge.custody.ledger); an older one refuses every entry
# a station writes since as edited, so a station facing one says to upgrade the central first.
LEDGER_FORMAT_2 = "ledger_format_2"


def parse_segment_checkpoints(doc: Mapping[str, Any], entries: Sequence[LedgerEntry]) -> list[Checkpoint]:
    """The segment's optional ``checkpoints``: the other checkpoints the station signed at its seqs.

    The station signs one at every entry by default; the central keeps them so that a disclosure package
    can bind each disclosed entry by the checkpoint at its own seq. A seq holds at most two (the old and
    the new key at a rotation). Raises :class:`Rejection` for a malformed one or a seq outside the segment.
    """
    raw = doc.get("checkpoints", [])
    if not isinstance(raw, list) or len(raw) > 2 * len(entries):
        raise Rejection(RejectCode.BAD_REQUEST, "ledger segment checkpoints must be a list of at most two "
                                                "checkpoints per entry")
    first, last = entries[0].seq, entries[-1].seq
    checkpoints = []
    for position, raw_cp in enumerate(raw):
        if not isinstance(raw_cp, Mapping):
            raise Rejection(RejectCode.BAD_CHECKPOINT, f"checkpoints[{position}] is not an object")
        try:
            cp = Checkpoint.from_dict(raw_cp)
        except LedgerError as exc:
            raise Rejection(RejectCode.BAD_CHECKPOINT, f"checkpoints[{position}]: {exc}") from None
        if not first <= cp.seq <= last:
            raise Rejection(RejectCode.BAD_CHECKPOINT, f"checkpoints[{position}] signs seq {_show(cp.seq)}, "
                                                       f"outside the segment's seqs {first}-{last}")
        checkpoints.append(cp)
    return checkpoints


def check_segment_checkpoints(
    checkpoints: Sequence[Checkpoint], entries: Sequence[LedgerEntry], station_id: str,
    public_key: Ed25519PublicKey, enrolled_keys: Mapping[str, Ed25519PublicKey] | None = None,
    stored_rotations: Sequence[LedgerEntry] = (),
) -> list[Checkpoint]:
    """The checkpoints to keep: those signed by a key of the station, each checked to sign its entry's hash
    within that key's epoch.

    The station's keys are the enrolled key, every key it was ever enrolled with (``enrolled_keys``: after a
    rotation the segment still carries the old key's checkpoints at the entries before it, which every
    package lists that key for) and the old keys the ``key_rotated`` entries announce; the epochs are those
    of the station's rotations the central already holds (``stored_rotations``) and of the segment's (a
    retired key signs nothing after its rotation, a new one nothing before), wherever they lie: disclosure
    packages and spot checks apply them all, so a checkpoint kept outside them would fail every package
    that ships it. One signed by a key of none of these cannot be checked here and is not kept; one by a
    known key that does not verify, signs another hash or lies outside its key's epoch is refused
    (:class:`Rejection`).
    """
    by_seq = {entry.seq: entry for entry in entries}
    known: dict[str, Ed25519PublicKey] = dict(enrolled_keys or {})
    rotated = {e.seq: e for e in [*stored_rotations, *entries] if e.type == EntryType.KEY_ROTATED}
    rotations = []
    for entry in sorted(rotated.values(), key=lambda e: e.seq):
        try:
            rotations.append(ShippedRotation(entry, parse_rotation(entry.seq, entry.data)))
        except KeyFormatError:
            continue  # a malformed one: check_segment's chain check stands
    known.update((shipped.rotation.old_key_id, shipped.rotation.old_public_key) for shipped in rotations)
    known[key_id_of(public_key)] = public_key
    schedule = station_schedule(known, entries, rotations)
    kept = []
    for cp in checkpoints:
        key = known.get(cp.key_id)
        if key is None:
            continue
        outside = key_epoch_problem(schedule, cp.key_id, cp.seq)
        if outside is not None:
            raise Rejection(RejectCode.BAD_CHECKPOINT, f"the checkpoint at seq {cp.seq} {outside}")
        _check_checkpoint(cp, by_seq[cp.seq], station_id, key, signs="the segment's entry at its seq")
        kept.append(cp)
    return kept


def _parse_entry(raw: object, position: int) -> LedgerEntry:
    where = f"entries[{position}]"
    if not isinstance(raw, Mapping):
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"{where}: expected a ledger entry object, found "
            f"{type(raw).__name__}",
        )
    if set(raw) != set(_ENTRY_FIELDS):
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"{where}: expected exactly the members "
            f"{', '.join(_ENTRY_FIELDS)}, found {_show(sorted(raw))}",
        )
    seq = raw["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"{where}: seq must be a positive integer, found {_show(seq)}",
        )
    for name in ("time", "type", "prev", "hash"):
        if not isinstance(raw[name], str):
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"{where} (seq {seq}): {name} must be text, found "
                f"{type(raw[name]).__name__}",
            )
    for name in ("prev", "hash"):
        if not _HEX64_RE.fullmatch(raw[name]):
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"{where} (seq {seq}): {name} must be 64 lower-case hex "
                f"digits, found {_show(raw[name])}",
            )
    item = raw["item"]
    if item is not None and (not isinstance(item, str) or not item or len(item) > 200):
        raise Rejection(
            RejectCode.BAD_REQUEST,
            f"{where} (seq {seq}): item must be null or an id, found "
            f"{_show(item)}",
        )
    if not isinstance(raw["data"], dict):
        raise Rejection(RejectCode.BAD_REQUEST, f"{where} (seq {seq}): data must be an object")
    return LedgerEntry(seq=seq, time=raw["time"], type=raw["type"], item=item, data=raw["data"],
                       prev=raw["prev"], hash=raw["hash"])


def check_segment(
    entries: Sequence[LedgerEntry],
    checkpoint: Checkpoint,
    *,
    station_id: str,
    public_key: Ed25519PublicKey,
    head: tuple[int, str],
    accepted: Mapping[int, LedgerEntry],
    item_heads: Mapping[str, tuple[int, str]] | None = None,
) -> list[LedgerEntry]:
    """The entries of a segment the central does not hold yet, after every check; raises :class:`Rejection`.

    ``head`` is the station's accepted ``(seq, hash)``; ``accepted`` the stored entries the segment
    overlaps (seq <= head), which it must repeat exactly; ``item_heads`` the ``(seq, hash)`` of the last
    accepted entry of each item the new entries name (:meth:`Index.ledger_item_last`; an item missing from
    it has none, and None means the central holds none of the station's items, as at the genesis).

    Each new entry of an item that carries ``data.item_prev`` must name the hash of the item's previous
    entry (the segment's own, else the accepted one) or the genesis for the item's first: the link a
    disclosure package relies on to show that none of the item's entries was hidden. Entries without it
    (stations older than the item chain) are accepted as before.
    """
    for before, after in itertools.pairwise(entries):
        if after.seq != before.seq + 1:
            raise Rejection(
                RejectCode.LEDGER_GAP,
                f"the segment jumps from seq {before.seq} to seq "
                f"{after.seq}; entries must be consecutive",
            )
    head_seq, head_hash = head
    for entry in entries:
        if entry.seq > head_seq:
            break
        stored = accepted.get(entry.seq)
        if stored is None or stored.to_dict() != entry.to_dict():
            stored_hash = stored.hash if stored else "nothing"
            raise Rejection(
                RejectCode.LEDGER_FORK,
                f"seq {entry.seq} was accepted with hash {stored_hash}, "
                f"the segment has a different entry (hash {entry.hash}): "
                "the station's ledger forked",
            )
    new = [entry for entry in entries if entry.seq > head_seq]
    if new:
        first = new[0]
        if first.seq != head_seq + 1:
            raise Rejection(
                RejectCode.LEDGER_GAP,
                f"the accepted head is seq {head_seq}; the segment starts at "
                f"seq {first.seq}, so seqs {head_seq + 1}-{first.seq - 1} "
                "are missing",
            )
        if first.prev != head_hash:
            raise Rejection(
                RejectCode.LEDGER_FORK,
                f"seq {first.seq} links to prev {first.prev} but the "
                f"accepted seq {head_seq} has hash {head_hash}: the "
                "station's ledger forked",
            )
    _check_checkpoint(checkpoint, entries[-1], station_id, public_key, entries)
    if new:
        problems = verify_chain(new, [checkpoint], public_key, station_id, after=head)
        if not problems:
            problems = _item_chain_problems(new, item_heads or {})
        if problems:
            raise Rejection(
                RejectCode.BAD_CHAIN,
                f"{problems[0]}" + (
                f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
            )
    return new


def _item_chain_problems(
    new: Sequence[LedgerEntry], item_heads: Mapping[str, tuple[int, str]]
) -> list[Problem]:
    """Each new entry's ``item_prev`` against its item's previous entry (:class:`ItemChains`)."""
    chains = ItemChains(item_heads.get)
    problems: list[Problem] = []
    for entry in new:
        chains.feed(entry, problems)
    return problems


def _rotation_hint(entries: Sequence[LedgerEntry], station_id: str, key_id: str) -> str:
    """When the station announced the checkpoint's key with `edge keys rotate`, say what to do."""
    for entry in entries:
        if entry.type == EntryType.KEY_ROTATED and entry.data.get("new_key_id") == key_id:
            return (
                f"; the station rotated its ledger key at seq {entry.seq} (from "
                f"{_show(entry.data.get('old_key_id'))} to {key_id}), which the central accepts only "
                f"after re-enrollment: `edge central enroll {station_id} --signing-key STATION_KEY.pub "
                "--out DIR` with the station's new public key, then install the new bundle on the station"
            )
    return ""


def _check_checkpoint(
    cp: Checkpoint,
    last: LedgerEntry,
    station_id: str,
    public_key: Ed25519PublicKey,
    entries: Sequence[LedgerEntry] = (),
    signs: str = "the segment's last entry",
) -> None:
    if cp.station != station_id:
        raise Rejection(
            RejectCode.BAD_CHECKPOINT,
            f"checkpoint is for station {_show(cp.station)}, expected "
            f"{station_id}",
        )
    if (cp.seq, cp.hash) != (last.seq, last.hash):
        raise Rejection(
            RejectCode.BAD_CHECKPOINT,
            f"checkpoint signs seq {cp.seq} hash {_show(cp.hash)}; it "
            f"must sign {signs}, seq {last.seq} hash "
            f"{last.hash}",
        )
    enrolled = key_id_of(public_key)
    if cp.key_id != enrolled:
        raise Rejection(
            RejectCode.BAD_CHECKPOINT,
            f"checkpoint is signed by key {_show(cp.key_id)}, not the "
            f"station's enrolled key {enrolled}{_rotation_hint(entries, station_id, cp.key_id)}",
        )
    # verify_chain checks the signature again; here a bad one gets its own code rather than bad_chain.
    problems = verify_chain([], [cp], public_key, station_id, after=(cp.seq, cp.hash))
    if problems:
        raise Rejection(RejectCode.BAD_CHECKPOINT, str(problems[0]))


# -- manifests (pure) ------------------------------------------------------------------------------


def manifest_shape_problem(doc: object) -> str | None:
    """The first reason a manifest cannot be registered regardless of its signature, or None.

    A superset of what :func:`verify_manifest` checks about fields, so that once this passes every
    problem :func:`verify_manifest` reports is about the signature.
    """
    if not isinstance(doc, Mapping):
        return f"expected a manifest object, found {type(doc).__name__}"
    for name in REQUIRED_FIELDS:
        if name not in doc:
            return f"required field {name!r} is missing"
    item = doc.get("item")
    try:
        canonical_item = str(uuid.UUID(item)) if isinstance(item, str) and len(item) == 36 else None
    except ValueError:
        canonical_item = None
    if canonical_item != item:
        return f"item must be a lower-case hyphenated UUID, found {_show(item)}"
    sha = doc.get("sha256")
    if not (isinstance(sha, str) and _HEX64_RE.fullmatch(sha)):
        return f"sha256 must be 64 lower-case hex digits, found {_show(sha)}"
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"size must be an integer >= 0, found {_show(size)}"
    for name in ("source", "time", "case", "chain"):
        if not isinstance(doc.get(name), Mapping):
            return f"{name} must be an object, found {type(doc.get(name)).__name__}"
    station = doc["source"].get("station")
    if not isinstance(station, str) or not station:
        return f"source.station must name the station, found {_show(station)}"
    chain = doc["chain"]
    seq = chain.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return f"chain.seq must be a positive integer, found {_show(seq)}"
    for name in ("entry_hash", "hash"):
        if name in chain or name == "entry_hash":
            value = chain.get(name)
            if not (isinstance(value, str) and _HEX64_RE.fullmatch(value)):
                return f"chain.{name} must be 64 lower-case hex digits, found {_show(value)}"
    try:
        canonical_json(doc)
    except CanonicalJsonError as exc:
        return f"manifest is not canonical-JSON serialisable: {exc}"
    return None


# -- the registrar ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """An authenticated, enrolled, active station and where its request came from."""

    station: StationRecord
    remote: str | None = None

    @property
    def station_id(self) -> str:
        return self.station.station


@dataclass(frozen=True)
class Registered:
    receipt: Receipt
    replay: bool


def _ignore_duration(seconds: float) -> None:
    """The default :attr:`Registrar.on_content_verified`: nothing measures."""


class Registrar:
    """Accepts ledger segments and items for the central. No index or upload store call runs on the event
    loop (issue 13: on PostgreSQL and S3 each may wait for another receiver or the network): reads go to
    the unit of work's :meth:`~edge.central.storage.UnitOfWork.run_reads`, transactions (never awaiting
    inside) to its writer (:meth:`~edge.central.storage.UnitOfWork.run_writes`), upload store calls and
    hashing and chain verification to worker threads."""

    def __init__(
        self,
        index: Index,
        objects: ObjectStore,
        merkle: MerkleLogLike,
        uploads: UploadSource,
        *,
        signing_key: StationKey | None = None,
        central_id: str | None = None,
        clock: Callable[[], str] = station_time_now,
        retention: RetentionPolicy | None = None,
    ) -> None:
        if merkle.unit is not index.unit:
            # An acceptance writes the item rows and the Merkle leaf in one transaction of the index's
            # unit of work: a log elsewhere would keep a leaf whose item rows were rolled back, or lose it.
            raise ValueError(f"the Merkle log and the index must share one unit of work (one database): "
                             f"{merkle!r} writes in {merkle.unit!r}, {index!r} in {index.unit!r}")
        self.index = index
        self.objects = objects
        self.merkle = merkle
        self.uploads = uploads
        # With both, every receipt and ledger answer carries the station's witnessed head.
        self._signing_key = signing_key
        self._central_id = central_id
        self._clock = clock
        self.retention = retention if retention is not None else RetentionPolicy.default()
        self._station_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # station -> (the seq its stored key_rotated entries were read to, those entries): each segment reads
        # only the entries accepted since, not the station's whole ledger (:meth:`_stored_rotations`).
        self._rotations_read: dict[str, tuple[int, list[LedgerEntry]]] = {}
        # Told how long each re-hash of an upload's content took, in seconds (the central's metrics).
        self.on_content_verified: Callable[[float], object] = _ignore_duration

    def __repr__(self) -> str:
        return f"Registrar(index={self.index!r}, objects={self.objects!r})"

    def reject(
        self,
        rejection: Rejection,
        *,
        station: str | None,
        remote: str | None = None,
        item: str | None = None,
        upload: str | None = None,
    ) -> Rejection:
        """Log and record a rejection, and sign it when it is final; returns it for raising. Recording
        failure is logged, never hidden. The detail is bounded (:func:`bounded_detail`), also when it was
        changed after the rejection was made."""
        rejection.detail = bounded_detail(rejection.detail)
        log.warning("rejected station=%s item=%s upload=%s remote=%s: %s: %s", station, item, upload, remote,
                    rejection.code, rejection.detail,
                    extra=event_fields(event="rejected", station=station, item=item,
                                       refusal=str(rejection.code)))
        if station is not None and rejection.code in SIGNED_REFUSALS:
            # A fork is about the station's ledger, not about the item whose registration found it.
            about_item = rejection.code is not RejectCode.LEDGER_FORK
            rejection.refusal = self.sign_refusal(
                station, item if about_item else None, upload if about_item else None, str(rejection.code),
                rejection.detail,
            )
        try:
            self.index.record_rejection(station=station, code=str(rejection.code), detail=rejection.detail,
                                        remote=remote, item=item, upload=upload)
        except Exception:
            log.exception("could not record the rejection above in the index")
        return rejection

    async def rejected(
        self,
        rejection: Rejection,
        *,
        station: str | None,
        remote: str | None = None,
        item: str | None = None,
        upload: str | None = None,
    ) -> Rejection:
        """:meth:`reject` from a coroutine: the rejection is recorded by the index's writer, off the event
        loop."""
        return await self.index.unit.run_writes(functools.partial(
            self.reject, rejection, station=station, remote=remote, item=item, upload=upload))

    def sign_refusal(
        self, station: str, item: str | None, upload: str | None, code: str, detail: str
    ) -> dict[str, Any] | None:
        """A final refusal signed by the central (None when this central does not sign)."""
        if self._signing_key is None or self._central_id is None:
            return None
        try:
            return sign_refusal(central=self._central_id, station=station, item=item, upload=upload,
                                code=code, detail=detail, time=self._clock(), key=self._signing_key)
        except RefusalError as exc:
            # Names the station cannot match anyway (a malformed item id): unsigned, so it stays retryable.
            log.warning("refusal %s for station %s not signed: %s", code, station, exc)
            return None

    # -- ledger ----------------------------------------------------------------------------------

    async def ledger_head(self, caller: Caller, path_station: str) -> dict[str, Any]:
        """The station's accepted head, its newest checkpoint, the head witnessed and the log's tree head."""
        self._same_station(caller, path_station)
        checkpoint = await self.index.unit.run_reads(
            functools.partial(self.index.latest_checkpoint, caller.station_id), Readers.STATIONS)
        answer = await self.ledger_answer(caller)
        return {**answer, "checkpoint": checkpoint.to_dict() if checkpoint else None}

    def _tree_head_now(self) -> TreeHead:
        """The log's current signed tree head (signing one if the newest does not cover the log), in a
        transaction of its own."""
        with self.index.transaction():
            return self.merkle.tree_head()

    async def ledger_answer(self, caller: Caller) -> dict[str, Any]:
        """What the central says about a station's ledger: the accepted head ``(seq, hash)``, that head
        signed as witnessed (None before the first entry, or when the central does not witness), and the
        log's current signed tree head, so that the station can check the log's consistency."""
        def head_witnessed() -> tuple[int, str, WitnessedHead | None]:
            seq, hash_hex = self.index.ledger_head(caller.station_id)
            return seq, hash_hex, self.witnessed_head(caller.station, (seq, hash_hex))

        seq, hash_hex, witnessed = await self.index.unit.run_reads(head_witnessed, Readers.STATIONS)
        # In the writer's thread: the transaction may wait for another receiver's (issue 13).
        tree_head = await self.index.unit.run_writes(self._tree_head_now)
        return {
            "seq": seq,
            "hash": hash_hex,
            "witnessed_head": None if witnessed is None else witnessed.to_dict(),
            "tree_head": tree_head.to_dict(),
            # What this central takes in a ledger segment beyond entries and checkpoint: a station sends
            # its other checkpoints only to a central that says so (an older one refuses the member).
            "accepts": [SEGMENT_CHECKPOINTS, LEDGER_FORMAT_2],
        }

    def witnessed_head(
        self, station: StationRecord, head: tuple[int, str] | None = None
    ) -> WitnessedHead | None:
        """The station's accepted ledger head, signed by the central (None for an empty ledger)."""
        if self._signing_key is None or self._central_id is None:
            return None
        seq, hash_hex = head if head is not None else self.index.ledger_head(station.station)
        if seq == 0:
            return None
        return sign_witnessed_head(
            central=self._central_id, station=station.station, seq=seq, hash_hex=hash_hex,
            station_key_id=station.key_id, time=self._clock(), key=self._signing_key,
        )

    async def accept_segment(self, caller: Caller, path_station: str, doc: object) -> tuple[int, str]:
        """Verify and store a ledger segment; returns the accepted head. Raises :class:`Rejection`."""
        try:
            self._same_station(caller, path_station)
            return await self._accept_segment(caller, doc)
        except Rejection as rejection:
            raise await self.rejected(rejection, station=caller.station_id, remote=caller.remote) from None

    def _stored_rotations(self, index: Index, station_id: str, head_seq: int) -> list[LedgerEntry]:
        """The station's ``key_rotated`` entries the central holds up to ``head_seq``; read incrementally
        (only the entries accepted since the last read), another instance's acceptances included. Called
        under the station's lock, in a worker thread."""
        read_to, found = self._rotations_read.get(station_id, (0, []))
        if head_seq > read_to:
            found = [*found, *index.ledger_entries(station_id, read_to + 1, end_seq=head_seq,
                                                   type_=EntryType.KEY_ROTATED)]
            self._rotations_read[station_id] = (head_seq, found)
        return [entry for entry in found if entry.seq <= head_seq]

    def _kept_checkpoints(self, signed: Sequence[Checkpoint], entries: Sequence[LedgerEntry], station_id: str,
                          public_key: Ed25519PublicKey, head_seq: int) -> list[Checkpoint]:
        """:func:`check_segment_checkpoints` with the station's enrolled keys and stored rotations read on a
        snapshot of the index (a worker thread: the first push after a start reads the station's rotations
        over its whole stored ledger)."""
        with self.index.snapshot() as index:
            keys = index.station_keys(station_id)
            rotations = self._stored_rotations(index, station_id, head_seq)
        return check_segment_checkpoints(signed, entries, station_id, public_key, keys, rotations)

    async def _accept_segment(self, caller: Caller, doc: object) -> tuple[int, str]:
        entries, checkpoint = parse_segment(doc)
        assert isinstance(doc, Mapping)  # parse_segment refused anything else
        signed = parse_segment_checkpoints(doc, entries)
        station_id = caller.station_id
        public_key = self._enrolled_key(caller)
        async with self._station_locks[station_id]:
            head, accepted, item_heads = await self.index.unit.run_reads(
                functools.partial(self._segment_context, station_id, entries), Readers.STATIONS)
            new = await asyncio.to_thread(
                check_segment, entries, checkpoint, station_id=station_id, public_key=public_key, head=head,
                accepted=accepted, item_heads=item_heads,
            )
            kept = await asyncio.to_thread(self._kept_checkpoints, signed, entries, station_id, public_key,
                                           head[0])
            now = self._clock()

            def store_segment() -> list[PendingLock]:
                with self.index.transaction():
                    if self.index.ledger_head(station_id) != head:  # unreachable under the lock; a guard
                        raise Rejection(
                            RejectCode.LEDGER_FORK,
                            "the accepted head moved during verification; retry",
                        )
                    self.index.insert_ledger_entries(station_id, new, now)
                    # In seq order (the final one last), as the station signed them.
                    for cp in sorted([*kept, checkpoint], key=lambda cp: cp.seq):
                        self.index.insert_checkpoint(cp, now)
                    wanted = []
                    for entry in new:
                        if entry.type == EntryType.TAGGED:
                            self.index.apply_tag(station_id, entry, now)
                            lock = self._lock_wanted(station_id, entry, now)
                            if lock is not None:
                                wanted.append(lock)
                    return wanted

            # In the writer's thread: the transaction may wait for another receiver's (issue 13).
            wanted = await self.index.unit.run_writes(store_segment)
        await self.lock_extender().extend(wanted)
        if new:
            log.info("station %s ledger accepted seq %d-%d", station_id, new[0].seq, new[-1].seq,
                     extra=event_fields(event="ledger_accepted", station=station_id, seq=new[-1].seq))
        return await self.index.unit.run_reads(functools.partial(self.index.ledger_head, station_id),
                                               Readers.STATIONS)

    def _segment_context(
        self, station_id: str, entries: Sequence[LedgerEntry]
    ) -> tuple[tuple[int, str], dict[int, LedgerEntry], dict[str, tuple[int, str]]]:
        """What a segment is checked against (read in :meth:`UnitOfWork.run_reads`): the accepted head, the
        stored entries the segment overlaps, and the last accepted entry of each item its new entries name
        (the segment is bounded, so are these point lookups)."""
        head = self.index.ledger_head(station_id)
        overlap_end = min(head[0], entries[-1].seq)
        accepted = {
            e.seq: e for e in self.index.ledger_entries(station_id, entries[0].seq, end_seq=overlap_end)
        }
        item_heads = {
            item: last
            for item in {e.item for e in entries if e.seq > head[0] and e.item is not None}
            if (last := self.index.ledger_item_last(station_id, item)) is not None
        }
        return head, accepted, item_heads

    # -- items -----------------------------------------------------------------------------------

    async def register_item(self, caller: Caller, path_station: str, doc: object) -> Registered:
        """Accept an item (or answer a replay); raises :class:`Rejection` after logging and recording it."""
        item: str | None = None
        upload: str | None = None
        if isinstance(doc, Mapping):
            manifest = doc.get("manifest")
            if isinstance(manifest, Mapping) and isinstance(manifest.get("item"), str):
                item = str(manifest["item"])[:64]
            if isinstance(doc.get("upload"), str):
                upload = str(doc["upload"])[:64]
        try:
            return await self._register_item(caller, path_station, doc)
        except Rejection as rejection:
            raise await self.rejected(rejection, station=caller.station_id, remote=caller.remote, item=item,
                                      upload=upload) from None

    async def _register_item(self, caller: Caller, path_station: str, doc: object) -> Registered:
        self._same_station(caller, path_station)
        if not isinstance(doc, Mapping):
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"expected a registration object, found {type(doc).__name__}",
            )
        extra = sorted(set(doc) - {"upload", "manifest", "ledger"})
        if extra:
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"registration has unknown members {_show(extra)}; expected "
                "upload, manifest and ledger",
            )
        named = doc.get("upload")
        upload_id = upload_source_key(caller.station_id, named) if isinstance(named, str) else None
        if upload_id is None:
            raise Rejection(
                RejectCode.BAD_REQUEST,
                f"upload must be the 32-hex-digit id the tus server "
                f"assigned, or mqtt:<file id> for a file sent over MQTT, found {_show(named)}",
            )
        manifest = doc.get("manifest")
        problem = manifest_shape_problem(manifest)
        if problem is not None:
            raise Rejection(RejectCode.BAD_MANIFEST, problem)
        assert isinstance(manifest, Mapping)
        manifest_station = manifest["source"]["station"]
        if manifest_station != caller.station_id:
            raise Rejection(
                RejectCode.WRONG_STATION,
                f"the manifest names station {_show(manifest_station)} "
                f"but the caller is station {caller.station_id}",
            )
        if doc.get("ledger") is not None:
            await self._accept_segment(caller, doc["ledger"])
        sha256, size = str(manifest["sha256"]), int(manifest["size"])
        manifest_text = canonical_json(manifest)
        replay = await self._replay(caller, manifest, manifest_text, upload_id)
        if replay is not None:
            return replay
        await self.index.unit.run_reads(functools.partial(self._check_signed_and_chained, caller, manifest),
                                        Readers.STATIONS)
        source = await asyncio.to_thread(self._finished_upload, caller, upload_id)
        if source.length != size or (source.sha256 is not None and source.sha256 != sha256):
            # Not leased to this registration: another one may be moving it (a retry on another receiver).
            removed = await asyncio.to_thread(self._discard_upload, upload_id, leased_to_us=False)
            raise Rejection(
                RejectCode.CONTENT_MISMATCH,
                f"upload {upload_id} holds {source.length} bytes with "
                f"SHA-256 {source.sha256}; the manifest says {size} "
                f"bytes with SHA-256 {sha256}; "
                + ("the upload was removed" if removed else "another registration holds the upload"),
            )
        # The shared store's claim may wait for a purge on another receiver (review 13 #4, #6).
        staged, path, received = await asyncio.to_thread(self._content_of, upload_id)
        try:
            registered = await self._register_claimed(caller, manifest, manifest_text, upload_id, staged,
                                                      path, received)
        except BaseException:
            # The claim leased the upload to this registration, which failed: the lease must not refuse
            # the station's termination (423) for the hour it would run.
            await asyncio.to_thread(self._release_lease, upload_id)
            raise
        await asyncio.to_thread(self._discard_upload, upload_id, leased_to_us=True)
        return registered

    async def _register_claimed(
        self, caller: Caller, manifest: Mapping[str, Any], manifest_text: bytes, upload_id: str,
        staged: StagedContent | None, path: Path | None, received: ReceivedContent | None,
    ) -> Registered:
        """The registration's steps once :meth:`_content_of` leased it the upload: the content into the
        object store, then the index's transaction."""
        item, sha256 = str(manifest["item"]), str(manifest["sha256"])
        retention = self.retention.for_class(RetentionPolicy.class_of(manifest), parse_utc(self._clock()),
                                             item=item)
        started = time.monotonic()
        try:
            if staged is not None:
                await asyncio.to_thread(staged.store, sha256, retention)
            else:
                assert path is not None
                await asyncio.to_thread(self._put_content, path, sha256, retention, received)
        except ObjectMismatch as exc:
            await asyncio.to_thread(self._discard_upload, upload_id, leased_to_us=True)
            raise Rejection(
                RejectCode.CONTENT_MISMATCH,
                f"upload {upload_id}: {exc}; the upload was "
                "removed",
            ) from None
        except ObjectCorrupt as exc:
            raise Rejection(RejectCode.STORE_DAMAGED, str(exc)) from None
        except ObjectStoreUnavailable as exc:
            log.error("object store unavailable for item %s: %s", item, exc)
            raise Rejection(
                RejectCode.STORE_UNAVAILABLE,
                f"the central cannot reach its object store ({exc}); nothing was stored: keep the item and "
                "retry later",
            ) from None
        except (ObjectStoreError, OSError) as exc:
            log.exception("object store failed for item %s", item)
            raise Rejection(
                RejectCode.STORE_DAMAGED,
                f"the central could not store the content: {exc}",
            ) from None
        finally:
            self.on_content_verified(time.monotonic() - started)
        wanted: list[PendingLock] = []
        # In the writer's thread: the transaction may wait for another receiver's (issue 13).
        registered = await self.index.unit.run_writes(
            functools.partial(self._commit, caller, manifest, manifest_text, upload_id, wanted))
        await self.lock_extender().extend(wanted)
        return registered

    def _content_of(self, upload_id: str) -> tuple[StagedContent | None, Path | None, ReceivedContent | None]:
        """The finished upload's content: staged in the bucket, or a local file with the receive path's
        hash of it (a worker thread: the upload store may wait for its database)."""
        try:
            staged = self.uploads.staged(upload_id)
            path = self.uploads.complete_path(upload_id) if staged is None else None
        except Exception:
            if self._safe_get(upload_id) is not None:
                raise
            # The expiry purge (any receiver) took it between the checks and the claim.
            raise Rejection(RejectCode.UPLOAD_NOT_FOUND, f"upload {upload_id} expired and was purged; "
                                                         "upload the item again") from None
        return staged, path, self.uploads.received(upload_id)

    def _check_signed_and_chained(self, caller: Caller, manifest: Mapping[str, Any]) -> None:
        """The manifest's signature and its chain against the accepted ledger (reads the index)."""
        self._check_signature(caller, manifest)
        self._check_chain(caller.station_id, manifest)

    def _put_content(
        self, path: Path, sha256: str, retention: Retention, received: ReceivedContent | None
    ) -> None:
        """Move the upload's content into the object store (runs in a worker thread)."""
        try:
            self.objects.put_file(path, sha256, retention, received=received)
        except FileNotFoundError:
            # An earlier attempt moved the content in and failed before its commit: the upload's record
            # outlived its file. The object is content-addressed; re-hashing it decides.
            problem = self.objects.verify(sha256)
            if problem is not None:
                raise ObjectMismatch(sha256, f"nothing usable ({problem})", 0) from None
            log.info("object %s was already moved in by an earlier attempt; using it", sha256)
            self.objects.retain(sha256, retention)

    def lock_extender(self) -> LockExtender:
        """Asks this registrar's object store for the pending locks of its index."""
        return LockExtender(self.index, self.objects, self._clock)

    def _lock_wanted(self, station_id: str, entry: LedgerEntry, now: str) -> PendingLock | None:
        """For a tag that changes an accepted item's retention class: record (in the caller's transaction)
        the lock the new class needs, counted from acceptance; the store is asked after the commit, and
        until it confirms (:mod:`edge.central.lock_extensions`). A tag never refuses the ledger: it is
        the station's signed fact; the lock is the central's to get."""
        changes = entry.data.get("changes")
        if not (isinstance(changes, Mapping) and "retention" in changes and entry.item is not None):
            return None
        record = self.index.item(entry.item)
        if record is None or record.station != station_id:
            return None  # not accepted yet: registration locks it for the class it then has
        try:
            retention = self.retention.for_class(changes["retention"], parse_utc(record.accepted_utc),
                                                 item=record.item)
        except ValueError as exc:
            log.error("item %s: retention class changed to %r but its acceptance time %r cannot be read "
                      "(%s); `edge verify` names its lock", record.item, str(changes["retention"])[:80],
                      record.accepted_utc, exc, extra=event_fields(event="retention_not_extended",
                                                                   item=record.item, station=station_id))
            return None
        log.info("item %s: retention class %r; its object %s is to be locked until %s%s", record.item,
                 str(changes["retention"])[:80], record.sha256, retention.until.isoformat(),
                 " with a legal hold" if retention.legal_hold else "")
        return self.index.want_lock(record.item, record.sha256, retention, now)

    def _lock_for_stored_tags(
        self, item: str, manifest: Mapping[str, Any], accepted_utc: str
    ) -> PendingLock | None:
        """When tags accepted before the item changed its class from the manifest's (the content was locked
        for the manifest's), record the lock the class it now has needs (the caller's transaction)."""
        now_class = self.index.current_case(item).get("retention")
        if now_class in (None, "") or now_class == RetentionPolicy.class_of(manifest):
            return None
        retention = self.retention.for_class(now_class, parse_utc(accepted_utc), item=item)
        return self.index.want_lock(item, str(manifest["sha256"]), retention, accepted_utc)

    def _commit(
        self, caller: Caller, manifest: Mapping[str, Any], manifest_text: bytes, upload_id: str,
        wanted: list[PendingLock],
    ) -> Registered:
        item = str(manifest["item"])
        with self.index.transaction():
            # Another request for the same item may have committed while the content was hashed.
            existing = self.index.item(item)
            if existing is not None:
                self._replay_of(caller, existing, manifest, manifest_text)
                receipt = self._receipt(existing.leaf_index, caller.station)
                log.info("item %s accepted concurrently; answering as a replay", item)
                return Registered(receipt, replay=True)
            accepted_utc = self._clock()
            leaf = make_leaf_entry(
                item=item, sha256=str(manifest["sha256"]), size=int(manifest["size"]),
                station=caller.station_id, manifest_sha256=sha256_hex(manifest_text),
                accepted_utc=accepted_utc,
            )
            leaf_index = self.merkle.append(leaf)
            self.index.insert_item(manifest, station_id=caller.station_id, leaf_index=leaf_index,
                                   accepted_utc=accepted_utc)
            lock = self._lock_for_stored_tags(item, manifest, accepted_utc)
            if lock is not None:
                wanted.append(lock)
            receipt = self._receipt(leaf_index, caller.station)
        source = manifest.get("source")
        device = source.get("device_serial") if isinstance(source, Mapping) else None
        log.info("item %s from station %s accepted: leaf %d, tree size %d, upload %s", item,
                 caller.station_id, leaf_index, receipt.tree_size, upload_id,
                 extra=event_fields(event="accepted", item=item, station=caller.station_id, device=device,
                                    leaf=leaf_index))
        return Registered(receipt, replay=False)

    async def receipt(self, item: str) -> Receipt | None:
        """:meth:`receipt_for` from a coroutine: in the index's writer (it may sign a tree head)."""
        return await self.index.unit.run_writes(functools.partial(self.receipt_for, item))

    def receipt_for(self, item: str) -> Receipt | None:
        """A fresh receipt for an accepted item against the current tree head (signs one if needed); blocks
        (a coroutine awaits :meth:`receipt`)."""
        record = self.index.item(item)
        if record is None:
            return None
        station = self.index.station(record.station)
        return self._receipt_now(record.leaf_index, station)

    def _receipt_now(self, leaf_index: int, station: StationRecord | None) -> Receipt:
        """:meth:`_receipt` in a transaction of its own."""
        with self.index.transaction():
            return self._receipt(leaf_index, station)

    def _receipt(self, leaf_index: int, station: StationRecord | None) -> Receipt:
        head = self.merkle.tree_head()
        proof = self.merkle.inclusion_proof(leaf_index, head.tree_size)
        witnessed = None if station is None else self.witnessed_head(station)
        return make_receipt(self.merkle.leaf(leaf_index), leaf_index, proof, head, witnessed)

    async def _replay(
        self, caller: Caller, manifest: Mapping[str, Any], manifest_text: bytes, upload_id: str
    ) -> Registered | None:
        existing = await self.index.unit.run_reads(functools.partial(self.index.item, str(manifest["item"])),
                                                   Readers.STATIONS)
        if existing is None:
            return None
        self._replay_of(caller, existing, manifest, manifest_text)
        info = await asyncio.to_thread(self._safe_get, upload_id)
        if info is not None and info.station == caller.station_id and info.offset == info.length:
            # A re-upload of content already held; not leased to this registration (a concurrent one may
            # hold it, and removes it itself).
            await asyncio.to_thread(self._discard_upload, upload_id, leased_to_us=False)
        log.info("item %s replayed by station %s: same receipt leaf %d", existing.item, caller.station_id,
                 existing.leaf_index, extra=event_fields(event="replayed", item=existing.item,
                                                         station=caller.station_id))
        # In the writer's thread: the transaction may wait for another receiver's (issue 13).
        receipt = await self.index.unit.run_writes(
            functools.partial(self._receipt_now, existing.leaf_index, caller.station))
        return Registered(receipt, replay=True)

    @staticmethod
    def _replay_of(
        caller: Caller, existing: ItemRecord, manifest: Mapping[str, Any], manifest_text: bytes
    ) -> None:
        """Refuse a registration that reuses an accepted item id for anything but the same item."""
        if existing.sha256 != manifest["sha256"]:
            raise Rejection(
                RejectCode.ITEM_CONFLICT,
                f"item {existing.item} was accepted with SHA-256 "
                f"{existing.sha256}, this registration says "
                f"{manifest['sha256']}",
            )
        if existing.station != caller.station_id:
            raise Rejection(
                RejectCode.ITEM_CONFLICT,
                f"item {existing.item} was accepted from station "
                f"{existing.station}, not {caller.station_id}",
            )
        if existing.manifest_text.encode("utf-8") != manifest_text:
            raise Rejection(
                RejectCode.ITEM_CONFLICT,
                f"item {existing.item} was accepted with a different "
                "manifest; a signed manifest is never changed",
            )

    def _check_signature(self, caller: Caller, manifest: Mapping[str, Any]) -> None:
        public_key = self._enrolled_key(caller)
        retired = self._retired_signer(caller.station_id, manifest)
        problems = verify_manifest(manifest, {key_id_of(key): key for key in (public_key, retired) if key})
        if problems:
            raise Rejection(
                RejectCode.BAD_SIGNATURE,
                f"{problems[0].what} (the station's enrolled key is "
                f"{key_id_of(public_key)})",
            )

    def _retired_signer(self, station_id: str, manifest: Mapping[str, Any]) -> Ed25519PublicKey | None:
        """A key the station was enrolled with before `edge keys rotate`, when it was still the
        station's key as the item was acquired: the accepted ledger retires it after the manifest's
        chain seq. An item sealed before a rotation and uploaded after the re-enrollment verifies."""
        signature = manifest.get("signature")
        key_id = signature.get("key_id") if isinstance(signature, Mapping) else None
        chain_seq = manifest["chain"]["seq"]
        if not isinstance(key_id, str) or not isinstance(chain_seq, int):
            return None
        for rotation in self.index.ledger_entries(station_id, chain_seq + 1, type_=EntryType.KEY_ROTATED):
            if rotation.data.get("old_key_id") == key_id:
                return self.index.station_keys(station_id).get(key_id)
        return None

    def _check_chain(self, station_id: str, manifest: Mapping[str, Any]) -> None:
        chain = manifest["chain"]
        seq, entry_hash = int(chain["seq"]), str(chain["entry_hash"])
        head_seq, _ = self.index.ledger_head(station_id)
        if seq > head_seq:
            raise Rejection(
                RejectCode.CHAIN_UNKNOWN,
                f"manifest chain.seq {seq} is beyond the accepted ledger "
                f"head seq {head_seq}: send the ledger segment up to it",
            )
        entry = self.index.ledger_entry(station_id, seq)
        if entry is None:
            raise Rejection(
                RejectCode.STORE_DAMAGED,
                f"accepted ledger seq {seq} of station {station_id} is "
                "missing from the index",
            )
        item = manifest["item"]
        if entry.hash != entry_hash:
            raise Rejection(
                RejectCode.CHAIN_MISMATCH,
                f"manifest chain names seq {seq} with hash {entry_hash}; "
                f"the accepted entry at seq {seq} has hash {entry.hash}",
            )
        if entry.type != EntryType.ACQUIRED or entry.item != item:
            raise Rejection(
                RejectCode.CHAIN_MISMATCH,
                f"accepted ledger seq {seq} is a {_show(entry.type)} "
                f"entry for item {_show(entry.item)}, not the acquired "
                f"entry of item {item}",
            )
        for name in ("sha256", "size"):
            if name in entry.data and entry.data[name] != manifest[name]:
                raise Rejection(
                    RejectCode.CHAIN_MISMATCH,
                    f"the acquired entry at seq {seq} records {name} "
                    f"{_show(entry.data[name])}, the manifest "
                    f"{_show(manifest[name])}",
                )

    def _finished_upload(self, caller: Caller, upload_id: str) -> UploadFacts:
        info = self._safe_get(upload_id)
        # Another station's upload is reported exactly like a missing one: existence is not leaked.
        if info is None or info.station != caller.station_id:
            raise Rejection(
                RejectCode.UPLOAD_NOT_FOUND,
                f"no upload {upload_id} of station {caller.station_id}",
            )
        if info.offset != info.length:
            raise Rejection(
                RejectCode.UPLOAD_INCOMPLETE,
                f"upload {upload_id} holds {info.offset} of "
                f"{info.length} bytes; finish it before registering",
            )
        return info

    def _safe_get(self, upload_id: str) -> UploadFacts | None:
        try:
            return self.uploads.get(upload_id)
        except (ValueError, OSError) as exc:
            log.warning("upload %s cannot be read: %s", upload_id, exc)
            return None

    def _discard_upload(self, upload_id: str, *, leased_to_us: bool) -> bool:
        """Remove the upload; when this registration holds no lease on it, only if no other one does
        (that one removes it when done). False when it was left (or could not be removed)."""
        try:
            if leased_to_us:
                self.uploads.remove(upload_id)
                return True
            if self.uploads.remove_unleased(upload_id):
                return True
            log.info("upload %s was left: another registration holds it, or it is gone", upload_id)
        except Exception as exc:  # the expiry purge will get it; the answer to the station must not fail
            log.warning("upload %s could not be removed: %s", upload_id, exc)
        return False

    def _release_lease(self, upload_id: str) -> None:
        try:
            self.uploads.release_lease(upload_id)
        except Exception as exc:  # it runs out by itself (an hour); the answer must not fail
            log.warning("upload %s: the failed registration's lease could not be released: %s", upload_id,
                        exc)

    def _enrolled_key(self, caller: Caller) -> Ed25519PublicKey:
        try:
            return caller.station.public_key()
        except KeyFormatError as exc:
            raise Rejection(
                RejectCode.STORE_DAMAGED,
                f"station {caller.station_id}'s enrolled key is "
                f"damaged: {exc}",
            ) from None

    @staticmethod
    def _same_station(caller: Caller, path_station: str) -> None:
        if path_station != caller.station_id:
            raise Rejection(
                RejectCode.WRONG_STATION,
                f"station {caller.station_id} cannot act for station "
                f"{_show(path_station)}",
            )
