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
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edge.central.index import (
    CentralIndexError,
)
from edge.central.sql.index import SqlIndex
from edge.central.sqlite.trail import append_trail_row
from edge.custody.ledger import GENESIS_PREV
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


class SqliteIndex(SqlIndex):
    """:class:`edge.central.storage.Index` in the tables of a :class:`SqliteDatabase`, whose unit of work
    it writes in (shared with the database's log store)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        self.path = database.path

    @property
    def conn(self) -> sqlite3.Connection:
        """The database's connection for the calling thread (:attr:`SqliteDatabase.conn`: a reader
        thread's own while it reads). Only this package uses it; tests use it to play the attacker."""
        return self._database.conn

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

    def _append_trail(self, table: str, values: dict[str, object]) -> int:
        return append_trail_row(self.conn, table, values)
