"""The station's append-only, hash-chained custody ledger, kept in SQLite.

Each entry is ``{seq, time, type, item, data, prev}``; the first entry has ``prev = "0" * 64``. Two hash
formats exist:

- format 1 (entries written before 2026-12): ``SHA-256(bytes.fromhex(prev) || canonical_json(entry))``;
- format 2 (every entry since; its ``data`` carries a random ``entry_salt``):
  ``SHA-256("evidence-edge ledger 2" || prev || seq || item_tag || body_digest)`` with ``body_digest =
  SHA-256(canonical_json(entry))`` and ``item_tag`` a hash of the entry's item and seq (of its salt and seq
  when it names no item), see :func:`item_tag`.

Format 2 exists for disclosure packages (:mod:`edge.custody.disclosure`): an entry a package must not show
(another case's) is shipped as ``{seq, prev, hash, item_tag, body_sha256}``, and its hash can still be
recomputed, so the chain binds every shown entry through it to one station signature. A reader who knows a
disclosed item's id can test every redacted line's tag against it and so see that none of the item's
entries was hidden; without the id (a uuid) a tag says nothing, and the salt keeps a guessable body (a
station restart) from being confirmed by its digest.
Signed checkpoints over ``{station, seq, hash, time}`` pin the chain: an attacker who edits an entry and
recomputes every later hash still cannot produce the signed hash at a checkpointed seq.

The ledger lives in a connection the caller owns and never commits: the caller wraps a state change and
its ledger entry in one transaction (``with conn:``), so a crash leaves both or neither.

The ledger signs a checkpoint itself at seq 1 and whenever ``checkpoint_every`` entries have gone by
without one, in the same transaction as the entry (by default at every entry: a disclosure package can
then prove each disclosed entry by the station's own signature, whatever other cases' entries lie between,
:mod:`edge.custody.disclosure`), so a ledger with entries but no checkpoint, or a run
of more entries without one than the station declared (``checkpoint_every`` in its ``station_started``
entries), means checkpoint rows were deleted: :func:`verify_ledger` names both.

What verification cannot see on its own: a rewrite after the newest checkpoint, or the deletion of
checkpoint rows together with the entries they cover, or anything done by someone who also holds the
station key. The central's witnessed heads (:mod:`edge.custody.witness`) close that gap;
:func:`verify_chain` takes checkpoints from any source.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import CanonicalJsonError, LedgerError
from edge.custody.keys import StationKey, verify_signature
from edge.custody.keyschedule import KEY_ROTATED, KeySchedule
from edge.custody.problems import Problem

__all__ = [
    "CHECKPOINT_EVERY",
    "ENTRY_SALT",
    "GENESIS_PREV",
    "ITEM_PREV",
    "Checkpoint",
    "EntryType",
    "ItemChains",
    "ItemTagTester",
    "Ledger",
    "LedgerEntry",
    "LedgerKeyFacts",
    "Problem",
    "RedactedEntry",
    "entry_format",
    "entry_hash",
    "format2_hash",
    "item_tag",
    "ledger_key_facts",
    "ledger_key_schedule",
    "redact",
    "station_time_now",
    "verify_chain",
    "verify_ledger",
]

log = logging.getLogger(__name__)

GENESIS_PREV = "0" * 64
# Default cadence of the checkpoints the ledger signs by itself: at most this many entries in a row go
# without one. A station declares its cadence in each `station_started` entry (`checkpoint_every`).
# Every entry by default: a redacted line's hash cannot be recomputed, so a disclosed entry is bound to the
# station's signature only through a chain of whole entries to a signed checkpoint; with a checkpoint at
# each entry that chain is the entry itself (cost: tests/bench/checkpoints.py).
CHECKPOINT_EVERY = 1
MAX_CHECKPOINT_EVERY = 100_000
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_MAX_ITEM_CHARS = 200


class EntryType(StrEnum):
    """Ledger entry types. Values are stored and hashed; never rename one."""

    STATION_STARTED = "station_started"
    STATION_STOPPED = "station_stopped"
    DEVICE_CONNECTED = "device_connected"
    DEVICE_AUTHENTICATED = "device_authenticated"
    DEVICE_REMOVED = "device_removed"
    CLOCK_MEASURED = "clock_measured"
    CLOCK_SET = "clock_set"
    SESSION_STARTED = "session_started"
    SESSION_STOPPED = "session_stopped"
    ACQUIRED = "acquired"
    VERIFIED = "verified"
    DUPLICATE = "duplicate"
    SEALED = "sealed"
    SEGMENT_SEALED = "segment_sealed"
    TAGGED = "tagged"
    QUEUED = "queued"
    # An operator sent an item the central had refused back to the upload queue (`edge uplink retry`).
    REQUEUED = "requeued"
    UPLOADED = "uploaded"
    RECEIPT = "receipt"
    # A sealed item's stored copy, found damaged, was copied again from the original its source still
    # holds (same bytes, same signed manifest): the `error` entry before it says what was found.
    REACQUIRED = "reacquired"
    WIPED = "wiped"
    WIPE_DEFERRED = "wipe_deferred"
    RETRIEVED = "retrieved"
    PURGED = "purged"
    ERROR = "error"
    REFUSED = "refused"
    GAP = "gap"
    # A room session (edge.rooms): an operator's mark (打点), and a change of its case fields or persons.
    # (Its start and end are session_started/session_stopped with "kind": "room".)
    MARK = "mark"
    SESSION_CHANGED = "session_changed"
    # A room session's products (edge.rooms.products): a source's segments joined into one MP4 (which
    # segments, by hash), all of a stopped session's products (joined files, statement) made, a document
    # attached to the session (the 笔录), the session written to a disc image (edge.rooms.export).
    JOINED = "joined"
    ROOM_PRODUCTS = "room_products"
    ATTACHED = "attached"
    EXPORTED = "exported"
    # The store's disk runs out while a room records (edge.rooms.space): low, critical, cleared.
    SPACE_WARNING = "space_warning"
    CHECKPOINT = "checkpoint"
    # The station's check of the central's log failed (a split view or a rewritten log): the uplink stops.
    WITNESS_ALARM = "witness_alarm"
    # An operator cleared a witness alarm (`edge witness clear`): who, why, which alarm, what is trusted.
    WITNESS_ALARM_CLEARED = "witness_alarm_cleared"
    KEY_ROTATED = KEY_ROTATED  # `edge keys rotate`: see edge.custody.keyschedule
    # The agent reread its configuration on SIGHUP (edge.config.reload): applied, or refused and why.
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_REFUSED = "config_refused"
    # A command from the central over MQTT (edge.mqtt.command_handler), executed or refused, and why.
    COMMAND = "command"
    # Equipment issue and return (edge.equipment): an officer list imported (counts and a digest, never a
    # PIN), an officer suspended or reinstated, a recorder checked out to an officer (领用) and returned
    # (归还). Refused check-outs are `refused` entries with "what": "check-out".
    OFFICERS_IMPORTED = "officers_imported"
    OFFICER_STATUS = "officer_status"
    OFFICER_PIN_SET = "officer_pin_set"  # who set whose PIN; never the PIN or its hash
    # The central's signed officer list applied (edge.equipment.officer_sync): version, digest, counts.
    OFFICERS_SYNCED = "officers_synced"
    ASSIGNED = "assigned"
    RETURNED = "returned"
    OVERDUE = "overdue"  # a recorder out past [equipment] overdue_after_h: once per assignment


def station_time_now() -> str:
    """Station UTC time as ISO-8601 with microseconds and ``Z``, the ledger's time format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _valid_time(text: object) -> bool:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


