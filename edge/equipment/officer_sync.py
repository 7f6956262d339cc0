"""The central's officer list applied at a station: verified, never older, one transaction with its entry.

A list the central signed (:mod:`.officer_list`) replaces the officers the registry holds: listed officers
are added or updated (name, unit, status, card), officers it does not list are removed (their past
assignments keep their names by value), and each listed officer keeps the PIN hash set at this station
(PINs never travel). The `officers_synced` ledger entry carries the version, the list's digest, the
registry's digest afterwards and the counts; the version and digest in force are kept in state.db, so a
restarted agent neither loses the list nor takes an older one.

Refused, with a `refused` entry naming why and the registry unchanged: a list whose signature, shape or
officers do not verify; a version older than the one in force (a rollback); the version in force with
another digest (the central, or someone with its key, issued two lists under one number). A refusal is
recorded once per list offered, not at every poll.

Precedence of suspensions: suspended anywhere wins. `edge officers suspend` at the station is kept in
`officer_local_suspensions`, and a synced officer is suspended when the central's list or the station
says so. `edge officers activate` lifts the station's own suspension only: an officer the list in force
suspends stays suspended (the activation is refused and says so). While a central list is in force a
local CSV import is refused: the agency changes its list at the central.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.ledger import EntryType, station_time_now
from edge.equipment.officer_list import OfficerList, OfficerListError, verify_list
from edge.equipment.officers import Officer, OfficerRegistry, OfficerStatus
from edge.ingest.store import StationStore

__all__ = [
    "ListInForce",
    "OfficerListSync",
    "SyncOutcome",
    "SyncResult",
    "apply_officer_list",
    "central_status",
    "create_sync_schema",
    "list_in_force",
    "local_suspension",
]

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS officer_list_in_force (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        central TEXT NOT NULL,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        applied TEXT NOT NULL,          -- station UTC time
        applied_seq INTEGER NOT NULL    -- its officers_synced entry
    )""",
    """CREATE TABLE IF NOT EXISTS officer_central_status (
        officer_no TEXT PRIMARY KEY,
        status TEXT NOT NULL            -- what the list in force says, before local suspensions
    )""",
    """CREATE TABLE IF NOT EXISTS officer_local_suspensions (
        officer_no TEXT PRIMARY KEY,
        since TEXT NOT NULL
    )""",
)


class SyncOutcome(StrEnum):
    APPLIED = "applied"
    CURRENT = "current"      # the version in force, same digest: nothing to do
    REFUSED = "refused"


@dataclass(frozen=True)
class ListInForce:
    central: str
    version: int
    sha256: str
    issued_at: str
    applied: str


@dataclass(frozen=True)
class SyncResult:
    outcome: SyncOutcome
    version: int | None
    reason: str | None = None
    counts: dict[str, int] | None = None


def create_sync_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:  # execute, not executescript: no implicit commit
        conn.execute(statement)


def list_in_force(conn: sqlite3.Connection) -> ListInForce | None:
    create_sync_schema(conn)
    row = conn.execute(
        "SELECT central, version, sha256, issued_at, applied FROM officer_list_in_force WHERE id = 1"
    ).fetchone()
    return None if row is None else ListInForce(str(row[0]), int(row[1]), str(row[2]), str(row[3]),
                                                str(row[4]))


def central_status(conn: sqlite3.Connection, officer_no: str) -> OfficerStatus | None:
    """What the list in force says of ``officer_no`` (None: no list, or not on it)."""
    create_sync_schema(conn)
    row = conn.execute("SELECT status FROM officer_central_status WHERE officer_no = ?",
                       (officer_no,)).fetchone()
    return None if row is None else OfficerStatus(str(row[0]))


def local_suspension(conn: sqlite3.Connection, officer_no: str, suspended: bool, *, now: str) -> None:
    """Record (or lift) the station's own suspension of an officer (caller's transaction)."""
    create_sync_schema(conn)
    if suspended:
        conn.execute("INSERT OR IGNORE INTO officer_local_suspensions(officer_no, since) VALUES (?, ?)",
                     (officer_no, now))
    else:
        conn.execute("DELETE FROM officer_local_suspensions WHERE officer_no = ?", (officer_no,))


class OfficerListSync:
    """Applies the lists a station fetches; remembers which refusals it has recorded (once per list)."""

    def __init__(self, store: StationStore, central_key: Ed25519PublicKey) -> None:
        self.store = store
        self.central_key = central_key
        self._refused: set[str] = set()

    def current_version(self) -> int:
        held = list_in_force(self.store.conn)
        return 0 if held is None else held.version

    def offer(self, envelope: object, *, source: str) -> SyncResult:
        return apply_officer_list(self.store, envelope, self.central_key, source=source,
                                  refused_before=self._refused)


