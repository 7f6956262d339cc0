"""The central's index in SQLite: the tables, their append-only triggers, and :class:`SqliteIndex`.

History tables are append-only by trigger (the station ledgers and checkpoints, items, metadata history,
rejections, access log, enrolment events), and a station ledger row must extend that station's head;
the directories derived from history (officers, devices, cases, the current case fold of an item) are
upserted. The Merkle log's tables live in the same file (:mod:`edge.central.sqlite.log`), so that one
transaction of the shared :class:`~edge.central.sqlite.database.SqliteDatabase` covers an acceptance.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.index import (
    CASE_FIELDS,
    MAX_QUERY_LIMIT,
    CentralIndexError,
    ItemQuery,
    ItemRecord,
    ReaderRecord,
    ReaderScope,
    StationRecord,
    indexable_case,
    item_from_row,
    item_record_from_manifest,
    ledger_entry_from_row,
    text_or_none,
    validate_cert_sha256,
    validate_reader_name,
    validate_station_id,
)
from edge.central.sqlite.console import item_unit_for, scope_clause
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.errors import KeyFormatError
from edge.custody.keys import key_id_of, public_key_from_b64
from edge.custody.ledger import GENESIS_PREV, Checkpoint, LedgerEntry, station_time_now
from edge.durable.sqlite import apply_schema

if TYPE_CHECKING:
    from edge.central.sqlite.database import SqliteDatabase

__all__ = ["SqliteIndex", "create_schema"]

log = logging.getLogger(__name__)

_APPEND_ONLY = (
    "station_keys",
    "enrolment_events",
    "station_ledger",
    "station_checkpoints",
    "items",
    "metadata_history",
    "rejections",
    "access_log",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,          -- base64 raw Ed25519 key the station signs manifests/checkpoints with
    key_id TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL,         -- SHA-256 of the DER client certificate issued at enrolment
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_utc TEXT NOT NULL,
    revoked_utc TEXT,
    revoke_reason TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS station_keys (
    station TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    enrolled_utc TEXT NOT NULL,
    PRIMARY KEY (station, key_id)
) STRICT;
CREATE TABLE IF NOT EXISTS readers (
    name TEXT PRIMARY KEY,
    cert_sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_utc TEXT NOT NULL,
    revoked_utc TEXT,
    revoke_reason TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS enrolment_events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('station', 'reader')),
    name TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('enrolled', 'revoked')),
    key_id TEXT,
    cert_sha256 TEXT,
    reason TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS station_ledger (
    station TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    item TEXT,
    data TEXT NOT NULL,                -- canonical JSON, exactly as hashed
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    accepted_utc TEXT NOT NULL,
    PRIMARY KEY (station, seq)
) STRICT;
CREATE INDEX IF NOT EXISTS station_ledger_item ON station_ledger (item, station, seq) WHERE item IS NOT NULL;
-- A station's entries of one type (its key rotations, read at each push and spot check) without a scan.
CREATE INDEX IF NOT EXISTS station_ledger_type ON station_ledger (station, type, seq);
CREATE TABLE IF NOT EXISTS station_checkpoints (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    accepted_utc TEXT NOT NULL,
    UNIQUE (station, seq, hash, time, key_id, signature)
) STRICT;
CREATE INDEX IF NOT EXISTS station_checkpoints_seq ON station_checkpoints (station, seq);
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    station TEXT NOT NULL,
    manifest TEXT NOT NULL,            -- canonical JSON of the signed manifest, as received
    manifest_sha256 TEXT NOT NULL,
    officer_no TEXT,
    device_serial TEXT,
    acquired_utc TEXT NOT NULL,        -- station UTC time of acquisition (manifest time.acquired_utc)
    recorded_start TEXT,               -- as the device wrote it (device local time)
    chain_seq INTEGER NOT NULL,
    leaf_index INTEGER NOT NULL UNIQUE,
    accepted_utc TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS items_sha256 ON items (sha256);
CREATE INDEX IF NOT EXISTS items_acquired ON items (acquired_utc, item);
CREATE INDEX IF NOT EXISTS items_officer ON items (officer_no, acquired_utc, item);
CREATE INDEX IF NOT EXISTS items_device ON items (device_serial, acquired_utc, item);
CREATE INDEX IF NOT EXISTS items_station ON items (station, acquired_utc, item);
CREATE TABLE IF NOT EXISTS item_case (
    item TEXT PRIMARY KEY REFERENCES items (item),
    case_number TEXT,
    location TEXT,
    collector TEXT,
    subject TEXT,
    important INTEGER,
    category TEXT,
    retention TEXT,
    updated_utc TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS item_case_number ON item_case (case_number);
CREATE TABLE IF NOT EXISTS metadata_history (
    id INTEGER PRIMARY KEY,
    item TEXT NOT NULL REFERENCES items (item),
    source TEXT NOT NULL CHECK (source IN ('manifest', 'ledger')),
    station TEXT NOT NULL,
    ledger_seq INTEGER NOT NULL,       -- the acquired entry (manifest) or the tagged entry (ledger)
    time TEXT NOT NULL,                -- station time of the change
    changes TEXT NOT NULL,             -- canonical JSON {field: value}
    by TEXT,
    recorded_utc TEXT NOT NULL,
    UNIQUE (item, source, ledger_seq)
) STRICT;
CREATE TABLE IF NOT EXISTS officers (
    officer_no TEXT PRIMARY KEY,
    officer_name TEXT,
    unit_code TEXT,
    unit_name TEXT,
    first_seen_utc TEXT NOT NULL,
    last_seen_utc TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS devices (
    device_serial TEXT PRIMARY KEY,
    last_officer_no TEXT,
    last_station TEXT NOT NULL,
    first_seen_utc TEXT NOT NULL,
    last_seen_utc TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS cases (
    case_number TEXT PRIMARY KEY,
    first_seen_utc TEXT NOT NULL,
    last_seen_utc TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    station TEXT,
    remote TEXT,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    item TEXT,
    upload TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS access_log (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    reader TEXT NOT NULL,
    what TEXT NOT NULL,
    item TEXT,
    query TEXT,
    remote TEXT
) STRICT;
CREATE TRIGGER IF NOT EXISTS station_ledger_extends_head BEFORE INSERT ON station_ledger
WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM station_ledger WHERE station = NEW.station)
  OR NEW.prev IS NOT coalesce(
       (SELECT hash FROM station_ledger WHERE station = NEW.station ORDER BY seq DESC LIMIT 1), '{genesis}')
BEGIN SELECT RAISE(ABORT, 'station ledger insert must extend the head (seq = head + 1, prev = head)'); END
""".replace("{genesis}", GENESIS_PREV)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the index tables and triggers if missing (idempotent)."""
    apply_schema(conn, _SCHEMA, append_only=_APPEND_ONLY)


class SqliteIndex:
    """:class:`edge.central.storage.Index` in the tables of a :class:`SqliteDatabase`, whose unit of work
    it writes in (shared with the database's log store)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        # Only this package uses the connection; tests use it to play the attacker with the file.
        self.conn = database.conn
        self.path = database.path

    def __repr__(self) -> str:
        return f"SqliteIndex(path={str(self.path) if self.path else None!r})"

    @classmethod
    def open(cls, db_path: Path) -> SqliteIndex:
        """The index of the database at ``db_path`` (opened, with its log store, as
        :meth:`SqliteDatabase.open`); :meth:`close` closes the database."""
        from edge.central.sqlite.database import SqliteDatabase

        return SqliteDatabase.open(db_path).index

    @classmethod
    def open_readonly(cls, db_path: Path) -> SqliteIndex:
        """The index of the database at ``db_path``, read-only (a command that only reads it: nothing is
        created, migrated or written); :meth:`close` closes it. CentralIndexError when it cannot be
        opened."""
        from edge.central.sqlite.database import SqliteDatabase

        try:
            return SqliteDatabase.open_readonly(db_path).index
        except sqlite3.Error as exc:
            raise CentralIndexError(f"{db_path}: cannot open read-only: {exc}") from None

    @property
    def unit(self) -> SqliteDatabase:
        return self._database

    def close(self) -> None:
        self._database.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic unit of the shared database (index and log). Never await inside it."""
        return self._database.transaction()

    @contextmanager
    def snapshot(self) -> Iterator[SqliteIndex]:
        """A read-only view of the index as it is now, on a connection of its own in one read transaction:
        a long read (a disclosure package's plan, in a worker thread) sees one state throughout and never
        shares the writer's connection. The index itself when it has no file (tests)."""
        if self.path is None:
            yield self
            return
        from edge.central.sqlite.database import SqliteDatabase

        database = SqliteDatabase.open_readonly(self.path)
        try:
            database.conn.execute("BEGIN")
            yield database.index
        finally:
            database.conn.close()

    # -- stations and readers -------------------------------------------------------------------

    def enroll_station(self, station_id: str, signing_public_key_b64: str, cert_sha256: str) -> None:
        """Record (or re-record) a station's ledger key and client certificate; it becomes active.

        Re-enrolment replaces the certificate (the old one stops working) and may bring a new key; every
        key a station ever had stays in ``station_keys`` so its older manifests keep verifying.
        """
        validate_station_id(station_id)
        validate_cert_sha256(cert_sha256)
        try:
            key_id = key_id_of(public_key_from_b64(signing_public_key_b64))
        except KeyFormatError as exc:
            raise CentralIndexError(f"station {station_id}: {exc}") from None
        now = station_time_now()
        with self.transaction():
            before = self.station(station_id)
            self.conn.execute(
                "INSERT INTO stations (station, public_key, key_id, cert_sha256, status, enrolled_utc) "
                "VALUES (?, ?, ?, ?, 'active', ?) ON CONFLICT (station) DO UPDATE SET "
                "public_key = excluded.public_key, key_id = excluded.key_id, "
                "cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (station_id, signing_public_key_b64, key_id, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO station_keys (station, key_id, public_key, enrolled_utc) "
                "VALUES (?, ?, ?, ?)",
                (station_id, key_id, signing_public_key_b64, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, key_id, cert_sha256) "
                "VALUES (?, 'station', ?, 'enrolled', ?, ?)",
                (now, station_id, key_id, cert_sha256),
            )
        if before is not None and before.key_id != key_id:
            log.warning("station %s re-enrolled with a new signing key %s (was %s)", station_id, key_id,
                        before.key_id)
        else:
            log.info("station %s enrolled with signing key %s", station_id, key_id)

    def revoke_station(self, station_id: str, reason: str) -> None:
        validate_station_id(station_id)
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute(
                "UPDATE stations SET status = 'revoked', revoked_utc = ?, revoke_reason = ? "
                "WHERE station = ?",
                (now, reason, station_id),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"station {station_id} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (?, 'station', ?, 'revoked', ?)",
                (now, station_id, reason),
            )
        log.warning("station %s revoked: %s", station_id, reason)

    def station(self, station_id: str) -> StationRecord | None:
        row = self.conn.execute(
            "SELECT station, public_key, key_id, cert_sha256, status, enrolled_utc, revoked_utc, "
            "revoke_reason FROM stations WHERE station = ?",
            (station_id,),
        ).fetchone()
        if row is None:
            return None
        return StationRecord(
            station=row["station"], public_key_b64=row["public_key"], key_id=row["key_id"],
            cert_sha256=row["cert_sha256"], status=row["status"], enrolled_utc=row["enrolled_utc"],
            revoked_utc=row["revoked_utc"], revoke_reason=row["revoke_reason"],
        )

    def stations(self) -> list[StationRecord]:
        names = [row[0] for row in self.conn.execute("SELECT station FROM stations ORDER BY station")]
        return [record for name in names if (record := self.station(name)) is not None]

    def station_keys(self, station_id: str) -> dict[str, Ed25519PublicKey]:
        """Every key the station was ever enrolled with, by key id."""
        keys: dict[str, Ed25519PublicKey] = {}
        for row in self.conn.execute(
            "SELECT key_id, public_key FROM station_keys WHERE station = ?", (station_id,)
        ):
            try:
                keys[row["key_id"]] = public_key_from_b64(row["public_key"])
            except KeyFormatError as exc:
                raise CentralIndexError(
                    f"station {station_id}: damaged key row {row['key_id']}: {exc}"
                ) from None
        return keys

    def enroll_reader(self, name: str, cert_sha256: str) -> None:
        validate_reader_name(name)
        validate_cert_sha256(cert_sha256)
        now = station_time_now()
        with self.transaction():
            self.conn.execute(
                "INSERT INTO readers (name, cert_sha256, status, enrolled_utc) VALUES (?, ?, 'active', ?) "
                "ON CONFLICT (name) DO UPDATE SET cert_sha256 = excluded.cert_sha256, status = 'active', "
                "enrolled_utc = excluded.enrolled_utc, revoked_utc = NULL, revoke_reason = NULL",
                (name, cert_sha256, now),
            )
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, cert_sha256) "
                "VALUES (?, 'reader', ?, 'enrolled', ?)",
                (now, name, cert_sha256),
            )
        log.info("reader %s enrolled", name)

    def revoke_reader(self, name: str, reason: str) -> None:
        validate_reader_name(name)
        now = station_time_now()
        with self.transaction():
            done = self.conn.execute(
                "UPDATE readers SET status = 'revoked', revoked_utc = ?, revoke_reason = ? WHERE name = ?",
                (now, reason, name),
            )
            if done.rowcount != 1:
                raise CentralIndexError(f"reader {name} is not enrolled; nothing to revoke")
            self.conn.execute(
                "INSERT INTO enrolment_events (time, kind, name, event, reason) "
                "VALUES (?, 'reader', ?, 'revoked', ?)",
                (now, name, reason),
            )
        log.warning("reader %s revoked: %s", name, reason)

    def reader(self, name: str) -> ReaderRecord | None:
        row = self.conn.execute(
            "SELECT name, cert_sha256, status, enrolled_utc FROM readers WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return ReaderRecord(row["name"], row["cert_sha256"], row["status"], row["enrolled_utc"])

    # -- station ledgers ------------------------------------------------------------------------

    def ledger_head(self, station_id: str) -> tuple[int, str]:
        """``(seq, hash)`` of the station's last accepted entry; ``(0, GENESIS_PREV)`` when none."""
        row = self.conn.execute(
            "SELECT seq, hash FROM station_ledger WHERE station = ? ORDER BY seq DESC LIMIT 1", (station_id,)
        ).fetchone()
        if row is None:
            return 0, GENESIS_PREV
        return int(row["seq"]), str(row["hash"])

    def ledger_entry(self, station_id: str, seq: int) -> LedgerEntry | None:
        row = self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
            "WHERE station = ? AND seq = ?",
            (station_id, seq),
        ).fetchone()
        return None if row is None else ledger_entry_from_row(station_id, row)

    def ledger_item_last(self, station_id: str, item: str) -> tuple[int, str] | None:
        """``(seq, hash)`` of the station's last accepted entry naming ``item`` (by the index
        ``station_ledger_item``), or None when it has none: what a new entry's ``item_prev`` must name."""
        row = self.conn.execute(
            "SELECT seq, hash FROM station_ledger WHERE item = ? AND station = ? ORDER BY seq DESC LIMIT 1",
            (item, station_id),
        ).fetchone()
        return None if row is None else (int(row["seq"]), str(row["hash"]))

    def ledger_entries(
        self,
        station_id: str,
        start_seq: int = 1,
        *,
        end_seq: int | None = None,
        item: str | None = None,
        type_: str | None = None,
    ) -> Iterator[LedgerEntry]:
        """Accepted entries in seq order from ``start_seq`` up to ``end_seq`` (inclusive), filtered."""
        sql = ("SELECT seq, time, type, item, data, prev, hash FROM station_ledger "
               "WHERE station = ? AND seq >= ?")
        args: list[Any] = [station_id, start_seq]
        if end_seq is not None:
            sql += " AND seq <= ?"
            args.append(end_seq)
        if item is not None:
            sql += " AND item = ?"
            args.append(item)
        if type_ is not None:
            sql += " AND type = ?"
            args.append(type_)
        for row in self.conn.execute(sql + " ORDER BY seq", args):
            yield ledger_entry_from_row(station_id, row)

    def insert_ledger_entries(
        self, station_id: str, entries: Sequence[LedgerEntry], accepted_utc: str
    ) -> None:
        """Append verified entries (in the caller's transaction); the trigger refuses a non-extension."""
        self.conn.executemany(
            "INSERT INTO station_ledger (station, seq, time, type, item, data, prev, hash, accepted_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (station_id, e.seq, e.time, e.type, e.item, canonical_json(e.data).decode("utf-8"), e.prev,
                 e.hash, accepted_utc)
                for e in entries
            ],
        )

    def insert_checkpoint(self, cp: Checkpoint, accepted_utc: str) -> None:
        """Store a verified checkpoint unless the very same one is stored (caller's transaction)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO station_checkpoints (station, seq, hash, time, key_id, signature, "
            "accepted_utc) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cp.station, cp.seq, cp.hash, cp.time, cp.key_id, cp.signature, accepted_utc),
        )

    def latest_checkpoint(self, station_id: str) -> Checkpoint | None:
        row = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "ORDER BY seq DESC, id DESC LIMIT 1",
            (station_id,),
        ).fetchone()
        return None if row is None else Checkpoint.from_dict(dict(row))

    def checkpoint_at_or_after(self, station_id: str, seq: int) -> Checkpoint | None:
        """The station's first accepted checkpoint at ``seq`` or after it (one indexed row, not a list)."""
        row = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "AND seq >= ? ORDER BY seq, id LIMIT 1",
            (station_id, seq),
        ).fetchone()
        return None if row is None else Checkpoint.from_dict(dict(row))

    def checkpoints(
        self, station_id: str, start_seq: int = 1, end_seq: int | None = None
    ) -> list[Checkpoint]:
        """The station's accepted checkpoints at seqs ``start_seq``..``end_seq``, in seq order."""
        rows = self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "AND seq >= ? AND seq <= ? ORDER BY seq, id",
            (station_id, start_seq, end_seq if end_seq is not None else 2**62),
        ).fetchall()
        return [Checkpoint.from_dict(dict(row)) for row in rows]

    # -- items ----------------------------------------------------------------------------------

    def item(self, item: str) -> ItemRecord | None:
        row = self.conn.execute("SELECT * FROM items WHERE item = ?", (item,)).fetchone()
        return None if row is None else item_from_row(row)

    def insert_item(
        self,
        manifest: Mapping[str, Any],
        *,
        station_id: str,
        leaf_index: int,
        accepted_utc: str,
    ) -> ItemRecord:
        """Index a verified item with its officer, device and case rows (in the caller's transaction).

        The manifest's case block becomes the first metadata history row; `tagged` entries for the item
        already accepted in the station's ledger follow, in ledger order.
        """
        record = item_record_from_manifest(manifest, station_id=station_id, leaf_index=leaf_index,
                                           accepted_utc=accepted_utc)
        text, officer_no, device_serial = record.manifest_text, record.officer_no, record.device_serial
        acquired_utc, chain_seq = record.acquired_utc, record.chain_seq
        source = manifest.get("source") or {}
        self.conn.execute(
            "INSERT INTO items (item, sha256, size, station, manifest, manifest_sha256, officer_no, "
            "device_serial, acquired_utc, recorded_start, chain_seq, leaf_index, accepted_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.item, record.sha256, record.size, station_id, text, record.manifest_sha256, officer_no,
             device_serial, acquired_utc, record.recorded_start, chain_seq, leaf_index, accepted_utc),
        )
        if officer_no is not None:
            self.conn.execute(
                "INSERT INTO officers (officer_no, officer_name, unit_code, unit_name, first_seen_utc, "
                "last_seen_utc) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (officer_no) DO UPDATE SET "
                "officer_name = coalesce(excluded.officer_name, officer_name), "
                "unit_code = coalesce(excluded.unit_code, unit_code), "
                "unit_name = coalesce(excluded.unit_name, unit_name), last_seen_utc = excluded.last_seen_utc",
                (officer_no, text_or_none(source.get("officer_name")),
                 text_or_none(source.get("unit_code")), text_or_none(source.get("unit_name")),
                 accepted_utc, accepted_utc),
            )
        if device_serial is not None:
            self.conn.execute(
                "INSERT INTO devices (device_serial, last_officer_no, last_station, first_seen_utc, "
                "last_seen_utc) VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_serial) DO UPDATE SET "
                "last_officer_no = coalesce(excluded.last_officer_no, last_officer_no), "
                "last_station = excluded.last_station, last_seen_utc = excluded.last_seen_utc",
                (device_serial, officer_no, station_id, accepted_utc, accepted_utc),
            )
        case = manifest.get("case") or {}
        initial = indexable_case(case, f"item {record.item} manifest")
        self.conn.execute(
            "INSERT INTO item_case (item, updated_utc) VALUES (?, ?)", (record.item, accepted_utc)
        )
        self._add_history(record.item, "manifest", station_id, chain_seq, acquired_utc, initial,
                          text_or_none(case.get("collector")), accepted_utc)
        unit, unit_source = item_unit_for(self.conn, station_id, record.manifest)
        self.conn.execute("INSERT INTO item_units (item, unit_code, source) VALUES (?, ?, ?)",
                          (record.item, unit, unit_source))
        for entry in self.ledger_entries(station_id, item=record.item, type_="tagged"):
            self.apply_tag(station_id, entry, accepted_utc)
        return record

    def item_unit(self, item: str) -> str | None:
        """The unit an accepted item belongs to (fixed at acceptance), None when unknown."""
        row = self.conn.execute("SELECT unit_code FROM item_units WHERE item = ?", (item,)).fetchone()
        return None if row is None else row["unit_code"]

    def item_visible(self, item: str, scope: ReaderScope) -> bool:
        """Whether ``scope`` may see the accepted item ``item`` (False also when there is no such item)."""
        condition, args = scope_clause(scope, "i.item")
        row = self.conn.execute(f"SELECT 1 FROM items i WHERE i.item = ? AND {condition}",
                                [item, *args]).fetchone()
        return row is not None

    def apply_tag(self, station_id: str, entry: LedgerEntry, recorded_utc: str) -> bool:
        """Fold an accepted `tagged` entry into its item's metadata (caller's transaction).

        Returns False when the item is not (yet) accepted from this station: its tags are picked up
        from the stored ledger when the item arrives. Replays are ignored (one row per entry).
        """
        if entry.item is None:
            return False
        owner = self.conn.execute("SELECT station FROM items WHERE item = ?", (entry.item,)).fetchone()
        if owner is None or owner["station"] != station_id:
            return False
        raw_changes = entry.data.get("changes")
        changes = indexable_case(raw_changes if isinstance(raw_changes, Mapping) else {},
                              f"station {station_id} ledger seq {entry.seq} (tag of item {entry.item})")
        by = entry.data.get("by")
        return self._add_history(entry.item, "ledger", station_id, entry.seq, entry.time, changes,
                                 by if isinstance(by, str) else None, recorded_utc)

    def _add_history(
        self,
        item: str,
        source: str,
        station_id: str,
        ledger_seq: int,
        time: str,
        changes: Mapping[str, Any],
        by: str | None,
        recorded_utc: str,
    ) -> bool:
        done = self.conn.execute(
            "INSERT OR IGNORE INTO metadata_history (item, source, station, ledger_seq, time, changes, by, "
            "recorded_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item, source, station_id, ledger_seq, time, canonical_json(dict(changes)).decode("utf-8"), by,
             recorded_utc),
        )
        if done.rowcount != 1:
            return False
        if changes:
            assignments = ", ".join(f"{name} = ?" for name in changes)
            values = [int(v) if isinstance(v, bool) else v for v in changes.values()]
            self.conn.execute(
                f"UPDATE item_case SET {assignments}, updated_utc = ? WHERE item = ?",
                [*values, recorded_utc, item],
            )
            case_number = changes.get("case_number")
            if isinstance(case_number, str) and case_number:
                self.conn.execute(
                    "INSERT INTO cases (case_number, first_seen_utc, last_seen_utc) VALUES (?, ?, ?) "
                    "ON CONFLICT (case_number) DO UPDATE SET last_seen_utc = excluded.last_seen_utc",
                    (case_number, recorded_utc, recorded_utc),
                )
        return True

    def metadata_history(self, item: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT source, station, ledger_seq, time, changes, by, recorded_utc FROM metadata_history "
            "WHERE item = ? ORDER BY ledger_seq, id",
            (item,),
        ).fetchall()
        return [
            {
                "source": row["source"],
                "station": row["station"],
                "ledger_seq": row["ledger_seq"],
                "time": row["time"],
                "changes": parse_json(row["changes"]),
                "by": row["by"],
                "recorded_utc": row["recorded_utc"],
            }
            for row in rows
        ]

    def current_case(self, item: str) -> dict[str, Any]:
        row = self.conn.execute(
            f"SELECT {', '.join(CASE_FIELDS)} FROM item_case WHERE item = ?", (item,)
        ).fetchone()
        if row is None:
            return {}
        case = {name: row[name] for name in CASE_FIELDS}
        if case["important"] is not None:
            case["important"] = bool(case["important"])
        return case

    def query_items(
        self, query: ItemQuery, scope: ReaderScope
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Item summaries ``scope`` may see matching every given filter, ordered by (acquired_utc, item).

        Returns the page and the cursor for the next one (None when this page is the last).
        """
        visible, visible_args = scope_clause(scope, "i.item")
        clauses: list[str] = [visible]
        args: list[Any] = list(visible_args)
        if query.unit is not None:
            clauses.append("u.unit_code = ?")
            args.append(query.unit)
        if query.important is not None:
            clauses.append("coalesce(c.important, 0) = ?")
            args.append(int(query.important))
        for column, value in (
            ("c.case_number", query.case_number),
            ("i.officer_no", query.officer_no),
            ("i.device_serial", query.device_serial),
            ("i.station", query.station),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if query.time_from is not None:
            clauses.append("i.acquired_utc >= ?")
            args.append(query.time_from)
        if query.time_to is not None:
            clauses.append("i.acquired_utc < ?")
            args.append(query.time_to)
        if query.after is not None:
            clauses.append("(i.acquired_utc, i.item) > (?, ?)")
            args.extend(query.after)
        limit = max(1, min(query.limit, MAX_QUERY_LIMIT))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            "SELECT i.item, i.sha256, i.size, i.station, i.officer_no, i.device_serial, i.acquired_utc, "
            "i.recorded_start, i.accepted_utc, i.leaf_index, c.case_number, c.important, "
            "u.unit_code AS unit, EXISTS (SELECT 1 FROM item_sensitive s WHERE s.item = i.item) AS sensitive "
            "FROM items i LEFT JOIN item_case c ON c.item = i.item LEFT JOIN item_units u ON u.item = i.item "
            f"{where} "
            "ORDER BY i.acquired_utc, i.item LIMIT ?",
            [*args, limit + 1],
        ).fetchall()
        page = [dict(row) for row in rows[:limit]]
        for row in page:
            row["sensitive"] = bool(row["sensitive"])
            row["important"] = None if row["important"] is None else bool(row["important"])
        cursor = (page[-1]["acquired_utc"], page[-1]["item"]) if len(rows) > limit else None
        return page, cursor

    # -- audit trails ---------------------------------------------------------------------------

    def record_rejection(
        self,
        *,
        station: str | None,
        code: str,
        detail: str,
        remote: str | None = None,
        item: str | None = None,
        upload: str | None = None,
    ) -> None:
        """Append a rejection in its own transaction (never inside the one that was rolled back)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO rejections (time, station, remote, code, detail, item, upload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (station_time_now(), station, remote, code, detail, item, upload),
            )

    def rejections(self, station: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT time, station, remote, code, detail, item, upload FROM rejections"
        args: tuple[str, ...] = ()
        if station is not None:
            sql += " WHERE station = ?"
            args = (station,)
        return [dict(row) for row in self.conn.execute(sql + " ORDER BY id", args)]

    def log_access(
        self, *, reader: str, what: str, item: str | None, query: str | None, remote: str | None
    ) -> int:
        """Append an access-log row in its own transaction and return its id; raises sqlite3.Error when
        it cannot."""
        with self.transaction():
            cursor = self.conn.execute(
                "INSERT INTO access_log (time, reader, what, item, query, remote) VALUES (?, ?, ?, ?, ?, ?)",
                (station_time_now(), reader, what, item, query, remote),
            )
        return int(cursor.lastrowid or 0)

    def access_log(
        self,
        *,
        reader: str | None = None,
        item: str | None = None,
        what: str | None = None,
        time_from: str | None = None,
        time_to: str | None = None,
        scope: ReaderScope | None = None,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Access-log rows (oldest first; with ``limit``, the newest ``limit`` before ``before_id``, newest
        first), filtered. With ``scope``, rows about items the scope may not see are left out. Each row
        has ``id`` and, for a media playback, ``bytes_served`` (the sum of its ranges)."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("a.reader", reader), ("a.item", item), ("a.what", what)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if time_from is not None:
            clauses.append("a.time >= ?")
            args.append(time_from)
        if time_to is not None:
            clauses.append("a.time < ?")
            args.append(time_to)
        if before_id is not None:
            clauses.append("a.id < ?")
            args.append(before_id)
        if scope is not None:
            visible, visible_args = scope_clause(scope, "a.item")
            clauses.append(f"(a.item IS NULL OR {visible})")
            args.extend(visible_args)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ORDER BY a.id" if limit is None else "ORDER BY a.id DESC LIMIT ?"
        if limit is not None:
            args.append(max(1, min(limit, MAX_QUERY_LIMIT)))
        rows = self.conn.execute(
            "SELECT a.id, a.time, a.reader, a.what, a.item, a.query, a.remote, "
            "(SELECT sum(m.last_byte - m.first_byte + 1) FROM media_ranges m WHERE m.access_id = a.id) "
            f"AS bytes_served FROM access_log a {where} {order}",
            args,
        ).fetchall()
        return [dict(row) for row in rows]