# The member of an entry's data that holds its salt (32 hex digits, random per entry): its presence makes the
# entry format 2 (module docstring). The ledger writes it; callers may not.
ENTRY_SALT = "entry_salt"
_SALT_RE = re.compile(r"[0-9a-f]{32}")
_FORMAT2_DOMAIN = b"evidence-edge ledger 2\n"
_ITEM_TAG_DOMAIN = b"evidence-edge ledger item tag\n"
_NO_ITEM_TAG_DOMAIN = b"evidence-edge ledger no item\n"


def entry_format(data: object) -> int:
    """2 when an entry's data carries :data:`ENTRY_SALT`, else 1."""
    return 2 if isinstance(data, Mapping) and ENTRY_SALT in data else 1


def item_tag(item: str | None, seq: int, salt: str) -> str:
    """The tag a format-2 entry's hash commits to, as hex: ``SHA-256(domain || item || seq)`` for an entry
    of an item, ``SHA-256(other domain || salt || seq)`` for one of none.

    A reader holding a disclosed item's id recomputes its tag at each redacted seq: equal means an entry of
    that item was hidden. The seq makes one item's tags unlinkable to each other; the salt makes an
    item-less entry's tag indistinguishable from an unknown item's. Raises :class:`LedgerError` for a
    malformed salt."""
    if not isinstance(salt, str) or not _SALT_RE.fullmatch(salt):
        raise LedgerError(f"expected {ENTRY_SALT} to be 32 lower-case hex digits, found {str(salt)[:80]!r}")
    position = b"\n" + str(seq).encode("ascii")
    if item is None:
        return hashlib.sha256(_NO_ITEM_TAG_DOMAIN + bytes.fromhex(salt) + position).hexdigest()
    return hashlib.sha256(_ITEM_TAG_DOMAIN + item.encode("utf-8") + position).hexdigest()


class ItemTagTester:
    """Which of some item ids a format-2 redacted line's tag names, at its seq (:func:`item_tag`).

    One SHA-256 state per item, hashed once: each test then costs one copy and a few bytes per item."""

    def __init__(self, items: Iterable[str]) -> None:
        self._prefixes: list[tuple[str, Any]] = []
        for item in sorted(set(items)):
            state = hashlib.sha256(_ITEM_TAG_DOMAIN)
            state.update(item.encode("utf-8"))
            self._prefixes.append((item, state))

    def item_of(self, seq: int, tag: str) -> str | None:
        """The item whose entry at ``seq`` would carry ``tag``, None when none of them."""
        position = b"\n" + str(seq).encode("ascii")
        for item, prefix in self._prefixes:
            state = prefix.copy()
            state.update(position)
            if state.hexdigest() == tag:
                return item
        return None