def _refuse(store: StationStore, reason: str, *, source: str, version: object, digest: object,
            refused_before: set[str] | None) -> SyncResult:
    marker = f"{version}:{digest}:{reason}"
    if refused_before is None or marker not in refused_before:
        store.record(EntryType.REFUSED, None, {
            "what": "officer list", "source": source, "reason": reason,
            # What the list claims, unverified: kept only when canonical JSON (and a reader) can hold it.
            "version": version if isinstance(version, int) and not isinstance(version, bool)
            and 0 <= version <= 2**53 - 1 else None,
            "officers_sha256": digest if isinstance(digest, str) and len(digest) == 64 and digest.isascii()
            and digest.isalnum() else None,
        })
        if refused_before is not None:
            refused_before.add(marker)
        log.warning("officer list from %s refused: %s", source, reason)
    shown = version if isinstance(version, int) and not isinstance(version, bool) \
        and 0 <= version <= 2**53 - 1 else None
    return SyncResult(SyncOutcome.REFUSED, shown, reason)


def _claimed(envelope: object) -> tuple[object, object]:
    """The version and digest a list says it has (for the refusal's record; unverified)."""
    doc = envelope.get("list") if isinstance(envelope, dict) else None
    if not isinstance(doc, dict):
        return None, None
    return doc.get("version"), doc.get("officers_sha256")


def apply_officer_list(store: StationStore, envelope: object, central_key: Ed25519PublicKey, *,
                       source: str, refused_before: set[str] | None = None) -> SyncResult:
    """Verify ``envelope`` and apply it (see the module docstring)."""
    try:
        verified = verify_list(envelope, central_key)
    except OfficerListError as exc:
        version, digest = _claimed(envelope)
        return _refuse(store, f"not a valid officer list: {exc}", source=source, version=version,
                       digest=digest, refused_before=refused_before)
    held = list_in_force(store.conn)
    if held is not None:
        if verified.version < held.version:
            return _refuse(store, f"version {verified.version} is older than version {held.version} in force "
                                  "(a rollback)", source=source, version=verified.version,
                           digest=verified.sha256, refused_before=refused_before)
        if verified.version == held.version:
            if verified.sha256 == held.sha256:
                return SyncResult(SyncOutcome.CURRENT, held.version)
            return _refuse(store, f"version {verified.version} is in force with another digest "
                                  f"({held.sha256[:16]}...): two lists under one version",
                           source=source, version=verified.version, digest=verified.sha256,
                           refused_before=refused_before)
    return _apply(store, verified, source)


def _apply(store: StationStore, verified: OfficerList, source: str) -> SyncResult:
    conn = store.conn
    registry = OfficerRegistry(conn)
    OfficerRegistry.create_schema(conn)
    create_sync_schema(conn)
    now = station_time_now()
    with store.transaction():
        before = {o.officer_no: o for o in registry.all()}
        locally_suspended = {str(r[0]) for r in
                             conn.execute("SELECT officer_no FROM officer_local_suspensions")}
        listed = {o.officer_no for o in verified.officers}
        removed = sorted(set(before) - listed)
        conn.executemany("DELETE FROM officers WHERE officer_no = ?", [(no,) for no in removed])
        # Cards may move between officers in one list: drop them all first (UNIQUE card_uid).
        registry.clear_cards(no for no in listed if no in before)
        added = updated = unchanged = suspended_here = 0
        for listed_officer in verified.officers:
            old = before.get(listed_officer.officer_no)
            officer: Officer = replace(listed_officer, pin_hash=old.pin_hash if old else None)
            if officer.officer_no in locally_suspended and officer.status is OfficerStatus.ACTIVE:
                officer = replace(officer, status=OfficerStatus.SUSPENDED)
                suspended_here += 1
            registry.put(officer, now=now)
            if old is None:
                added += 1
            elif old.public() != officer.public():
                updated += 1
            else:
                unchanged += 1
        conn.execute("DELETE FROM officer_central_status")
        conn.executemany("INSERT INTO officer_central_status(officer_no, status) VALUES (?, ?)",
                         [(o.officer_no, str(o.status)) for o in verified.officers])
        counts = {"officers": len(verified.officers), "added": added, "updated": updated,
                  "unchanged": unchanged, "removed": len(removed),
                  "cards": sum(1 for o in verified.officers if o.card_uid),
                  "suspended_by_list": sum(1 for o in verified.officers
                                           if o.status is OfficerStatus.SUSPENDED),
                  "suspended_here": suspended_here}
        data: dict[str, Any] = {
            "central": verified.central, "version": verified.version, "officers_sha256": verified.sha256,
            "issued_at": verified.issued_at, "key_id": verified.key_id, "source": source,
            "registry_sha256": registry.digest(), **counts,
        }
        entry = store.ledger.append(EntryType.OFFICERS_SYNCED, None, data)
        conn.execute(
            "INSERT INTO officer_list_in_force(id, central, version, sha256, issued_at, applied, "
            "applied_seq) VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "central = excluded.central, version = excluded.version, sha256 = excluded.sha256, "
            "issued_at = excluded.issued_at, applied = excluded.applied, applied_seq = excluded.applied_seq",
            (verified.central, verified.version, verified.sha256, verified.issued_at, now, entry.seq),
        )
    log.info("officer list version %d from %s applied: %d officers (%d added, %d updated, %d removed)",
             verified.version, source, len(verified.officers), added, updated, len(removed))
    return SyncResult(SyncOutcome.APPLIED, verified.version, counts=counts)