def format2_hash(prev: str, seq: int, tag: str, body_sha256: str) -> str:
    """The format-2 chain hash from its four parts (hex); what a redacted line is recomputed from.

    Raises :class:`LedgerError` when a part is malformed."""
    for name, value in (("prev", prev), ("item_tag", tag), ("body_sha256", body_sha256)):
        if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
            raise LedgerError(f"expected {name} to be 64 lower-case hex digits, found {str(value)[:80]!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**63:
        raise LedgerError(f"expected seq to be a positive integer, found {str(seq)[:80]!r}")
    return hashlib.sha256(_FORMAT2_DOMAIN + bytes.fromhex(prev) + seq.to_bytes(8, "big") + bytes.fromhex(tag)
                          + bytes.fromhex(body_sha256)).hexdigest()


def _format2_parts(body: Mapping[str, Any]) -> tuple[str, str]:
    """(item tag, body digest) of a format-2 entry body."""
    data = body.get("data")
    assert isinstance(data, Mapping)
    item = body.get("item")
    if item is not None and not isinstance(item, str):
        raise LedgerError(f"expected item to be None or text, found {type(item).__name__}")
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise LedgerError(f"expected seq to be an integer, found {type(seq).__name__}")
    return item_tag(item, seq, data[ENTRY_SALT]), hashlib.sha256(canonical_json(body)).hexdigest()


def entry_hash(body: Mapping[str, Any]) -> str:
    """The entry's chain hash as hex, in its format (module docstring).

    Raises :class:`LedgerError` when ``prev`` is not 64 hex digits or a format-2 part is malformed, and
    :class:`CanonicalJsonError` when the body cannot be serialised.
    """
    prev = body.get("prev")
    if not isinstance(prev, str) or not _HEX64_RE.fullmatch(prev):
        raise LedgerError(f"expected prev to be 64 lower-case hex digits, found {str(prev)[:80]!r}")
    if entry_format(body.get("data")) == 2:
        tag, digest = _format2_parts(body)
        return format2_hash(prev, body["seq"], tag, digest)
    return hashlib.sha256(bytes.fromhex(prev) + canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: str
    type: str
    item: str | None
    data: dict[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed part of the entry (everything but ``hash``)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "item": self.item,
            "data": self.data,
            "prev": self.prev,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the station's ledger had ``hash`` at ``seq`` at ``time``."""

    station: str
    seq: int
    hash: str
    time: str
    key_id: str
    signature: str  # base64 of the Ed25519 signature over signed_payload()

    def signed_payload(self) -> bytes:
        return checkpoint_payload(self.station, self.seq, self.hash, self.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "station": self.station,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Build from a received document, checking field types; raises :class:`LedgerError`."""
        fields: dict[str, Any] = {}
        for name, kind in (("station", str), ("seq", int), ("hash", str), ("time", str),
                           ("key_id", str), ("signature", str)):
            value = doc.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise LedgerError(
                    f"checkpoint: expected {name} of type {kind.__name__}, found {type(value).__name__}"
                )
            fields[name] = value
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class RedactedEntry:
    """An entry shown only by its place in the chain: ``seq``, ``prev`` and its stored ``hash``, and for a
    format-2 entry its ``item_tag`` and ``body_sha256``.

    A disclosure package (:mod:`edge.custody.disclosure`) shows entries of items the reader may not see
    this way, so that the chain around the disclosed entries still links. A format-2 line's hash is
    recomputed from its parts (:func:`verify_chain`), so the chain binds through it; a format-1 line's
    cannot be, and only its link is checked: what it says, and what it hides, is not proven.
    """

    seq: int
    prev: str
    hash: str
    item_tag: str | None = None
    body_sha256: str | None = None

    @property
    def recomputable(self) -> bool:
        return self.item_tag is not None and self.body_sha256 is not None

    def recomputed_hash(self) -> str | None:
        """The hash its parts give (format 2), None for a format-1 line; :class:`LedgerError` when a part
        is malformed."""
        if self.item_tag is None or self.body_sha256 is None:
            return None
        return format2_hash(self.prev, self.seq, self.item_tag, self.body_sha256)


def redact(entry: LedgerEntry) -> RedactedEntry:
    """The entry as a package shows it when it must not show its content (:class:`RedactedEntry`)."""
    if entry_format(entry.data) == 2:
        tag, digest = _format2_parts(entry.body())
        return RedactedEntry(entry.seq, entry.prev, entry.hash, tag, digest)
    return RedactedEntry(entry.seq, entry.prev, entry.hash)


def checkpoint_payload(station: str, seq: int, hash_hex: str, time: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    return canonical_json({"station": station, "seq": seq, "hash": hash_hex, "time": time})


# The member of an item entry's data that names the hash of the same item's previous entry (GENESIS_PREV for
# the item's first). It chains each item's entries on their own, inside the station's chain: a disclosure
# package shows only some entries of the ledger, and this link is what lets a reader see that none of a
# disclosed item's entries was hidden as a redacted line or cut off the end. Entries written before
# stations recorded it have none ("chain not recorded").
ITEM_PREV = "item_prev"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    item TEXT,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS ledger_item ON ledger (item, seq) WHERE item IS NOT NULL;
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS ledger_checkpoints_seq ON ledger_checkpoints (seq);
CREATE TRIGGER IF NOT EXISTS ledger_extends_head BEFORE INSERT ON ledger
WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM ledger)
  OR NEW.prev IS NOT coalesce((SELECT hash FROM ledger ORDER BY seq DESC LIMIT 1), '{genesis}')
BEGIN SELECT RAISE(ABORT, 'ledger insert must extend the head (seq = head + 1, prev = head hash)'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_update BEFORE UPDATE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS ledger_checkpoints_no_delete BEFORE DELETE ON ledger_checkpoints
BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only: DELETE refused'); END;
""".replace("{genesis}", GENESIS_PREV)


class Ledger:
    """Appends to and reads the ledger in a caller-owned SQLite connection. Never commits."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        station_id: str,
        key: StationKey,
        *,
        checkpoint_every: int | None = None,
        scrub: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        """`scrub` rewrites each entry's data before it is hashed and stored: the station uses it to keep
        its own paths out of error prose (entries leave the station, :mod:`edge.custody.text`)."""
        if not station_id:
            raise LedgerError("expected a non-empty station id")
        self._conn = conn
        self.station_id = station_id
        self._key = key
        self._listeners: list[Callable[[LedgerEntry], None]] = []
        # Unless told, keep the cadence the station last declared, so that every writer of the store
        # (the agent, `edge tag`) keeps the promise `edge verify` checks.
        self.checkpoint_every = checkpoint_every or declared_cadence(conn) or CHECKPOINT_EVERY
        self._scrub = scrub

    def __repr__(self) -> str:
        return f"Ledger(station_id={self.station_id!r}, key_id={self._key.key_id!r})"

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        """Create the tables, index and append-only triggers if missing (idempotent).

        Triggers stop our own code from breaking the chain by accident (UPDATE, DELETE, INSERT OR
        REPLACE, an insert that does not extend the head); they are no defence against someone with
        write access to the file, which is what the hash chain and checkpoints are for.
        """
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                conn.execute(statement)

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest entry, ``(0, GENESIS_PREV)`` when empty.

        Read from the table each time (no cache): a rolled-back transaction must not leave a stale head.
        """
        row = self._conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return 0, GENESIS_PREV
        seq, hash_hex = row
        if not isinstance(seq, int) or not isinstance(hash_hex, str) or not _HEX64_RE.fullmatch(hash_hex):
            raise LedgerError(f"ledger head row is damaged: seq {seq!r}, hash {str(hash_hex)[:80]!r}")
        return seq, hash_hex

    def append(
        self, type: str, item: str | None, data: Mapping[str, Any], *, time: str | None = None
    ) -> LedgerEntry:
        """Insert the next entry inside the caller's transaction and return it.

        Raises :class:`LedgerError` for an invalid argument, and when another writer took the same seq
        (the UNIQUE seq makes such a race fail loudly instead of forking the chain).
        """
        type_text = str(type)
        if not _TYPE_RE.fullmatch(type_text):
            raise LedgerError(f"expected a lower_snake entry type, found {type_text[:80]!r}")
        if item is not None and (not isinstance(item, str) or not item or len(item) > _MAX_ITEM_CHARS):
            raise LedgerError(f"expected item to be None or a non-empty id string, found {str(item)[:80]!r}")
        if not isinstance(data, Mapping):
            raise LedgerError(f"expected data to be a mapping, found {data.__class__.__name__}")
        if self._scrub is not None:
            data = self._scrub(data)
        if item is not None:
            data = self._with_item_prev(item, data)
        data = self._with_salt(data)
        if time is None:
            time = station_time_now()
        elif not _valid_time(time):
            raise LedgerError(f"expected time like 2024-01-31T08:00:00.000000Z, found {str(time)[:80]!r}")
        try:
            data_text = canonical_json(data)
        except CanonicalJsonError as exc:
            raise LedgerError(f"ledger data for {type_text} is not canonical-JSON serialisable: "
                              f"{exc}") from None
        # The entry carries exactly what is stored, so the returned hash equals a verifier's recomputation.
        stored_data: dict[str, Any] = parse_json(data_text)
        head_seq, head_hash = self.head()
        body: dict[str, Any] = {
            "seq": head_seq + 1,
            "time": time,
            "type": type_text,
            "item": item,
            "data": stored_data,
            "prev": head_hash,
        }
        entry = LedgerEntry(hash=entry_hash(body), **body)
        try:
            self._conn.execute(
                "INSERT INTO ledger (seq, time, type, item, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.time, entry.type, entry.item, data_text.decode("utf-8"), entry.prev,
                 entry.hash),
            )
        except sqlite3.IntegrityError as exc:
            raise LedgerError(
                f"ledger seq {entry.seq} was taken by another writer while appending {type_text}: {exc}"
            ) from exc
        log.debug("ledger seq %d %s item=%s", entry.seq, entry.type, entry.item)
        if entry.seq == 1 or entry.seq - self._last_checkpoint_seq() >= self.checkpoint_every:
            self.checkpoint()
        for listener in self._listeners:
            try:
                listener(entry)
            except Exception:  # a listener (the uplink's push trigger) must never fail an append
                log.exception("ledger listener failed after seq %d", entry.seq)
        return entry

    @staticmethod
    def _with_salt(data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with a fresh :data:`ENTRY_SALT`: the entry is format 2 (module docstring)."""
        if ENTRY_SALT in data:
            raise LedgerError(f"ledger data must not carry {ENTRY_SALT}: the ledger writes it")
        return {**data, ENTRY_SALT: secrets.token_hex(16)}

    def _with_item_prev(self, item: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with :data:`ITEM_PREV`: the hash of the item's newest entry (read by the ``ledger_item``
        index inside the caller's transaction, so it is the entry this one follows), or the genesis."""
        if ITEM_PREV in data:
            raise LedgerError(f"ledger data must not carry {ITEM_PREV}: the ledger computes it")
        row = self._conn.execute(
            "SELECT hash FROM ledger WHERE item = ? ORDER BY seq DESC LIMIT 1", (item,)
        ).fetchone()
        return {**data, ITEM_PREV: row[0] if row is not None else GENESIS_PREV}

    def add_listener(self, listener: Callable[[LedgerEntry], None]) -> None:
        """Call ``listener(entry)`` after each append, possibly from a worker thread and before the
        caller's transaction commits (so it may only schedule work that reads the ledger later)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[LedgerEntry], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _last_checkpoint_seq(self) -> int:
        row = self._conn.execute("SELECT max(seq) FROM ledger_checkpoints").fetchone()
        return int(row[0]) if row is not None and isinstance(row[0], int) else 0

    def checkpoint(self, at_seq: int | None = None) -> Checkpoint | None:
        """Sign the current head (or the entry at ``at_seq``) and store the checkpoint (in the caller's
        transaction).

        Returns None for an empty ledger, and the existing checkpoint when that entry is already signed
        (a periodic timer on an idle station adds no rows). ``at_seq`` serves the uplink, which sends
        a long backlog to the central in bounded segments, each ending at a signed entry.
        """
        head_seq, head_hash = self.head()
        if head_seq == 0:
            return None
        if at_seq is not None and at_seq != head_seq:
            row = self._conn.execute("SELECT hash FROM ledger WHERE seq=?", (at_seq,)).fetchone()
            if row is None or not isinstance(row[0], str) or not _HEX64_RE.fullmatch(row[0]):
                raise LedgerError(f"cannot checkpoint seq {at_seq}: no such entry (head is {head_seq})")
            head_seq, head_hash = at_seq, row[0]
        # This key's own checkpoint at the seq, if any: at a key rotation the new key signs the entry as it is
        # appended and again after the old key vouched for it, and must not add a second row of its own.
        latest = self._conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM ledger_checkpoints "
            "WHERE seq=? AND key_id=? ORDER BY id DESC LIMIT 1",
            (head_seq, self._key.key_id),
        ).fetchone()
        if latest is not None:
            existing = _checkpoint_from_row(latest)
            if (existing.seq, existing.hash, existing.station, existing.key_id) == (
                head_seq, head_hash, self.station_id, self._key.key_id
            ):
                return existing
        time = station_time_now()
        signature = self._key.sign(checkpoint_payload(self.station_id, head_seq, head_hash, time))
        cp = Checkpoint(
            station=self.station_id,
            seq=head_seq,
            hash=head_hash,
            time=time,
            key_id=self._key.key_id,
            signature=base64.b64encode(signature).decode("ascii"),
        )
        self._conn.execute(
            "INSERT INTO ledger_checkpoints (station, seq, hash, time, key_id, signature) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (cp.station, cp.seq, cp.hash, cp.time, cp.key_id, cp.signature),
        )
        log.info("ledger checkpoint at seq %d signed by %s", cp.seq, cp.key_id)
        return cp

    def entries(self, start_seq: int = 1, item: str | None = None) -> Iterator[LedgerEntry]:
        """Entries in seq order from ``start_seq``, optionally only those of one item.

        Raises :class:`LedgerError` naming the seq of a row that cannot be decoded; use
        :func:`verify_ledger` to examine a possibly damaged table.
        """
        if item is None:
            cursor = self._conn.execute(
                "SELECT seq, time, type, item, data, prev, hash FROM ledger WHERE seq >= ? ORDER BY seq",
                (start_seq,),
            )
        else:
            cursor = self._conn.execute(
                "SELECT seq, time, type, item, data, prev, hash FROM ledger WHERE item = ? AND seq >= ? "
                "ORDER BY seq",
                (item, start_seq),
            )
        for row in cursor:
            entry, problem = _entry_from_row(row)
            if entry is None:
                raise LedgerError(str(problem))
            yield entry

    def entries_of_types(self, types: Iterable[str], start_seq: int = 1) -> Iterator[LedgerEntry]:
        """Entries of the given types in seq order from ``start_seq`` (the selection is SQLite's, so a
        long ledger is not decoded entry by entry in Python)."""
        wanted = sorted(set(types))
        if not wanted:
            return
        marks = ", ".join("?" for _ in wanted)
        cursor = self._conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM ledger "
            f"WHERE type IN ({marks}) AND seq >= ? ORDER BY seq",
            (*wanted, start_seq),
        )
        for row in cursor:
            entry, problem = _entry_from_row(row)
            if entry is None:
                raise LedgerError(str(problem))
            yield entry

    def checkpoints(self, first_seq: int = 1, last_seq: int | None = None) -> list[Checkpoint]:
        """Stored checkpoints in seq order, optionally only those at seqs ``first_seq``..``last_seq``."""
        rows = self._conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM ledger_checkpoints "
            "WHERE seq >= ? AND seq <= ? ORDER BY seq, id",
            (first_seq, last_seq if last_seq is not None else 2**62),
        ).fetchall()
        return [_checkpoint_from_row(row) for row in rows]

    def verify(self, public_key: Ed25519PublicKey | None = None) -> list[Problem]:
        """Verify this station's ledger table (with its own key unless another is given)."""
        return verify_ledger(self._conn, public_key or self._key.public_key(), self.station_id)


def cadence_of(entry_type: object, data: object) -> int | None:
    """The checkpoint cadence a ``station_started`` entry declares, None for any other entry."""
    if entry_type != EntryType.STATION_STARTED or not isinstance(data, Mapping):
        return None
    value = data.get("checkpoint_every")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CHECKPOINT_EVERY:
        return value
    return None


def declared_cadence(conn: sqlite3.Connection) -> int | None:
    """The cadence the newest ``station_started`` entry declares (None when none declares one)."""
    try:
        row = conn.execute(
            "SELECT data FROM ledger WHERE type = ? ORDER BY seq DESC LIMIT 1", (EntryType.STATION_STARTED,)
        ).fetchone()
    except sqlite3.OperationalError:  # no ledger table yet
        return None
    if row is None or not isinstance(row[0], str):
        return None
    try:
        return cadence_of(EntryType.STATION_STARTED, parse_json(row[0]))
    except CanonicalJsonError:
        return None


def _checkpoint_from_row(row: tuple[Any, ...]) -> Checkpoint:
    try:
        names = ("station", "seq", "hash", "time", "key_id", "signature")
        return Checkpoint.from_dict(dict(zip(names, row, strict=True)))
    except LedgerError as exc:
        raise LedgerError(f"damaged checkpoint row: {exc}") from None


def _entry_from_row(row: tuple[Any, ...]) -> tuple[LedgerEntry | None, Problem | None]:
    """Decode a raw row; on failure return the Problem naming its seq instead of raising."""
    seq, time, type_, item, data_text, prev, hash_hex = row
    if not isinstance(seq, int):
        return None, Problem(f"ledger seq {seq!r}", f"expected an integer seq, found {type(seq).__name__}")
    where = f"ledger seq {seq}"
    columns = (("time", time), ("type", type_), ("data", data_text), ("prev", prev), ("hash", hash_hex))
    for name, value in columns:
        if not isinstance(value, str):
            return None, Problem(where, f"expected {name} to be text, found {type(value).__name__}")
    if item is not None and not isinstance(item, str):
        return None, Problem(where, f"expected item to be text or NULL, found {type(item).__name__}")
    try:
        data = parse_json(data_text)
    except CanonicalJsonError as exc:
        return None, Problem(where, f"data column is not valid JSON ({exc}); the row was altered")
    if not isinstance(data, dict):
        return None, Problem(where, f"expected data to be a JSON object, found {type(data).__name__}")
    return LedgerEntry(seq=seq, time=time, type=type_, item=item, data=data, prev=prev, hash=hash_hex), None


class _ChainWalker:
    """Checks linkage, content hashes and checkpoints in one pass.

    Checkpoints come as a stream in seq order and are checked as the entries reach them, so memory stays
    bounded whatever the number of checkpoints (a station signs one at every entry by default). Problems
    keep the order of a walker that checked every checkpoint first: those given at the start, then
    unreadable checkpoint rows, then checkpoints that are not authentic, then what the entries show.
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint | Problem],
        keys: KeySchedule,
        station_id: str,
        after: tuple[int, str],
        problems: Iterable[Problem] = (),
    ) -> None:
        """``checkpoints`` in seq order; a :class:`Problem` among them is an unreadable checkpoint row."""
        self.problems: list[Problem] = list(problems)
        self._rows_end = self._authentic_end = len(self.problems)
        self._keys = keys
        self._station_id = station_id
        self._last_seq, self._last_hash = after
        self._start_seq = after[0]
        self._last_good_checkpoint = 0
        # (seq, key id) of the checkpoints at rotation seqs whose signature verified: a rotation needs
        # its old key's. Only those seqs are kept, so this stays as small as the rotations.
        self._rotation_seqs = {rotation.seq for rotation in keys.rotations}
        self._signed: set[tuple[int, str]] = set()
        self._stream = iter(checkpoints)
        self._next: Checkpoint | None = None  # the next authentic checkpoint, pulled but not matched yet
        self._stream_done = False
        # The checkpoint cadence (verify_ledger only): the newest authentic checkpoint at or before the
        # entry being fed, the declared (every, at seq), and an open run of too many unsigned entries.
        self._last_cp_seq = 0
        self._cadence: tuple[int, int] | None = None
        self._run: tuple[int, int, int] | None = None  # (first unsigned seq, every, declared at)
        self.authentic_checkpoints = 0
        first = self._peek()
        if first is not None and first.seq == self._start_seq and self._start_seq > 0:
            self._match_checkpoints(self._start_seq, self._last_hash)

    def _front(self, problem: Problem, *, row: bool = False) -> None:
        """Insert a checkpoint's problem where a walker that checked them all first would have it."""
        if row:
            self.problems.insert(self._rows_end, problem)
            self._rows_end += 1
        else:
            self.problems.insert(self._authentic_end, problem)
        self._authentic_end += 1

    def _peek(self) -> Checkpoint | None:
        """The next authentic checkpoint at or after the start seq, None when the stream is done."""
        while self._next is None and not self._stream_done:
            try:
                cp = next(self._stream)
            except StopIteration:
                self._stream_done = True
                break
            if isinstance(cp, Problem):
                self._front(cp, row=True)
            elif self._checkpoint_is_authentic(cp, self._station_id) and cp.seq >= self._start_seq:
                self.authentic_checkpoints += 1
                self._next = cp
        return self._next

    def _pull(self, up_to_seq: int | None) -> Iterator[Checkpoint]:
        """Authentic checkpoints at seqs up to ``up_to_seq`` (all when None), each once, in seq order."""
        while (cp := self._peek()) is not None and (up_to_seq is None or cp.seq <= up_to_seq):
            self._next = None
            yield cp

    def _checkpoint_is_authentic(self, cp: Checkpoint, station_id: str) -> bool:
        where = f"checkpoint seq {cp.seq}"
        if not isinstance(cp.seq, int) or isinstance(cp.seq, bool) or cp.seq < 1:
            self._front(Problem(where, "expected a positive integer seq"))
            return False
        if cp.station != station_id:
            self._front(Problem(where, f"signed for station {cp.station!r}, expected {station_id!r}"))
            return False
        key = self._keys.get(cp.key_id)
        if key is None:
            if len(self._keys.keys) == 1:
                expected = f"expected the station key {self._keys.keys[0].key_id}"
            else:
                expected = (f"which no key_rotated entry announced (the station keys are "
                            f"{', '.join(k.key_id for k in self._keys.keys)})")
            self._front(Problem(where, f"signed by key {cp.key_id!r}, {expected}"))
            return False
        if key.retired_at is not None and cp.seq > key.retired_at:
            self._front(
                Problem(where, f"signed by key {key.key_id}, which was retired at seq {key.retired_at}: a "
                               f"retired key signs nothing after its rotation")
            )
            return False
        public_key = key.public_key
        try:
            signature = base64.b64decode(cp.signature.encode("ascii"), validate=True)
            payload = checkpoint_payload(cp.station, cp.seq, cp.hash, cp.time)
        except (binascii.Error, UnicodeEncodeError, CanonicalJsonError):
            signature, payload = b"", b""
        if not payload or not verify_signature(public_key, signature, payload):
            self._front(
                Problem(where, f"signature does not verify with station key {key.key_id}: "
                               f"the checkpoint was forged or altered")
            )
            return False
        if cp.seq in self._rotation_seqs:
            self._signed.add((cp.seq, key.key_id))
        return True

    def feed(self, seq: int, prev: str, stored_hash: str, recomputed_hash: str | None) -> None:
        where = f"ledger seq {seq}"
        if seq <= self._last_seq:
            self.problems.append(
                Problem(where, f"appears after seq {self._last_seq}: entries are out of order or duplicated")
            )
            return
        expected_seq = self._last_seq + 1
        if seq != expected_seq:
            missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seqs {expected_seq}-{seq - 1}"
            if self._last_seq == 0:
                what = f"missing: the ledger starts at seq {seq}, {missing} were deleted"
            else:
                what = f"missing: seq jumps from {self._last_seq} to {seq}, {missing} deleted"
            self.problems.append(Problem(f"ledger seq {expected_seq}", what))
        elif prev != self._last_hash:
            if self._last_seq == 0:
                what = f"prev is {prev[:80]!r}, expected the genesis value {GENESIS_PREV}"
            else:
                what = (
                    f"does not link to seq {self._last_seq}: its prev is {prev[:80]} but seq "
                    f"{self._last_seq} has hash {self._last_hash}; entries were reordered, replaced or "
                    f"inserted here"
                )
            self.problems.append(Problem(where, what))
        if recomputed_hash is not None and recomputed_hash != stored_hash:
            self.problems.append(
                Problem(where, f"content does not match its hash: stored {stored_hash[:80]}, recomputed "
                               f"{recomputed_hash}; the entry was edited")
            )
        self._match_checkpoints(seq, recomputed_hash or stored_hash)
        self._last_seq, self._last_hash = seq, stored_hash

    def _match_checkpoints(self, seq: int, content_hash: str) -> None:
        for cp in self._pull(seq):
            self._last_cp_seq = cp.seq
            where = f"checkpoint seq {cp.seq}"
            if cp.seq < seq:
                self.problems.append(
                    Problem(where, f"the ledger has no entry at seq {cp.seq}, which this signed checkpoint "
                                   f"covers: the entry was deleted")
                )
            elif cp.hash != content_hash:
                since = (
                    f" (the previous checkpoint, at seq {self._last_good_checkpoint}, matches)"
                    if self._last_good_checkpoint else ""
                )
                self.problems.append(
                    Problem(where, f"signed hash {cp.hash[:80]} but ledger seq {seq} hashes to "
                                   f"{content_hash[:80]}: the ledger was rewritten at or before "
                                   f"seq {seq}{since}")
                )
            else:
                self._last_good_checkpoint = cp.seq

    def declare_cadence(self, seq: int, every: int) -> None:
        """From ``seq`` on, the station promises a signed checkpoint at least every ``every`` entries."""
        self._cadence = (every, seq)

    def check_cadence(self, seq: int) -> None:
        """After feeding ``seq``: is it covered by a checkpoint close enough before it?"""
        for cp in self._pull(seq):  # none left when feed(seq) came first, as verify_ledger does
            self._last_cp_seq = cp.seq
        if self._last_cp_seq == seq:
            self._close_run(seq - 1)
        elif self._cadence is not None and self._run is None and seq - self._last_cp_seq >= self._cadence[0]:
            self._run = (self._last_cp_seq + 1, *self._cadence)

    def _close_run(self, last: int) -> None:
        if self._run is None:
            return
        first, every, declared_at = self._run
        self._run = None
        self.problems.append(Problem(
            f"ledger seqs {first}-{last}",
            f"{last - first + 1} entries in a row carry no signed checkpoint, but this station signs one at "
            f"least every {every} entries (declared at seq {declared_at}): checkpoint rows were deleted",
        ))

    def finish(self) -> list[Problem]:
        self._close_run(self._last_seq)
        for rotation in self._keys.rotations:
            if rotation.old_key_lost or rotation.seq <= self._start_seq or rotation.seq > self._last_seq:
                continue
            if (rotation.seq, rotation.old_key_id) not in self._signed:
                self.problems.append(
                    Problem(f"ledger seq {rotation.seq}",
                            f"key rotation from {rotation.old_key_id} to {rotation.new_key_id} carries no "
                            f"checkpoint signed by the old key at this seq: nothing vouches for the new key")
                )
        for cp in self._pull(None):
            ends = f"the ledger ends at seq {self._last_seq}" if self._last_seq else "the ledger is empty"
            self.problems.append(
                Problem(f"checkpoint seq {cp.seq}", f"{ends} but this signed checkpoint proves entries up to "
                                                    f"seq {cp.seq} existed: the tail was truncated")
            )
        return self.problems


def verify_chain(
    entries: Iterable[LedgerEntry | RedactedEntry],
    checkpoints: Iterable[Checkpoint],
    public_key: Ed25519PublicKey | KeySchedule,
    station_id: str,
    *,
    after: tuple[int, str] = (0, GENESIS_PREV),
) -> list[Problem]:
    """Verify entries (in the order given) against their hashes, each other and signed checkpoints.

    Hashes are recomputed from each entry's content; the stored ``hash`` is only compared, never
    trusted. ``after`` is the ``(seq, hash)`` the first entry must follow: the genesis by default, or a
    previously verified head when verifying a continuation (as the central does). ``public_key`` is the
    one key every checkpoint must be signed with, or a :class:`KeySchedule` of rotated keys. An empty
    list means the chain verifies.
    """
    keys = public_key if isinstance(public_key, KeySchedule) else KeySchedule.single(public_key)
    ordered = sorted(checkpoints, key=lambda cp: cp.seq if isinstance(cp.seq, int) else 0)
    walker = _ChainWalker(ordered, keys, station_id, after)
    for entry in entries:
        recomputed: str | None
        if isinstance(entry, RedactedEntry):
            # Format 2: recomputed from its parts. Format 1: only its link is checked (the entry after it
            # hashes this entry's hash as its prev).
            try:
                recomputed = entry.recomputed_hash()
            except LedgerError as exc:
                walker.problems.append(Problem(f"ledger seq {entry.seq}", f"cannot recompute hash: {exc}"))
                recomputed = None
            walker.feed(entry.seq, entry.prev, entry.hash, recomputed)
            continue
        try:
            recomputed = entry_hash(entry.body())
        except (LedgerError, CanonicalJsonError) as exc:
            walker.problems.append(Problem(f"ledger seq {entry.seq}", f"cannot recompute hash: {exc}"))
            recomputed = None
        walker.feed(entry.seq, entry.prev, entry.hash, recomputed)
    return walker.finish()


def ledger_key_schedule(
    conn: sqlite3.Connection, anchor: Ed25519PublicKey, anchor_name: str = "the station public key"
) -> tuple[KeySchedule, list[Problem]]:
    """The keys the ledger's ``key_rotated`` entries announce, anchored on the key the verifier trusts."""
    rotations: list[tuple[int, dict[str, Any] | None]] = []
    for seq, data_text in conn.execute(
        "SELECT seq, data FROM ledger WHERE type = ? ORDER BY seq", (KEY_ROTATED,)
    ):
        try:
            data = parse_json(data_text) if isinstance(data_text, str) else None
        except CanonicalJsonError:
            data = None
        rotations.append((seq, data if isinstance(data, dict) else None))
    return KeySchedule.from_rotations(rotations, anchor, anchor_name)


@dataclass(frozen=True)
class LedgerKeyFacts:
    """What a store's ledger says about the key that signs it."""

    head_seq: int
    checkpoints: int
    current_key_id: str | None  # None: nothing in the ledger names a key yet
    since_seq: int | None  # seq of the rotation that introduced the current key; None: from the start
    previous_key_id: str | None = None  # the key that rotation retired

    def describe(self) -> str:
        entries = f"{self.head_seq} {'entry' if self.head_seq == 1 else 'entries'}"
        if self.current_key_id is None:
            return f"the ledger has {entries} and no signed checkpoint names its key"
        since = f"since its key rotation at seq {self.since_seq}" if self.since_seq else "from the start"
        return (
            f"the ledger has {entries}, and its {self.checkpoints} checkpoint(s) are signed with key "
            f"{self.current_key_id} ({since})"
        )


def ledger_key_facts(conn: sqlite3.Connection) -> LedgerKeyFacts:
    """Read the ledger's length and the key it is signed with (the tables must exist): what a store
    checks its key file against before signing anything."""
    head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
    checkpoints = conn.execute("SELECT COUNT(*) FROM ledger_checkpoints").fetchone()[0]
    rotation = conn.execute(
        "SELECT seq, data FROM ledger WHERE type = ? ORDER BY seq DESC LIMIT 1", (KEY_ROTATED,)
    ).fetchone()
    if rotation is not None:
        try:
            data = parse_json(rotation[1])
        except CanonicalJsonError:
            data = None
        key_id = data.get("new_key_id") if isinstance(data, dict) else None
        old_id = data.get("old_key_id") if isinstance(data, dict) else None
        if isinstance(key_id, str):
            previous = old_id if isinstance(old_id, str) else None
            return LedgerKeyFacts(int(head), int(checkpoints), key_id, int(rotation[0]), previous)
    latest = conn.execute("SELECT key_id FROM ledger_checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    key_id = latest[0] if latest is not None and isinstance(latest[0], str) else None
    return LedgerKeyFacts(int(head), int(checkpoints), key_id, None)


class ItemChains:
    """Checks each entry's :data:`ITEM_PREV` against its item's previous entry while the ledger streams by.

    Holds one (seq, hash) per item seen (memory grows with the number of items, never with their entries);
    entries without the member (written before stations recorded it) are accepted as before, and still
    count as their item's previous entry for the next one. ``earlier(item)`` gives the item's last entry
    before the first one fed, ``(seq, hash)``, or None when it has none: a continuation (the central's
    accepted ledger before a new segment) is checked without streaming what came before it."""

    def __init__(self, earlier: Callable[[str], tuple[int, str] | None] | None = None) -> None:
        self._last: dict[str, tuple[int, str]] = {}
        self._earlier = earlier

    def feed(self, entry: LedgerEntry, problems: list[Problem]) -> None:
        """Check ``entry`` (the next in seq order) and remember it; a broken link is added to ``problems``
        as ``ledger seq N``, naming the item."""
        if entry.item is None:
            return
        previous = self._last.get(entry.item)
        if previous is None and self._earlier is not None:
            previous = self._earlier(entry.item)
        self._last[entry.item] = (entry.seq, entry.hash)
        if ITEM_PREV not in entry.data:
            return
        found = entry.data[ITEM_PREV]
        expected = previous[1] if previous is not None else GENESIS_PREV
        if found == expected:
            return
        shown = str(found)[:80]
        if previous is None:
            what = (f"is item {str(entry.item)[:80]}'s first entry, but its item_prev is {shown}, not the "
                    f"genesis value: an earlier entry of the item was deleted")
        else:
            what = (f"item_prev is {shown}, but item {str(entry.item)[:80]}'s previous entry "
                    f"(seq {previous[0]}) has hash {previous[1]}: an entry of the item was deleted, inserted "
                    f"or replaced")
        problems.append(Problem(f"ledger seq {entry.seq}", what))


def verify_ledger(
    conn: sqlite3.Connection, public_key: Ed25519PublicKey | KeySchedule, station_id: str
) -> list[Problem]:
    """Verify the ledger tables read raw from SQLite, reporting damaged rows instead of raising.

    Given one key (the station's current public key), the keys of any ``key_rotated`` entries are
    taken from the ledger, anchored on it; given a :class:`KeySchedule`, that one is used as it is
    (its own problems are the caller's to report).
    """
    problems: list[Problem] = []
    if isinstance(public_key, KeySchedule):
        keys = public_key
    else:
        keys, problems = ledger_key_schedule(conn, public_key)

    def checkpoint_rows() -> Iterator[Checkpoint | Problem]:
        """Streamed in seq order beside the entries: a station signs a checkpoint at every entry."""
        for row in conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM ledger_checkpoints ORDER BY seq, id"
        ):
            try:
                yield _checkpoint_from_row(row)
            except LedgerError as exc:
                yield Problem(f"checkpoint seq {row[1]!r}", str(exc))

    walker = _ChainWalker(checkpoint_rows(), keys, station_id, (0, GENESIS_PREV), problems)
    item_chains = ItemChains()
    cursor = conn.execute("SELECT seq, time, type, item, data, prev, hash FROM ledger ORDER BY seq")
    entries = 0
    for row in cursor:
        entries += 1
        entry, problem = _entry_from_row(row)
        if entry is None:
            assert problem is not None
            walker.problems.append(problem)
            if isinstance(row[0], int) and isinstance(row[5], str) and isinstance(row[6], str):
                walker.feed(row[0], row[5], row[6], None)
                walker.check_cadence(row[0])
            continue
        where = f"ledger seq {entry.seq}"
        recomputed: str | None
        try:
            recomputed = entry_hash(entry.body())
            if canonical_json(entry.data).decode("utf-8") != row[4]:
                walker.problems.append(Problem(where, "data column is not in canonical form: the row "
                                                      "was rewritten"))
        except (LedgerError, CanonicalJsonError) as exc:
            walker.problems.append(Problem(where, f"cannot recompute hash: {exc}"))
            recomputed = None
        if not _valid_time(entry.time):
            walker.problems.append(Problem(where, f"time {entry.time[:80]!r} is not UTC ISO-8601 "
                                                  "with microseconds"))
        walker.feed(entry.seq, entry.prev, entry.hash, recomputed)
        item_chains.feed(entry, walker.problems)
        every = cadence_of(entry.type, entry.data)
        if every is not None:
            walker.declare_cadence(entry.seq, every)
        walker.check_cadence(entry.seq)
    found = walker.finish()
    if entries and not walker.authentic_checkpoints:
        found.append(Problem("ledger", f"holds {entries} entries but no authentic signed checkpoint; the "
                                       f"ledger signs one at its first entry: checkpoint rows were deleted"))
    return found
